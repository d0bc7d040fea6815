"""The video models: the 3D VQ-VAE (shared parts, dims=3) and the causal transformer prior."""

from __future__ import annotations

import pytest
import torch

from vqkit.models import VideoPrior, build_model, video_prior, vqvae_video
from vqkit.models.video_prior import predict_video

SHAPE = (3, 2, 2)  # (T', H', W'): 12 positions, small enough for all-pairs checks
N = 12


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/models/conftest.py


def tiny_prior(**kw) -> VideoPrior:
    torch.manual_seed(0)
    args = dict(num_codes=7, shape=SHAPE, dim=16, num_layers=2, num_heads=2)
    return video_prior(**{**args, **kw}).eval()


def random_codes(b: int = 2, k: int = 7, shape=SHAPE, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, k, (b, *shape), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- 3D VQ-VAE


@pytest.mark.parametrize(
    "strides, clip, latent",
    [
        ([(1, 2, 2), (2, 2, 2)], (8, 16, 16), (4, 4, 4)),  # time x2, space x4
        ([(2, 2, 2), (2, 2, 2)], (8, 16, 16), (2, 4, 4)),  # time x4, space x4
        ([(2, 2, 2), (1, 2, 2), (1, 2, 2)], (4, 16, 24), (2, 2, 3)),  # time x2, space x8
    ],
)
def test_vqvae_video_round_trip_with_per_axis_strides(strides, clip, latent):
    torch.manual_seed(0)
    model = vqvae_video(
        hidden=8, res_hidden=4, num_res_blocks=1, num_codes=16, code_dim=4, strides=strides
    ).eval()
    x = torch.rand(2, 3, *clip) - 0.5
    expected_factor = tuple(a // b for a, b in zip(clip, latent))
    assert model.factor == expected_factor
    with torch.no_grad():
        out = model(x)
        codes = model.encode(x)
        assert codes.shape == (2, *latent) and codes.dtype == torch.int64
        assert out.recon.shape == x.shape
        assert torch.equal(codes, out.quant.codes)
        # decode(encode(x)) is the forward pass's reconstruction.
        torch.testing.assert_close(model.decode(codes), out.recon)
    # The checkpoint config rebuilds the same architecture (per-axis strides as lists).
    again = build_model(model.config)
    assert again.config == model.config
    assert model.config["builder"] == "vqvae_video"
    assert model.config["kwargs"]["strides"] == [list(s) for s in strides]
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval().encode(x), codes)


def test_vqvae_video_gradient_reaches_every_part():
    torch.manual_seed(0)
    model = vqvae_video(hidden=8, res_hidden=4, num_res_blocks=1, num_codes=8, code_dim=4,
                        quantizer={"ema": False, "kmeans_init": False, "restart_after": None})
    out = model(torch.rand(1, 3, 4, 8, 8) - 0.5)
    out.loss.backward()
    for name in ("encoder", "decoder", "quantizer"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name


def test_vqvae_video_rejects_indivisible_clips():
    model = vqvae_video(hidden=8, res_hidden=4, num_res_blocks=1, num_codes=8, code_dim=4)
    with pytest.raises(ValueError, match="not divisible"):
        model.encode(torch.zeros(1, 3, 5, 16, 16))  # 5 frames, time factor 2


# ---------------------------------------------------------------- the prior: shapes, config


def test_forward_shape_loss_and_config_round_trip():
    prior = tiny_prior(num_conds=5, cond_per_step=2)
    codes = random_codes()
    cond = torch.randint(0, 5, (2, SHAPE[0], 2))
    logits = prior(codes, cond)
    assert logits.shape == (2, 7, *SHAPE)
    loss = prior.loss(codes, cond)
    assert loss.dim() == 0 and torch.isfinite(loss)
    bits = prior.nll_bits(codes, cond)
    assert bits.shape == (2,)
    torch.testing.assert_close(bits.mean(), loss / torch.log(torch.tensor(2.0)))
    # Bits of the future given one step of context: the mean over steps 1.. only.
    nll = torch.nn.functional.cross_entropy(logits, codes, reduction="none")
    torch.testing.assert_close(
        prior.nll_bits(codes, cond, from_step=1), nll[:, 1:].flatten(1).mean(1) / 0.6931471805599453
    )
    again = build_model(prior.config)
    again.load_state_dict(prior.state_dict())
    assert torch.equal(again.eval()(codes, cond), logits)


# ---------------------------------------------------------------- causality


@pytest.mark.parametrize("prev_kernel", [0, 3, 5])
def test_logits_ignore_codes_at_and_after_their_position_exactly(prev_kernel):
    prior = tiny_prior(prev_kernel=prev_kernel)
    codes = random_codes()
    base = prior(codes).flatten(2)  # (B, K, N)
    for p in range(N):
        changed = codes.flatten(1).clone()
        changed[:, p:] = (changed[:, p:] + 1 + torch.arange(N - p)) % 7
        out = prior(changed.view_as(codes)).flatten(2)
        assert torch.equal(out[:, :, : p + 1], base[:, :, : p + 1]), p
        if p + 1 < N:  # and the next position does see code p
            assert not torch.equal(out[:, :, p + 1], base[:, :, p + 1]), p


def test_gradients_flow_only_from_the_past_over_all_pairs():
    """d logits[q] / d input[p] is zero exactly when p > q, and nonzero for every p <= q.

    The input at position p carries code p - 1, so this covers every (code, logit) pair.
    """
    prior = tiny_prior()
    flat = random_codes(b=1).flatten(1)
    h = prior.embed(flat, None, 0, N).detach().requires_grad_(True)  # (1, N, dim)
    logits = prior.forward_embeddings(h)  # (1, N, K)
    for q in range(N):
        (grad,) = torch.autograd.grad(logits[0, q].sum(), h, retain_graph=True)
        per_position = grad[0].abs().sum(dim=1)  # (N,)
        assert torch.all(per_position[q + 1 :] == 0), q
        assert torch.all(per_position[: q + 1] > 0), q


def test_conditions_reach_their_own_and_later_steps_only():
    prior = tiny_prior(num_conds=4, cond_per_step=2)
    codes = random_codes()
    cond = torch.randint(0, 4, (2, SHAPE[0], 2), generator=torch.Generator().manual_seed(3))
    base = prior(codes, cond)  # (B, K, T', H', W')
    for t in range(SHAPE[0]):
        for slot in range(2):
            changed = cond.clone()
            changed[:, t, slot] = (changed[:, t, slot] + 1) % 4
            out = prior(codes, changed)
            assert torch.equal(out[:, :, :t], base[:, :, :t]), (t, slot)
            # Every code of step t sees it (the first one too, predicted from step t - 1).
            diff = (out[:, :, t] - base[:, :, t]).abs().amax(dim=1)  # (B, H', W')
            assert torch.all(diff > 0), (t, slot)


# ---------------------------------------------------------------- generation


def test_previous_step_window_indices():
    prior = tiny_prior(prev_kernel=3)  # (T', H', W') = (3, 2, 2): positions t * 4 + y * 2 + x
    none = N
    assert prior.prev_index.shape == (N, 9)
    assert (prior.prev_index[:4] == none).all()  # step 0 has no previous step
    # (t=1, y=0, x=1): window rows y-1..y+1, columns x-1..x+1 of step 0.
    assert prior.prev_index[4 + 1].tolist() == [none, none, none, 0, 1, none, 2, 3, none]
    assert prior.prev_index[8 + 2].tolist() == [none, 4, 5, none, 6, 7, none, none, none]
    # The window reaches the input itself: position 4 (t=1, y=0, x=0) reads code 0 (t=0, y=0,
    # x=0) through it, while without a window its input holds only code 3.
    codes = random_codes()
    changed = codes.clone()
    changed[:, 0, 0, 0] = (changed[:, 0, 0, 0] + 1) % 7
    h0 = prior.embed(codes.flatten(1), None, 4, 5)
    h1 = prior.embed(changed.flatten(1), None, 4, 5)
    assert not torch.equal(h0, h1)
    assert torch.equal(
        tiny_prior(prev_kernel=0).embed(codes.flatten(1), None, 4, 5),
        tiny_prior(prev_kernel=0).embed(changed.flatten(1), None, 4, 5),
    )


@pytest.mark.parametrize("context_steps", [0, 1, 2, 3])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_cached_and_naive_sampling_agree_exactly(context_steps, temperature):
    prior = tiny_prior(num_conds=3, cond_per_step=2)
    cond = torch.randint(0, 3, (4, SHAPE[0], 2), generator=torch.Generator().manual_seed(5))
    context = random_codes(b=4, seed=9)[:, :context_steps]
    runs = []
    for cached in (True, False):
        gen = torch.Generator().manual_seed(11)
        runs.append(
            prior.generate(
                context=context,
                cond=cond,
                temperature=temperature,
                generator=gen,
                cached=cached,
                return_logits=True,
            )
        )
    (codes_c, logits_c), (codes_n, logits_n) = runs
    assert torch.equal(codes_c, codes_n)
    assert torch.equal(codes_c[:, :context_steps], context)  # the prefix is kept as given
    assert logits_c.shape == (4, 7, SHAPE[0] - context_steps, *SHAPE[1:])
    torch.testing.assert_close(logits_c, logits_n, rtol=0, atol=1e-5)
    # The sampling logits are the teacher-forced logits of the result.
    full = prior(codes_c, cond)[:, :, context_steps:]
    torch.testing.assert_close(logits_c, full, rtol=0, atol=1e-5)


def test_samples_are_reproducible_and_vary_with_the_seed():
    prior = tiny_prior()
    a = prior.generate(3, generator=torch.Generator().manual_seed(0))
    b = prior.generate(3, generator=torch.Generator().manual_seed(0))
    c = prior.generate(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, *SHAPE) and a.dtype == torch.int64
    assert int(a.min()) >= 0 and int(a.max()) < 7


def test_conditioning_steers_what_is_generated():
    """Train on volumes whose step t is filled with code cond[t]; sampling must obey cond."""
    torch.manual_seed(0)
    prior = video_prior(
        num_codes=5,
        shape=(4, 1, 2),
        dim=32,
        num_layers=1,
        num_heads=2,
        num_conds=5,
        cond_per_step=1,
    )
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        cond = torch.randint(0, 5, (32, 4, 1), generator=gen)
        codes = cond[..., None].expand(32, 4, 1, 2).contiguous()
        loss = prior.loss(codes, cond)
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.eval()
    cond = torch.randint(0, 5, (16, 4, 1), generator=gen)
    sampled = prior.generate(cond=cond, temperature=1.0, generator=gen)
    agree = (sampled == cond[..., None]).float().mean()
    assert agree > 0.95, float(agree)
    # The same prior under other conditions draws other codes.
    other = (cond + 1) % 5
    assert (prior.generate(cond=other, generator=gen) == cond[..., None]).float().mean() < 0.1


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    prior = tiny_prior(num_conds=3)
    cond = torch.zeros(2, SHAPE[0], 1, dtype=torch.long)
    with pytest.raises(ValueError, match="shape"):
        prior(torch.zeros(2, 3, 2, 3, dtype=torch.long), cond)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        prior(torch.full((2, *SHAPE), 7), cond)
    with pytest.raises(ValueError, match="int64"):
        prior(torch.zeros(2, *SHAPE), cond)
    with pytest.raises(ValueError, match="conditional"):
        prior(random_codes())
    with pytest.raises(ValueError, match=r"cond must have shape"):
        prior(random_codes(), torch.zeros(2, SHAPE[0], dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_prior()(random_codes(), cond)
    with pytest.raises(ValueError, match="time steps"):
        prior.generate(context=torch.zeros(2, 4, 2, 2, dtype=torch.long), cond=cond)
    with pytest.raises(ValueError, match="disagree"):
        prior.generate(3, cond=cond)
    with pytest.raises(ValueError, match="temperature"):
        prior.generate(cond=cond, temperature=-1.0)
    with pytest.raises(ValueError, match="num_heads"):
        video_prior(num_codes=4, shape=SHAPE, dim=10, num_heads=3)
    with pytest.raises(ValueError, match="shape"):
        video_prior(num_codes=4, shape=(2, 2))


# ---------------------------------------------------------------- prediction (the Python API)


def test_predict_video_keeps_the_context_codes_and_samples_the_rest():
    torch.manual_seed(0)
    vqvae = vqvae_video(
        hidden=8, res_hidden=4, num_res_blocks=1, num_codes=7, code_dim=4, strides=[(2, 2, 2)]
    ).eval()
    prior = tiny_prior(num_conds=5, cond_per_step=2)  # codes (3, 2, 2) <- clips (6, 4, 4)
    clips = torch.rand(2, 3, 6, 4, 4)
    actions = torch.randint(0, 5, (2, 6), generator=torch.Generator().manual_seed(0))
    out = predict_video(vqvae, prior, clips[:, :, :2], actions, temperature=0)
    assert out.shape == (2, 3, 6, 4, 4) and 0 <= float(out.min()) and float(out.max()) <= 1
    # The same as the pipeline spelt out: encode the context alone, continue, decode.
    with torch.no_grad():
        prefix = vqvae.encode(clips[:, :, :2] - 0.5)
        codes = prior.generate(context=prefix, cond=actions.view(2, 3, 2), temperature=0)
        torch.testing.assert_close(out, (vqvae.decode(codes) + 0.5).clamp(0, 1))
    a = predict_video(
        vqvae, prior, clips[:, :, :2], actions, generator=torch.Generator().manual_seed(4)
    )
    b = predict_video(
        vqvae, prior, clips[:, :, :2], actions, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="multiple of the VQ-VAE's time factor 2"):
        predict_video(vqvae, prior, clips[:, :, :3], actions)
