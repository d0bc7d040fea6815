"""MaskGIT: the cosine schedule, the masked loss, the parallel sampler, conditioning, 2D and 3D."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vqkit.models import GatedPixelCNN, MaskGIT, VideoPrior, build_model, mask_schedule, maskgit

K = 6
GRIDS = [(4, 4), (2, 3, 3)]  # a 2D map and a 3D volume: one code path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(grid=(4, 4), **kw) -> MaskGIT:
    torch.manual_seed(0)
    args = dict(num_codes=K, grid=grid, dim=16, layers=2, heads=2, steps=5)
    return maskgit(**{**args, **kw}).eval()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- schedule


def test_mask_schedule_runs_from_all_masked_to_none_and_decreases():
    assert mask_schedule(0.0) == 1.0 and mask_schedule(1.0) == 0.0
    t = torch.linspace(0, 1, 101)
    m = mask_schedule(t)
    assert m[0] == 1.0 and m[-1] == 0.0
    assert bool((m[1:] < m[:-1]).all())  # strictly decreasing
    torch.testing.assert_close(m, torch.tensor([mask_schedule(float(v)) for v in t]))
    torch.testing.assert_close(m[50], torch.tensor(math.cos(math.pi / 4)))


# ---------------------------------------------------------------- training loss


def capture(model: MaskGIT):
    """Record the tokens fed to the network and the logits it returns (grads retained)."""
    seen = {}

    def on_tok(_module, args):
        seen["tokens"] = args[0].detach().clone()

    def on_head(_module, _args, out):
        out.retain_grad()
        seen["logits"] = out

    return seen, [
        model.tok.register_forward_pre_hook(on_tok),
        model.head.register_forward_hook(on_head),
    ]


@pytest.mark.parametrize("grid", GRIDS)
def test_loss_counts_the_masked_positions_only(grid):
    model = tiny(grid).train()
    codes = torch.randint(0, K, (8, *grid), generator=gen(1))
    seen, hooks = capture(model)
    torch.manual_seed(3)
    loss = model.loss(codes)
    loss.backward()
    for h in hooks:
        h.remove()
    tokens, logits = seen["tokens"], seen["logits"]  # (B, N), (B, N, K)
    masked = tokens == K
    flat = codes.flatten(1)
    assert bool((masked.sum(1) >= 1).all())  # at least one position per item
    # Unmasked inputs are the true codes; the loss is the cross-entropy of the masked ones.
    assert torch.equal(tokens[~masked], flat[~masked])
    torch.testing.assert_close(loss, F.cross_entropy(logits[masked], flat[masked]))
    # Logits at unmasked positions get exactly zero gradient, masked ones do not.
    grad = logits.grad
    assert bool((grad[~masked] == 0).all())
    assert bool((grad[masked].abs().sum(-1) > 0).all())


def test_loss_masks_a_cosine_share_of_positions_reproducibly():
    model = tiny((10, 10)).train()
    codes = torch.randint(0, K, (2000, 10, 10), generator=gen(2))
    seen, hooks = capture(model)
    torch.manual_seed(0)
    first = model.loss(codes)
    share = (seen["tokens"] == K).float().mean(1)
    torch.manual_seed(0)
    again = model.loss(codes)
    for h in hooks:
        h.remove()
    assert torch.equal(first, again)  # torch's default generator: seeding reproduces it
    # E[ceil(cos(pi/2 u) * N) / N] = 2/pi + about 1/(2N) for u ~ U(0, 1).
    assert abs(share.mean().item() - (2 / math.pi + 0.005)) < 0.02
    assert share.min() >= 0.01 and share.max() <= 1.0


# ---------------------------------------------------------------- sampling


def remaining_after(steps: int, n: int) -> list[int]:
    """Masked count after each step: the cosine share of n, at least one fewer each step."""
    out, left = [], n
    for s in range(1, steps + 1):
        left = (
            0
            if s == steps
            else max(0, min(math.floor(n * math.cos(math.pi / 2 * s / steps)), left - 1))
        )
        out.append(left)
    return out


@pytest.mark.parametrize("grid", GRIDS)
def test_sampler_fills_every_position_in_exactly_n_steps_and_keeps_its_codes(grid):
    model = tiny(grid)
    passes = []
    hook = model.encoder.register_forward_hook(lambda *a: passes.append(1))
    steps = 6
    codes, trace = model.sample(
        3, temperature=1.0, generator=gen(0), steps=steps, return_trace=True
    )
    hook.remove()
    n = math.prod(grid)
    assert len(passes) == steps and trace.shape == (steps, 3, *grid)
    assert codes.shape == (3, *grid) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < K
    assert torch.equal(trace[-1], codes)
    counts = [(trace[s] == K).flatten(1).sum(1).tolist() for s in range(steps)]
    assert counts == [[c] * 3 for c in remaining_after(steps, n)]
    for s in range(steps):  # once kept, a code stays for every later step
        kept = trace[s] != K
        for later in range(s + 1, steps):
            assert torch.equal(trace[later][kept], trace[s][kept])


def test_the_default_steps_are_the_models():
    model = tiny((4, 4), steps=3)
    passes = []
    hook = model.encoder.register_forward_hook(lambda *a: passes.append(1))
    model.sample(2, generator=gen(0))
    hook.remove()
    assert len(passes) == 3


@pytest.mark.parametrize("grid", GRIDS)
def test_known_positions_are_kept_verbatim(grid):
    model = tiny(grid)
    known = torch.randint(0, K, (2, *grid), generator=gen(5))
    known_mask = torch.zeros(2, *grid, dtype=torch.bool)
    known_mask[:, 0] = True  # e.g. the first time step of a volume: context frames
    known_mask[1, -1] = True  # items may differ
    codes, trace = model.sample(
        (2, *grid), known=known, known_mask=known_mask, generator=gen(1), return_trace=True
    )
    assert torch.equal(codes[known_mask], known[known_mask])
    for s in range(len(trace)):
        assert torch.equal(trace[s][known_mask], known[known_mask])
    assert int((trace[-1] == K).sum()) == 0
    # A mask of the grid's shape applies to every item.
    shared = model.sample(2, known=known, known_mask=known_mask[0], generator=gen(1))
    assert torch.equal(shared[:, 0], known[:, 0])


def test_same_seed_same_samples_other_seed_other_samples():
    model = tiny((4, 4))
    a = model.sample(4, generator=gen(7))
    b = model.sample(4, generator=gen(7))
    c = model.sample(4, generator=gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Temperature 0 is deterministic whatever the generator.
    assert torch.equal(
        model.sample(2, temperature=0), model.sample(2, temperature=0, generator=gen(9))
    )


def test_the_class_and_the_conditions_change_the_samples():
    model = tiny((4, 4), num_classes=3)
    a = model.sample(4, y=0, generator=gen(0))
    b = model.sample(4, y=torch.zeros(4, dtype=torch.long), generator=gen(0))
    c = model.sample(4, y=2, generator=gen(0))
    assert torch.equal(a, b) and not torch.equal(a, c)
    video = tiny((3, 2, 2), num_conds=4, cond_per_step=2)
    cond = torch.zeros(2, 3, 2, dtype=torch.long)
    x = video.sample(2, cond=cond, generator=gen(0))
    y = video.sample(2, cond=cond + 3, generator=gen(0))
    assert not torch.equal(x, y)
    # One condition per leading index may be given as (B, T) when cond_per_step is 1.
    one = tiny((3, 2, 2), num_conds=4)
    steps = torch.tensor([[0, 1, 2]])
    assert torch.equal(
        one.sample(1, cond=steps, generator=gen(0)),
        one.sample(1, cond=steps[..., None], generator=gen(0)),
    )


def test_a_tiny_model_learns_class_tied_patterns_and_samples_them():
    """Four 4x4 patterns, one per class: low loss, and samples are the class's pattern."""
    torch.manual_seed(0)
    patterns = torch.randint(0, K, (4, 4, 4))
    model = maskgit(num_codes=K, grid=(4, 4), num_classes=4, dim=32, layers=2, heads=2, steps=6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        y = torch.randint(0, 4, (64,))
        loss = model.loss(patterns[y], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    model.eval()
    y = torch.arange(4).repeat_interleave(8)
    samples = model.sample(len(y), y=y, temperature=1.0, generator=gen(0))
    assert torch.equal(samples, patterns[y])


# ---------------------------------------------------------------- contract


def test_only_the_exact_priors_claim_a_likelihood():
    assert MaskGIT.has_likelihood is False and not hasattr(MaskGIT, "nll_bits")
    assert GatedPixelCNN.has_likelihood is True and VideoPrior.has_likelihood is True


def test_config_rebuilds_the_same_model():
    model = tiny((2, 3, 3), num_classes=2, num_conds=3)
    again = build_model(model.config)
    assert again.config == model.config and model.config["builder"] == "maskgit"
    assert model.config["kwargs"]["grid"] == [2, 3, 3]
    again.load_state_dict(model.state_dict())
    tokens = torch.randint(0, K + 1, (2, 2, 3, 3), generator=gen(0))
    y, cond = torch.tensor([0, 1]), torch.tensor([[0, 2], [1, 1]])
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(tokens, y, cond), model(tokens, y, cond))
    assert model(tokens, y, cond).shape == (2, K, 2, 3, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(grid=[]), "grid"),
        (dict(grid=[4, 0]), "grid"),
        (dict(num_codes=1), "num_codes"),
        (dict(dim=10, heads=4), "heads"),
        (dict(layers=0), "layers"),
        (dict(num_classes=-1), "num_classes"),
        (dict(steps=0), "steps"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_bad_builder_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_bad_inputs_are_value_errors():
    model = tiny((4, 4), num_classes=3)
    codes = torch.zeros(2, 4, 4, dtype=torch.long)
    y = torch.tensor([0, 1])
    bad = [
        (lambda: model.loss(torch.zeros(2, 4, 5, dtype=torch.long), y), "shape"),
        (lambda: model.loss(codes.float(), y), "int64"),
        (lambda: model.loss(codes + K, y), r"\[0, 6\)"),
        (lambda: model.loss(codes), "class-conditional"),
        (lambda: model.loss(codes, torch.tensor([0, 3])), r"\[0, 3\)"),
        (lambda: model.loss(codes, torch.tensor([0])), "shape"),
        (lambda: model.loss(codes, y, torch.zeros(2, 4, dtype=torch.long)), "unconditional"),
        (lambda: model.sample((2, 4, 5), y=y), "sample shape"),
        (lambda: model.sample(2, y=y, temperature=-1), "temperature"),
        (lambda: model.sample(2, y=y, steps=0), "steps"),
        (lambda: model.sample(2, y=y, known=codes), "together"),
        (
            lambda: model.sample(
                2, y=y, known=codes, known_mask=torch.ones(3, 3, dtype=torch.bool)
            ),
            "known_mask",
        ),
    ]
    for call, match in bad:
        with pytest.raises(ValueError, match=match):
            call()
    video = tiny((3, 2, 2), num_conds=4, cond_per_step=2)
    with pytest.raises(ValueError, match="cond"):
        video.sample(1)
    with pytest.raises(ValueError, match=r"\(1, 3, 2\)"):
        video.sample(1, cond=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        video.sample(1, cond=torch.full((1, 3, 2), 4))
