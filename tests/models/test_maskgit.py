"""MaskGIT: the cosine schedule, the masked loss, the parallel sampler, conditioning, 2D and 3D."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vqkit.models import GatedPixelCNN, MaskGIT, VideoPrior, build_model, mask_schedule, maskgit
from vqkit.models.guidance import Guided
from vqkit.models.wavenet import sample_logits

K = 6
GRIDS = [(4, 4), (2, 3, 3)]  # a 2D map and a 3D volume: one code path


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/models/conftest.py


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
    """Record the tokens fed to the network and the logits it returns (grads retained), both
    in code order ``(B, N)`` and ``(B, N, K)`` whatever the patch."""
    seen = {}

    def on_tok(_module, args):  # (B, T, P) codes plus the table offset of each patch slot
        seen["tokens"] = (args[0] - model.offsets).flatten(1)[:, model.inverse].detach()

    def on_head(_module, _args, out):  # (B, T, P * K)
        out.retain_grad()
        seen["out"] = out

    def logits():
        out = seen["out"]
        return out.view(len(out), -1, K)[:, model.inverse], out.grad.view(len(out), -1, K)[
            :, model.inverse
        ]

    hooks = [
        model.tok.register_forward_pre_hook(on_tok),
        model.head.register_forward_hook(on_head),
    ]
    return seen, logits, hooks


@pytest.mark.parametrize(
    "grid, patch", [((4, 4), 1), ((2, 3, 3), 1), ((4, 4), 2), ((2, 4, 4), (1, 2, 2))]
)
def test_loss_counts_the_masked_positions_only(grid, patch):
    model = tiny(grid, patch=patch).train()
    codes = torch.randint(0, K, (8, *grid), generator=gen(1))
    seen, logits_and_grad, hooks = capture(model)
    torch.manual_seed(3)
    loss = model.loss(codes)
    loss.backward()
    for h in hooks:
        h.remove()
    tokens = seen["tokens"]  # (B, N)
    logits, grad = logits_and_grad()  # (B, N, K) each
    masked = tokens == K
    flat = codes.flatten(1)
    assert bool((masked.sum(1) >= 1).all())  # at least one position per item
    # Unmasked inputs are the true codes; the loss is the cross-entropy of the masked ones.
    assert torch.equal(tokens[~masked], flat[~masked])
    torch.testing.assert_close(loss, F.cross_entropy(logits[masked], flat[masked]))
    # Logits at unmasked positions get exactly zero gradient, masked ones do not.
    assert bool((grad[~masked] == 0).all())
    assert bool((grad[masked].abs().sum(-1) > 0).all())


def test_loss_masks_a_cosine_share_of_positions_reproducibly():
    model = tiny((10, 10)).train()
    codes = torch.randint(0, K, (2000, 10, 10), generator=gen(2))
    seen, _, hooks = capture(model)
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


def test_prefix_items_keep_their_first_leading_indices_visible():
    grid = (4, 2, 2)
    model = tiny(grid, prefix_share=1.0).train()
    codes = torch.randint(0, K, (400, *grid), generator=gen(4))
    seen, _, hooks = capture(model)
    torch.manual_seed(0)
    model.loss(codes)
    for h in hooks:
        h.remove()
    masked = (seen["tokens"] == K).view(400, 4, 4)  # (B, leading index, positions in it)
    assert not masked[:, 0].any()  # at least the first leading index is always given
    hit = masked.any(2)  # (B, 4): leading indices with a hidden code
    first = hit.float().argmax(1)
    assert bool(hit.any(1).all())  # something is hidden in every item
    assert set(first.tolist()) == {1, 2, 3}  # visible prefixes of every length 1 .. 3


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


@pytest.mark.parametrize("grid, patch", [*((g, 1) for g in GRIDS), ((2, 4, 4), (1, 2, 2))])
def test_sampler_fills_every_position_in_exactly_n_steps_and_keeps_its_codes(grid, patch):
    model = tiny(grid, patch=patch)
    passes = []
    hook = model.encoder.norm.register_forward_hook(  # once per pass
        lambda *a: passes.append(1)
    )
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
    hook = model.encoder.norm.register_forward_hook(  # once per pass
        lambda *a: passes.append(1)
    )
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


def reference_sample(
    model,
    n,
    *,
    y=None,
    cond=None,
    temperature=1.0,
    generator=None,
    steps=None,
    known=None,
    known_mask=None,
    guidance=1.0,
):
    """The sampler as first written, the oracle of the fast one: every pass computes the logits
    of every position (guided: both sets, combined) and keeps the masked ones, log p comes from
    a logsumexp, and the ranks from two argsorts."""
    g = Guided(y, guidance, model.num_classes)
    steps = model.steps if steps is None else steps
    tokens = torch.full((n, model.length), K)
    if known is not None:
        tokens = torch.where(known_mask.reshape(n, -1), known.reshape(n, -1), tokens)
    tokens = tokens[:, model.order]  # the sampler's token order
    masked = tokens == K
    total = masked.sum(1)
    for s in range(1, steps + 1):
        logits = g.combine(model._network(g.expand(tokens), g.labels, g.expand(cond)))[masked]
        scaled = logits / temperature if temperature not in (0, 1) else logits
        picked = sample_logits(scaled, 1.0 if temperature > 0 else 0, generator)
        confidence = scaled.gather(1, picked[:, None]).squeeze(1) - scaled.logsumexp(-1)
        anneal = model.noise * temperature * (1 - s / steps)
        if anneal > 0:
            u = torch.rand(confidence.shape, generator=generator)
            confidence = confidence + anneal * -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))
        conf = torch.full(tokens.shape, math.inf)
        conf[masked] = confidence
        tokens = tokens.clone()
        tokens[masked] = picked
        still = torch.zeros_like(total)
        if s < steps:
            still = torch.floor(mask_schedule(s / steps) * total.double()).long()
            still = torch.minimum(still, masked.sum(1) - 1).clamp(min=0)
        masked = conf.argsort(dim=1, stable=True).argsort(dim=1) < still[:, None]
        tokens = tokens.masked_fill(masked, K)
    return tokens[:, model.inverse].view(n, *model.grid)


@pytest.mark.parametrize(
    "grid, patch, kw",
    [
        ((4, 4), 1, {}),
        ((4, 4), 4, {}),  # one token of 16 codes: offsets with no masked code left
        ((4, 4), 2, {"num_classes": 3}),
        ((4, 4), (1, 2), {"num_classes": 3}),
        ((2, 4, 4), (1, 2, 2), {"num_conds": 3}),
    ],
)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_the_fast_sampler_draws_what_the_reference_draws(grid, patch, kw, temperature):
    """Per-offset head on the masked codes, log p off the softmax, one pass for samples whose
    inputs are alike, one argsort: the same codes as the plain sampler, bit for bit."""
    model = tiny(grid, patch=patch, **kw)
    n = 5
    inputs = {}
    if "num_classes" in kw:
        inputs["y"] = torch.tensor([0, 2, 2, 1, 0])
    if "num_conds" in kw:
        inputs["cond"] = torch.randint(0, 3, (n, grid[0], 1), generator=gen(3))
    cases = [inputs]
    if "num_classes" in kw:  # one class for all: the first pass is shared
        cases.append({"y": torch.full((n,), 1)})
    for case in cases:
        for seed in range(3):
            fast = model.sample(n, temperature=temperature, generator=gen(seed), **case)
            slow = reference_sample(model, n, temperature=temperature, generator=gen(seed), **case)
            assert torch.equal(fast, slow)
    known = torch.randint(0, K, (n, *grid), generator=gen(4))
    known_mask = torch.rand(n, *grid, generator=gen(5)) < 0.3
    fast = model.sample(
        n, known=known, known_mask=known_mask, temperature=temperature, generator=gen(6), **inputs
    )
    slow = reference_sample(
        model,
        n,
        known=known,
        known_mask=known_mask,
        temperature=temperature,
        generator=gen(6),
        **inputs,
    )
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("patch", [1, 2])
@pytest.mark.parametrize("guidance", [0.0, 2.5])
def test_the_fast_sampler_draws_what_the_reference_draws_with_guidance(patch, guidance):
    model = tiny((4, 4), patch=patch, num_classes=3, class_dropout=0.2)
    for y in (torch.tensor([0, 2, 2, 1]), torch.full((4,), 2)):  # mixed, and one class for all
        for temperature in (1.0, 0.0):
            args = dict(y=y, temperature=temperature, guidance=guidance)
            fast = model.sample(4, generator=gen(1), **args)
            assert torch.equal(fast, reference_sample(model, 4, generator=gen(1), **args))


@pytest.mark.parametrize("grid, patch", [((4, 4), 1), ((2, 4, 4), (1, 2, 2))])
def test_the_sampling_encoder_equals_the_transformer_module(grid, patch):
    """Without autograd the layers run with scaled_dot_product_attention: the module's output
    to float rounding, and the module itself whenever gradients flow."""
    model = tiny(grid, patch=patch, dropout=0.1)
    h = torch.randn(3, model.tokens, 16)
    with torch.no_grad():
        module = model.encoder(h)
        fast = model._encode(h)
    assert fast.shape == module.shape and torch.allclose(fast, module, atol=1e-5)
    assert not torch.equal(fast, module) or model.tokens == 1  # it is the other path
    with torch.inference_mode():
        assert torch.equal(model._encode(h), fast)
    assert torch.equal(model._encode(h), model.encoder(h))  # autograd: the module
    model.train()
    torch.manual_seed(1)
    dropped = model._encode(h)
    torch.manual_seed(1)
    assert torch.equal(dropped, model.encoder(h))  # training, with its dropout


def test_samples_with_alike_inputs_share_one_network_pass():
    model = tiny((4, 4), patch=2, num_classes=3, steps=3)
    rows = []
    hook = model.encoder.norm.register_forward_hook(  # once per pass
        lambda m, args, out: rows.append(out.shape[0])
    )
    model.sample(4, y=1, generator=gen(0))
    model.sample(4, y=torch.tensor([0, 1, 1, 2]), generator=gen(0))
    hook.remove()
    assert rows == [1, 4, 4, 4, 4, 4]  # the first pass of one class: all four alike


@pytest.mark.parametrize("patch", [1, 2])
def test_a_tiny_model_learns_class_tied_patterns_and_samples_them(patch):
    """Four 4x4 patterns, one per class: low loss, and samples are the class's pattern."""
    torch.manual_seed(0)
    patterns = torch.randint(0, K, (4, 4, 4))
    model = maskgit(
        num_codes=K, grid=(4, 4), num_classes=4, dim=32, layers=2, heads=2, steps=6, patch=patch
    )
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
    # Drawn at temperature 1, a rare code may go astray (chance level is 1/6 per code).
    right = samples == patterns[y]
    assert right.float().mean() >= 0.99 and right.flatten(1).all(1).float().mean() >= 0.9


# ---------------------------------------------------------------- contract


def test_only_the_exact_priors_claim_a_likelihood():
    assert MaskGIT.has_likelihood is False and not hasattr(MaskGIT, "nll_bits")
    assert GatedPixelCNN.has_likelihood is True and VideoPrior.has_likelihood is True


def test_patches_group_codes_into_tokens_and_back():
    model = tiny((2, 4, 6), patch=(1, 2, 3))
    assert (model.tokens, model.patch_size) == (8, 6)
    grid = torch.arange(48).view(2, 4, 6)
    patches = grid.flatten()[model.order].view(8, 6)  # token-major, raster order inside
    assert patches[0].tolist() == [0, 1, 2, 6, 7, 8]
    assert patches[1].tolist() == [3, 4, 5, 9, 10, 11]
    assert patches[4].tolist() == [24, 25, 26, 30, 31, 32]  # the second leading index
    assert torch.equal(grid.flatten()[model.order][model.inverse], grid.flatten())
    assert model.lead_of.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_config_rebuilds_the_same_model():
    model = tiny((2, 3, 3), num_classes=2, num_conds=3, patch=(2, 1, 3))
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
        (dict(patch=3), "patch"),
        (dict(patch=(2, 2, 2)), "patch"),
        (dict(prefix_share=1.5), "prefix_share"),
        (dict(grid=(1, 4), prefix_share=0.5), "prefix_share"),
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


def test_a_tiny_model_continues_a_volume_from_its_known_first_step():
    """Video prediction in miniature: every time step repeats the first; given the first, the
    trained prior fills in the copies."""
    torch.manual_seed(0)
    grid, data_gen = (4, 2, 2), gen(1)

    def volumes(n, g):
        return torch.randint(0, K, (n, 1, 2, 2), generator=g).expand(n, *grid).contiguous()

    model = maskgit(num_codes=K, grid=grid, dim=32, layers=2, heads=2, steps=6, prefix_share=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model.loss(volumes(64, data_gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = volumes(128, gen(9))
    given = torch.zeros(grid, dtype=torch.bool)
    given[0] = True
    out = model.sample(128, known=test, known_mask=given, generator=gen(0))
    assert torch.equal(out[:, 0], test[:, 0])
    assert (out[:, 1:] == test[:, 1:]).float().mean() >= 0.95  # chance: 1/6
