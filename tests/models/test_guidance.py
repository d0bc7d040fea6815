"""Classifier-free guidance (vqkit.models.guidance) in the Gated PixelCNN and MaskGIT."""

import math

import pytest
import torch
import torch.nn.functional as F

from vqkit.models.guidance import Guided, drop_labels
from vqkit.models.maskgit import MaskGIT
from vqkit.models.pixelcnn import GatedPixelCNN, gated_pixelcnn

K, CLASSES = 5, 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/models/conftest.py


def pixelcnn(**kwargs) -> GatedPixelCNN:
    torch.manual_seed(0)
    kwargs = {"channels": 8, "num_layers": 3, "num_classes": CLASSES, "class_dropout": 0.2, **kwargs}
    model = GatedPixelCNN(K, **kwargs).eval()
    if model.class_dropout > 0:  # make the null class differ clearly from every class
        with torch.no_grad():
            for layer in model.layers:
                layer.class_bias.weight[CLASSES] += 1.0
    return model


def teacher(model: GatedPixelCNN, codes, labels):
    """Teacher-forced logits with any labels, the null class included."""
    return model._run(model._embed(codes), labels)


def test_guided_combines_the_two_halves():
    y = torch.tensor([1, 0])
    cond, uncond = torch.randn(2, 4), torch.randn(2, 4)
    g = Guided(y, 2.5, null=3)
    assert g.labels.tolist() == [1, 0, 3, 3] and g.copies == 2
    assert torch.equal(g.expand(torch.tensor([7, 8])), torch.tensor([7, 8, 7, 8]))
    assert torch.allclose(g.combine(torch.cat([cond, uncond])), uncond + 2.5 * (cond - uncond))
    one, zero = Guided(y, 1.0, null=3), Guided(y, 0.0, null=3)
    assert one.labels is y and zero.labels.tolist() == [3, 3]
    x = torch.randn(2, 4)
    assert one.combine(x) is x and zero.combine(x) is x and one.expand(x) is x


@pytest.mark.parametrize("cached", [True, False])
def test_pixelcnn_guidance_1_is_the_conditional_prior(cached):
    model = pixelcnn()
    y = torch.tensor([0, 2])
    run = model._sample_cached if cached else model._sample_naive
    with torch.no_grad():
        codes, logits = run(2, 4, 5, y, 1.0, torch.Generator().manual_seed(1), "cpu", 1.0)
        assert (logits - model(codes, y)).abs().max() < 1e-5
    default = model.sample(2, (4, 5), y=y, generator=torch.Generator().manual_seed(1), cached=cached)
    assert torch.equal(default, codes)


@pytest.mark.parametrize("cached", [True, False])
def test_pixelcnn_guidance_0_is_the_null_class(cached):
    model = pixelcnn()
    y, null = torch.tensor([0, 2]), torch.full((2,), CLASSES)
    run = model._sample_cached if cached else model._sample_naive
    with torch.no_grad():
        codes, logits = run(2, 4, 5, y, 1.0, torch.Generator().manual_seed(1), "cpu", 0.0)
        assert (logits - teacher(model, codes, null)).abs().max() < 1e-5
        # The labels play no part: the null class's samples exactly.
        same, _ = run(2, 4, 5, null, 1.0, torch.Generator().manual_seed(1), "cpu", 1.0)
    assert torch.equal(codes, same)


@pytest.mark.parametrize(
    "kernel_size, num_layers, size, scale",
    [(3, 3, (4, 5), 3.0), (5, 2, (5, 6), 0.5), (3, 4, (1, 5), 2.0), (3, 2, (5, 1), 4.0)],
)
def test_pixelcnn_cached_sampler_equals_naive_with_guidance(kernel_size, num_layers, size, scale):
    model = pixelcnn(kernel_size=kernel_size, num_layers=num_layers)
    y = torch.tensor([0, 1, 2])
    args = (3, *size, y, 1.0)
    with torch.no_grad():
        fast, fast_logits = model._sample_cached(*args, torch.Generator().manual_seed(5), "cpu", scale)
        slow, slow_logits = model._sample_naive(*args, torch.Generator().manual_seed(5), "cpu", scale)
        cond, uncond = teacher(model, fast, y), teacher(model, fast, torch.full((3,), CLASSES))
    assert torch.equal(fast, slow)
    assert (fast_logits - slow_logits).abs().max() < 1e-5
    assert (fast_logits - (uncond + scale * (cond - uncond))).abs().max() < 1e-4
    public = model.sample(3, size, y=y, generator=torch.Generator().manual_seed(5), guidance=scale)
    assert torch.equal(public, fast)
    plain = model.sample(3, size, y=y, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(plain, fast)  # guidance changes what is drawn


def test_pixelcnn_class_dropout_0_leaves_the_model_and_training_unchanged():
    torch.manual_seed(0)
    plain = GatedPixelCNN(K, channels=8, num_layers=2, num_classes=CLASSES)
    torch.manual_seed(0)
    zero = gated_pixelcnn(num_codes=K, channels=8, num_layers=2, num_classes=CLASSES, class_dropout=0)
    assert zero.layers[0].class_bias.num_embeddings == CLASSES  # no null class
    for a, b in zip(plain.state_dict().values(), zero.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    codes, y = torch.randint(0, K, (4, 3, 3)), torch.tensor([0, 1, 2, 0])
    state = torch.get_rng_state()
    loss = zero.train().loss(codes, y)
    assert torch.equal(torch.get_rng_state(), state)  # no random draw
    assert torch.equal(loss, F.cross_entropy(plain(codes, y), codes))


def test_pixelcnn_class_dropout_trains_the_null_class_in_train_mode_only():
    model = pixelcnn(class_dropout=0.5)
    codes, y = torch.randint(0, K, (64, 3, 3)), torch.arange(64) % CLASSES
    assert torch.equal(model.eval().loss(codes, y), F.cross_entropy(model(codes, y), codes))
    torch.manual_seed(3)
    got = model.train().loss(codes, y)
    torch.manual_seed(3)
    dropped = drop_labels(y, 0.5, CLASSES)
    assert 10 < int((dropped == CLASSES).sum()) < 54 and torch.equal(dropped[dropped < CLASSES], y[dropped < CLASSES])
    assert torch.equal(got, F.cross_entropy(teacher(model, codes, dropped), codes))
    got.backward()
    assert model.layers[1].class_bias.weight.grad[CLASSES].abs().sum() > 0


def test_drop_labels_draws_nothing_without_dropout():
    y = torch.tensor([1, 2])
    assert drop_labels(y, 0.0, 3) is y and drop_labels(None, 0.5, 3) is None


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "0.1", math.nan])
def test_class_dropout_range_is_checked(bad):
    with pytest.raises(ValueError, match="class_dropout must be a number in"):
        GatedPixelCNN(K, channels=4, num_layers=1, num_classes=CLASSES, class_dropout=bad)
    with pytest.raises(ValueError, match="class_dropout must be a number in"):
        MaskGIT(K, (2, 2), num_classes=CLASSES, class_dropout=bad, dim=8, layers=1, heads=2)


def test_class_dropout_needs_classes_and_guidance_needs_a_null_class():
    with pytest.raises(ValueError, match="unconditional"):
        GatedPixelCNN(K, channels=4, num_layers=1, class_dropout=0.1)
    with pytest.raises(ValueError, match="unconditional"):
        MaskGIT(K, (2, 2), class_dropout=0.1, dim=8, layers=1, heads=2)
    no_null = pixelcnn(class_dropout=0.0)
    with pytest.raises(ValueError, match="class_dropout > 0"):
        no_null.sample(1, (2, 2), y=0, guidance=2.0)
    no_null.sample(1, (2, 2), y=0, guidance=1)  # the default stays allowed
    with pytest.raises(ValueError, match="unconditional"):
        GatedPixelCNN(K, channels=4, num_layers=1).sample(1, (2, 2), guidance=0.5)
    for bad in (-1.0, math.inf, math.nan, True):
        with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
            pixelcnn().sample(1, (2, 2), y=0, guidance=bad)
    # Labels given by the caller stay in [0, num_classes): the null class is internal.
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\)"):
        pixelcnn().sample(1, (2, 2), y=CLASSES)


# ---------------------------------------------------------------- MaskGIT


def masked(**kwargs) -> MaskGIT:
    torch.manual_seed(0)
    kwargs = {"num_classes": CLASSES, "class_dropout": 0.2, "dim": 16, "layers": 1, "heads": 2, **kwargs}
    model = MaskGIT(K, (3, 4), **kwargs).eval()
    with torch.no_grad():  # fresh weights give near-uniform logits: make the classes matter
        model.head.weight *= 100
        model.cls.weight *= 50
        if model.class_dropout > 0:
            model.cls.weight[CLASSES] += 1.0
    return model


def test_maskgit_guidance_1_is_the_default_and_0_ignores_the_class():
    model = masked()
    y = torch.tensor([0, 2])
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    assert torch.equal(model.sample(2, y=y, generator=gen()), model.sample(2, y=y, generator=gen(), guidance=1))
    zero = model.sample(2, y=y, generator=gen(), guidance=0)
    assert torch.equal(zero, model.sample(2, y=torch.tensor([1, 1]), generator=gen(), guidance=0))
    assert not torch.equal(zero, model.sample(2, y=y, generator=gen()))


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_maskgit_one_greedy_pass_takes_the_argmax_of_the_guided_logits(scale):
    model = masked()
    y = torch.tensor([0, 1, 2])
    got = model.sample(3, y=y, steps=1, temperature=0, guidance=scale)
    tokens = torch.full((3, model.length), model.mask_token)
    with torch.no_grad():
        cond = model._logits(tokens, y, None)
        uncond = model._logits(tokens, torch.full((3,), CLASSES), None)
    want = (uncond + scale * (cond - uncond)).argmax(-1).view(3, 3, 4)
    assert torch.equal(got, want)


def test_maskgit_class_dropout_trains_the_null_class():
    model = masked(class_dropout=0.5).train()
    codes, y = torch.randint(0, K, (32, 3, 4)), torch.arange(32) % CLASSES
    model.loss(codes, y).backward()
    assert model.cls.weight.grad[CLASSES].abs().sum() > 0
    zero = masked(class_dropout=0.0)
    assert zero.cls.num_embeddings == CLASSES
    zero.train().loss(codes, y).backward()  # no null row to train
