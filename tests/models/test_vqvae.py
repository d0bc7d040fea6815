"""The VQ-VAE model, its builders, and rebuilding from a plain config dict."""

import json

import pytest
import torch

from vqkit.models import BUILDERS, VQVAE, build_model, register, vqvae_image, vqvae_nd
from vqkit.models.likelihood import Categorical256, DiscretizedLogistic, GaussianLikelihood
from vqkit.quantize import VectorQuantizer

# The codebook learned by its loss term (the builders default to EMA, k-means and restarts).
PLAIN_VQ = {"ema": False, "kmeans_init": False, "restart_after": None}
TINY = {"hidden": 8, "res_hidden": 4, "num_res_blocks": 1, "num_codes": 8, "code_dim": 4}
# dims -> (strides, spatial size of the test input)
SHAPES = {
    1: ([2, 2], (16,)),
    2: ([2, 2], (8, 8)),
    3: ([(1, 2, 2), (2, 2, 2)], (4, 8, 8)),
}


def tiny(dims: int, **kwargs) -> VQVAE:
    strides, _ = SHAPES[dims]
    return vqvae_nd(dims=dims, in_channels=2, strides=strides, **{**TINY, **kwargs})


def data(dims: int, batch: int = 2) -> torch.Tensor:
    _, spatial = SHAPES[dims]
    return torch.randint(0, 256, (batch, 2, *spatial)) / 255 - 0.5


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_forward_backward_reaches_every_parameter(dims):
    torch.manual_seed(0)
    model = tiny(dims, quantizer=PLAIN_VQ)
    assert isinstance(model.quantizer, VectorQuantizer)
    x = data(dims)
    out = model(x)
    _, spatial = SHAPES[dims]
    latent = tuple(n // f for n, f in zip(spatial, model.factor))
    assert out.recon.shape == x.shape and out.params.shape == x.shape
    assert out.quant.codes.shape == (2, *latent) and out.quant.codes.dtype == torch.int64
    assert out.quant.quantized.shape == (2, 4, *latent)
    torch.testing.assert_close(out.loss, out.recon_loss + out.quant.loss)
    torch.testing.assert_close(out.recon_loss, ((out.recon - x) ** 2).mean())
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert model.quantizer.codebook.grad.abs().sum() > 0  # the codebook term moves the codebook


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_decode_of_encode_equals_forward_recon(dims):
    torch.manual_seed(0)
    model = tiny(dims).eval()
    x = data(dims)
    with torch.no_grad():
        out = model(x)
        codes = model.encode(x)
        assert torch.equal(codes, out.quant.codes)
        assert torch.equal(model.decode_params(codes), out.params)
        assert torch.equal(model.decode(codes), out.recon)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_build_model_rebuilds_from_a_json_config(dims):
    torch.manual_seed(0)
    model = tiny(dims, likelihood="logistic", quantizer={"ema": True, "beta": 0.5})
    config = json.loads(json.dumps(model.config))  # a plain dict survives JSON
    assert config["builder"] == "vqvae_nd" and config["kwargs"]["dims"] == dims
    torch.manual_seed(1)  # a different init, so equal outputs below come from the loaded weights
    rebuilt = build_model(config)
    assert rebuilt.config == model.config
    assert rebuilt.quantizer.ema and rebuilt.quantizer.beta == 0.5
    assert isinstance(rebuilt.likelihood, DiscretizedLogistic)
    sd, sd2 = model.state_dict(), rebuilt.state_dict()
    assert list(sd) == list(sd2)
    assert all(sd[k].shape == sd2[k].shape for k in sd)
    x = data(dims)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert not torch.equal(rebuilt(x).params, model(x).params)
        rebuilt.load_state_dict(sd)
        assert torch.equal(rebuilt(x).params, model(x).params)


def test_image_builder_defaults_and_config():
    model = vqvae_image(hidden=16, res_hidden=4, num_codes=16, code_dim=8)
    assert model.factor == (4, 4)
    assert model.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 8, 8)
    kwargs = model.config["kwargs"]
    assert model.config["builder"] == "vqvae_image"
    # every argument is recorded, defaults included, tuples as lists
    assert kwargs["strides"] == [2, 2] and kwargs["in_channels"] == 3
    assert kwargs["num_res_blocks"] == 2 and kwargs["likelihood"] == "gaussian"
    assert set(kwargs) == {
        "in_channels", "hidden", "res_hidden", "num_res_blocks", "num_codes", "code_dim",
        "strides", "likelihood", "quantizer",
    }  # fmt: skip
    assert build_model(model.config).config == model.config
    # the paper's defaults: K=512, D=64, Sonnet's 128 hidden channels
    full = vqvae_image()
    assert full.quantizer.num_codes == 512 and full.quantizer.dim == 64
    assert full.encoder.net[-1].in_channels == 128


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("gaussian", GaussianLikelihood),
        ("logistic", DiscretizedLogistic),
        ("categorical", Categorical256),
    ],
)
def test_each_likelihood_trains(name, cls):
    torch.manual_seed(0)
    model = tiny(2, likelihood=name)
    assert isinstance(model.likelihood, cls)
    x = data(2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(3):
        out = model(x)
        assert out.params.shape == (2, cls().out_channels(2), 8, 8)
        assert out.recon.shape == x.shape
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_nll_bits_per_dim_uses_the_codes_and_leaves_state_alone():
    torch.manual_seed(0)
    model = tiny(2, likelihood="logistic", quantizer={"ema": True})
    x = data(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bpd = model.nll_bits_per_dim(x)  # in training mode: must still not touch the EMA state
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    params = model.decode_params(model.encode(x))
    expected = model.likelihood.nll(params, x) / (x[0].numel() * torch.log(torch.tensor(2.0)))
    assert bpd.shape == (2,)
    torch.testing.assert_close(bpd, expected)


def test_builder_errors_are_clear():
    with pytest.raises(ValueError, match="vqvae_image"):
        build_model({"builder": "no_such_model", "kwargs": {}})
    with pytest.raises(ValueError, match="hiden"):
        vqvae_image(hiden=8)
    with pytest.raises(ValueError, match="code_dim="):
        vqvae_image(quantizer={"dim": 8})
    with pytest.raises(ValueError, match="'builder'"):
        build_model({"kwargs": {}})
    with pytest.raises(ValueError, match="likelihood"):
        vqvae_image(likelihood=3)
    with pytest.raises(TypeError, match="keyword"):
        vqvae_image(3)


def test_register_records_every_argument():
    @register("_test_pair")
    def pair(*, a: int, b: tuple = (1, 2), **extra) -> torch.nn.Module:
        return torch.nn.Linear(a, sum(b) + len(extra))

    try:
        model = pair(a=2, c=5)
        assert model.config == {"builder": "_test_pair", "kwargs": {"a": 2, "b": [1, 2], "c": 5}}
        assert build_model(model.config).out_features == 4
        with pytest.raises(ValueError, match="already registered"):
            register("_test_pair")(pair)
    finally:
        BUILDERS.pop("_test_pair")
