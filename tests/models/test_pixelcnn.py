import math

import pytest
import torch
import torch.nn.functional as F

from vqkit.models.pixelcnn import GatedPixelCNN, gated_pixelcnn
from vqkit.models.registry import build_model

K = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/models/conftest.py


def tiny(**kwargs) -> GatedPixelCNN:
    torch.manual_seed(0)
    kwargs = {"channels": 8, "num_layers": 4, **kwargs}
    return GatedPixelCNN(K, **kwargs)


def expected_cone(i: int, j: int, height: int, width: int, reach: int) -> torch.Tensor:
    """Positions that logits at (i, j) must depend on, with reach = layers * (kernel_size // 2).

    The current row to the left (horizontal stack) and a band of rows above, `reach` columns either
    side (vertical stack, down-shifted by one row before it joins the horizontal stack).
    """
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[i, max(0, j - reach) : j] = True
    mask[max(0, i - 1 - reach) : i, max(0, j - reach) : j + reach + 1] = True
    return mask


# ---------------------------------------------------------------- causality


@pytest.mark.parametrize(
    "kernel_size, num_layers, num_classes",
    [(3, 6, None), (5, 3, None), (3, 6, 3), (3, 2, None), (5, 1, None), (7, 2, None)],
)
def test_dependencies_are_exactly_the_causal_cone(kernel_size, num_layers, num_classes):
    height, width = 6, 7
    model = tiny(kernel_size=kernel_size, num_layers=num_layers, num_classes=num_classes).double()
    y = torch.tensor([1]) if num_classes else None
    reach = num_layers * (kernel_size // 2)
    emb = torch.randn(1, model.channels, height, width, dtype=torch.double, requires_grad=True)
    logits = model.forward_embeddings(emb, y)  # (1, K, H, W)
    weights = torch.randn(K, dtype=torch.double)
    past = torch.ones(height * width, height * width, dtype=torch.bool).tril(
        -1
    )  # past[p, q]: q before p
    for p in range(height * width):
        i, j = divmod(p, width)
        (grad,) = torch.autograd.grad((logits[0, :, i, j] * weights).sum(), emb, retain_graph=True)
        depends = grad[0].abs().sum(0) > 0  # (H, W)
        cone = expected_cone(i, j, height, width, reach)
        assert torch.equal(depends, cone), f"position {(i, j)}:\n{depends.int()}\n{cone.int()}"
        # Never on itself or anything later in raster order.
        assert not (depends.flatten() & ~past[p]).any()
        if reach >= max(width - 1, height - 2):
            # Deep enough to cover the map: every earlier code is seen (no blind spot).
            assert torch.equal(depends.flatten(), past[p])


@pytest.mark.parametrize("kernel_size, num_layers", [(3, 6), (5, 2)])
def test_changing_current_and_later_codes_leaves_logits_unchanged(kernel_size, num_layers):
    height, width = 6, 7
    model = tiny(kernel_size=kernel_size, num_layers=num_layers)
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, K, (2, height, width), generator=gen)
    logits = model(codes)
    for p in range(height * width):
        i, j = divmod(p, width)
        changed = codes.flatten(1).clone()
        # Shift every code at >= p by a nonzero amount, so each one really changes.
        changed[:, p:] = (
            changed[:, p:] + torch.randint(1, K, changed[:, p:].shape, generator=gen)
        ) % K
        changed = changed.view_as(codes)
        assert (changed.flatten(1)[:, p:] != codes.flatten(1)[:, p:]).all()
        assert torch.equal(model(changed)[:, :, i, j], logits[:, :, i, j]), (i, j)


# ---------------------------------------------------------------- conditioning, loss, training


def test_class_conditioning_changes_logits():
    model = tiny(num_classes=3)
    codes = torch.randint(0, K, (2, 4, 5))
    a = model(codes, torch.tensor([0, 0]))
    b = model(codes, torch.tensor([2, 2]))
    assert a.shape == (2, K, 4, 5)
    assert (a - b).abs().amin() > 0  # every logit moves, the first position included


def test_loss_and_nll_bits_match_a_direct_computation():
    model = tiny()
    codes = torch.randint(0, K, (3, 4, 5))
    log_probs = F.log_softmax(model(codes), dim=1)  # (B, K, H, W)
    nll = -log_probs.gather(1, codes[:, None])[:, 0]  # (B, H, W)
    assert torch.allclose(model.loss(codes), nll.mean(), rtol=1e-6, atol=0)
    bits = model.nll_bits(codes)
    assert bits.shape == (3,)
    assert torch.allclose(bits, nll.mean((1, 2)) / math.log(2), rtol=1e-6, atol=0)


def pattern_data():
    """Four fixed 4x4 maps over K=5 codes, one class each: stripes, checks, a ramp, a constant."""
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    maps = torch.stack(
        [rows % 2, (rows + cols) % 2 + 2, (rows + cols) % K, torch.full_like(rows, 4)]
    )
    return maps.repeat(2, 1, 1), torch.arange(4).repeat(2)  # (8, 4, 4), (8,)


@pytest.mark.parametrize("conditional", [False, True])
def test_training_on_fixed_patterns_learns_them(conditional):
    codes, labels = pattern_data()
    model = tiny(channels=16, num_layers=4, num_classes=4 if conditional else None)
    y = labels if conditional else None
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(codes, y).item()
    for _ in range(40):
        opt.zero_grad()
        loss = model.loss(codes, y)
        loss.backward()
        opt.step()
    final = model.loss(codes, y).item()
    assert final < 0.1 * first
    bits = model.nll_bits(codes, y).detach()
    assert (bits < 0.1 * math.log2(K)).all(), bits
    # Unconditionally each map costs at least 2 bits (which of the four?), i.e. 1/8 bit per code;
    # given its class a map is fully determined.
    assert bits.mean() < (0.02 if conditional else 0.2), bits


# ---------------------------------------------------------------- validation


def test_invalid_inputs_raise_clear_errors():
    model = tiny()
    good = torch.zeros(2, 3, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="integer"):
        model(good.float())
    with pytest.raises(ValueError, match=r"\(B, H, W\).*\(2, 9\)"):
        model(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 5\).*\[-1, -1\]"):
        model(good - 1)
    with pytest.raises(ValueError, match=r"\[0, 5\).*\[5, 5\]"):
        model(good + 5)
    with pytest.raises(ValueError, match="unconditional"):
        model(good, torch.tensor([0, 1]))
    conditional = tiny(num_classes=3)
    with pytest.raises(ValueError, match="class-conditional"):
        conditional(good)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        conditional(good, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        conditional(good, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="class-conditional"):
        conditional.sample(2, (3, 3))
    with pytest.raises(ValueError, match="kernel_size"):
        GatedPixelCNN(K, kernel_size=4)
    with pytest.raises(ValueError, match="num_codes"):
        GatedPixelCNN(1)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, (2, 2), temperature=-0.5)
    with pytest.raises(ValueError, match="size"):
        model.sample(3)
    with pytest.raises(ValueError, match="positive"):
        model.sample((2, 0, 3))


# ---------------------------------------------------------------- sampling


def test_sample_shapes_range_and_reproducibility():
    model = tiny()
    a = model.sample(3, (4, 5), generator=torch.Generator().manual_seed(7))
    b = model.sample((3, 4, 5), generator=torch.Generator().manual_seed(7))
    c = model.sample((3, 4, 5), generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, 4, 5) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() < K
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("cached", [True, False])
def test_zero_temperature_is_greedy(cached):
    model = tiny(num_classes=2)
    codes = model.sample(2, (4, 5), y=torch.tensor([0, 1]), temperature=0, cached=cached)
    # Each code is the argmax of its own teacher-forced logits (which only see earlier codes).
    assert torch.equal(model(codes, torch.tensor([0, 1])).argmax(1), codes)
    tiny_t = model.sample(2, (4, 5), y=torch.tensor([0, 1]), temperature=1e-6, cached=cached)
    assert torch.equal(tiny_t, codes)


def test_sampler_matches_a_reference_loop_with_temperature():
    model = tiny(kernel_size=5, num_layers=2, num_classes=3)
    y, temperature, (n, height, width) = torch.tensor([0, 2, 1]), 0.5, (3, 4, 5)
    gen = torch.Generator().manual_seed(3)
    expected = torch.zeros(n, height, width, dtype=torch.long)
    with torch.no_grad():
        for i in range(height):
            for j in range(width):
                probs = F.softmax(model(expected, y)[:, :, i, j] / temperature, dim=1)
                expected[:, i, j] = torch.multinomial(probs, 1, generator=gen)[:, 0]
    got = model.sample(
        (n, height, width), y=y, temperature=temperature, generator=gen.manual_seed(3)
    )
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "kernel_size, num_layers, num_classes, size",
    [
        (3, 4, None, (6, 7)),
        (5, 3, 3, (5, 6)),
        (3, 2, None, (1, 5)),
        (3, 3, None, (5, 1)),
        (7, 1, 2, (1, 1)),
    ],
)
def test_cached_sampler_equals_naive_sampler(kernel_size, num_layers, num_classes, size):
    model = tiny(kernel_size=kernel_size, num_layers=num_layers, num_classes=num_classes)
    y = torch.arange(3) % num_classes if num_classes else None
    args = (3, *size, y, 1.0)
    with torch.no_grad():
        fast, fast_logits = model._sample_cached(*args, torch.Generator().manual_seed(5), "cpu")
        slow, slow_logits = model._sample_naive(*args, torch.Generator().manual_seed(5), "cpu")
        teacher = model(fast, y)
    assert torch.equal(fast, slow)
    # The incremental path recomputes the teacher-forced logits of its own samples.
    assert (fast_logits - teacher).abs().max() < 1e-5
    assert (fast_logits - slow_logits).abs().max() < 1e-5
    public = model.sample(3, size, y=y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(public, fast)


def test_sample_accepts_one_int_label_and_returns_trainable_codes():
    model = tiny(num_classes=3)
    codes = model.sample(2, (3, 3), y=1, generator=torch.Generator().manual_seed(0))
    same = model.sample(
        2, (3, 3), y=torch.tensor([1, 1]), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(codes, same)
    assert not codes.requires_grad and not codes.is_inference()
    model.loss(codes, same[:, 0, 0] * 0 + 1).backward()  # samples can be trained on
    assert model.embedding.weight.grad is not None


# ---------------------------------------------------------------- builder


def test_builder_config_rebuilds_the_model():
    model = gated_pixelcnn(num_codes=K, channels=8, num_layers=3, kernel_size=5, num_classes=2)
    assert model.config == {
        "builder": "gated_pixelcnn",
        "kwargs": {
            "num_codes": K,
            "channels": 8,
            "num_layers": 3,
            "kernel_size": 5,
            "num_classes": 2,
            "class_dropout": 0.0,
        },
    }
    rebuilt = build_model(model.config)
    assert isinstance(rebuilt, GatedPixelCNN)
    rebuilt.load_state_dict(model.state_dict())
    codes, y = torch.randint(0, K, (2, 4, 4)), torch.tensor([0, 1])
    assert torch.equal(rebuilt(codes, y), model(codes, y))
    # A model with a null class (classifier-free guidance) rebuilds with it.
    guided = gated_pixelcnn(num_codes=K, channels=8, num_layers=2, num_classes=2, class_dropout=0.1)
    rebuilt = build_model(guided.config)
    rebuilt.load_state_dict(guided.state_dict())
    assert rebuilt.class_dropout == 0.1 and rebuilt.layers[0].class_bias.num_embeddings == 3
