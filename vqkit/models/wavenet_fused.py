"""Fused WaveNet generation on the CPU: the whole loop over samples and layers in one numba kernel.

The torch cached sampler (:meth:`WaveNet.step`) spends most of its time dispatching ~8 small ops
per layer per sample. This kernel runs the same computation -- ring buffer per dilation, gated
layers, skip sum, head, inverse-CDF sampling -- as one compiled function over float32 arrays:

* The weights are laid out as contiguous (in, out) float32 matrices (kept per model until a
  parameter changes), so every inner loop is a unit-stride ``y[o] += x[i] * W[i, o] + ...`` over
  four rows of W that LLVM vectorizes; the streams of a batch run in the loop around it, so each
  weight row is loaded once per step for all of them. The gates use a rational tanh (within 5 ulp)
  that vectorizes where libm's does not.
* The speaker term is folded into the conv biases (per stream); the local conditioning is
  projected by every layer's 1x1 conv with one torch matmul per block of samples, before the loop.
* Sampling draws nothing inside: the caller hands over the uniforms (torch's generator, drawn
  beforehand), which the torch samplers consume in the same order, so both draw identical samples
  for the same seed (up to a uniform falling within float rounding of a CDF step).
* Streams are split into chunks that run in parallel (``prange``) when torch allows several
  threads.

numba is imported on first use; without it :func:`kernel` returns None after one warning and
:meth:`WaveNet.generate` falls back to the torch cached path.
"""

from __future__ import annotations

import importlib
import math
import types
import warnings
import weakref
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from vqkit.models.wavenet import WaveNet

SQRT_HALF = np.float32(math.sqrt(0.5))
BLOCK_FLOATS = 1 << 19  # local projections per kernel call: 2 MiB of float32, cache-sized
MIN_BLOCK = 16  # samples per kernel call at least (each call costs tens of microseconds)
FASTMATH = {"contract", "arcp", "nsz", "reassoc"}  # no nnan/ninf/afn: logits stay IEEE-exact-ish

_KERNELS: dict = {}  # parallel (bool) -> the compiled kernel, once loaded
_WARNED = False
prange = range  # replaced by numba.prange before compiling


def _tanh(x):
    """float32 tanh by a rational approximation (Eigen's ``generic_fast_tanh_float``: within
    5 ulp, 3e-7 absolute), vectorizable where the libm call is not; +-1 beyond |x| = 7.9."""
    x = min(max(x, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
    x2 = x * x
    p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = x2 * p + np.float32(-8.60467152213735e-11)
    p = x2 * p + np.float32(5.12229709037114e-08)
    p = x2 * p + np.float32(1.48572235717979e-05)
    p = x2 * p + np.float32(6.37261928875436e-04)
    p = x2 * p + np.float32(4.89352455891786e-03)
    q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = x2 * q + np.float32(2.26843463243900e-03)
    q = x2 * q + np.float32(4.89352518554385e-03)
    return x * p / q


def _acc(y, x, w):
    """y (C, O) += x (C, I) @ w (I, O), four rows of w per pass over y (one load and store of y
    per four multiply-adds), those rows loaded once for all C streams."""
    n_in = x.shape[1]
    n_in4 = n_in - n_in % 4
    for i in range(0, n_in4, 4):
        for j in range(x.shape[0]):
            x0, x1, x2, x3 = x[j, i], x[j, i + 1], x[j, i + 2], x[j, i + 3]
            for o in range(w.shape[1]):
                y[j, o] += x0 * w[i, o] + x1 * w[i + 1, o] + x2 * w[i + 2, o] + x3 * w[i + 3, o]
    for i in range(n_in4, n_in):
        for j in range(x.shape[0]):
            xi = x[j, i]
            for o in range(w.shape[1]):
                y[j, o] += xi * w[i, o]


_PY_HELPERS = (_tanh, _acc)


def _kernel_py(
    starts, t0, n, x_prev, embed, taps, conv_bias, dilations, q_off, q_size, queue,
    skip_w, skip_b, res_w, res_b, skip_scale, w1, b1, w2, b2,
    local_proj, uniforms, temperature, samples, logits_out,
):  # fmt: skip
    """Generate samples t0 .. t0 + n - 1 of every stream; state (x_prev, queue) in place.

    Shapes: B streams, L layers, k taps, R residual, G gate (H = G / 2), S skip, K classes.
    starts (chunks + 1,) stream ranges; x_prev (B,) last input; embed (classes_in, R);
    taps (L, k, R, G); conv_bias (B, L, G) with the speaker term; dilations, q_off, q_size (L,):
    each layer's ring buffer is queue[:, q_off : q_off + q_size] (B, Q, R); skip_w (L, H, S);
    skip_b (L, S); res_w (L, H, R) and res_b (L, R) (the last layer's unused); w1 (S, S), b1 (S,),
    w2 (S, K), b2 (K,); local_proj (B, n, L * G) or (B, 0, 0) for none; uniforms (B, total) or
    (B, 0) for argmax; samples (B, total) int64; logits_out (B, total, K) or (B, 0, 0).
    """
    L, k, R, G = taps.shape
    H = G // 2
    S = skip_w.shape[2]
    K = w2.shape[1]
    has_local = local_proj.shape[1] > 0
    want_logits = logits_out.shape[1] > 0
    argmax = uniforms.shape[1] == 0
    for c in prange(starts.shape[0] - 1):
        lo = starts[c]
        cb = starts[c + 1] - lo
        h = np.empty((cb, R), np.float32)
        hq = np.empty((cb, R), np.float32)
        a = np.empty((cb, G), np.float32)
        z = np.empty((cb, H), np.float32)
        skips = np.empty((cb, S), np.float32)
        hid = np.empty((cb, S), np.float32)
        out = np.empty((cb, K), np.float32)
        cdf = np.empty(K, np.float32)
        for t in range(t0, t0 + n):
            for j in range(cb):
                cls = x_prev[lo + j]
                for r in range(R):
                    h[j, r] = embed[cls, r]
                for o in range(S):
                    skips[j, o] = 0.0
            for layer in range(L):
                d = dilations[layer]
                off = q_off[layer]
                size = q_size[layer]
                for j in range(cb):
                    for o in range(G):
                        a[j, o] = conv_bias[lo + j, layer, o]
                if has_local:
                    for j in range(cb):
                        for o in range(G):
                            a[j, o] += local_proj[lo + j, t - t0, layer * G + o]
                for i in range(k - 1):
                    slot = off + (t - d * (k - 1 - i)) % size  # negative times: still zeros
                    for j in range(cb):
                        for r in range(R):
                            hq[j, r] = queue[lo + j, slot, r]
                    _acc(a, hq, taps[layer, i])
                _acc(a, h, taps[layer, k - 1])
                slot = off + t % size
                for j in range(cb):
                    for r in range(R):
                        queue[lo + j, slot, r] = h[j, r]
                for j in range(cb):
                    for m in range(H):
                        gate = np.float32(0.5) * _tanh(np.float32(0.5) * a[j, H + m])
                        z[j, m] = _tanh(a[j, m]) * (gate + np.float32(0.5))
                for j in range(cb):
                    for o in range(S):
                        skips[j, o] += skip_b[layer, o]
                _acc(skips, z, skip_w[layer])
                if layer < L - 1:
                    for j in range(cb):
                        for r in range(R):
                            h[j, r] += res_b[layer, r]
                    _acc(h, z, res_w[layer])
                    for j in range(cb):
                        for r in range(R):
                            h[j, r] *= SQRT_HALF
            for j in range(cb):
                for o in range(S):
                    skips[j, o] = max(skips[j, o] * skip_scale, np.float32(0.0))
                    hid[j, o] = b1[o]
            _acc(hid, skips, w1)
            for j in range(cb):
                for o in range(S):
                    hid[j, o] = max(hid[j, o], np.float32(0.0))
                for o in range(K):
                    out[j, o] = b2[o]
            _acc(out, hid, w2)
            for j in range(cb):
                b = lo + j
                if want_logits:
                    for o in range(K):
                        logits_out[b, t, o] = out[j, o]
                best = 0
                top = out[j, 0]
                for o in range(1, K):
                    if out[j, o] > top:  # the first maximum, as torch's argmax
                        top = out[j, o]
                        best = o
                if not argmax:
                    # Inverse CDF of softmax(logits / T), as sample_logits: the first class whose
                    # running sum exceeds u * total.
                    top = top / temperature
                    total = np.float32(0.0)
                    for o in range(K):
                        total += np.float32(math.exp(out[j, o] / temperature - top))
                        cdf[o] = total
                    threshold = uniforms[b, t] * total
                    best = K - 1
                    for o in range(K):
                        if cdf[o] > threshold:
                            best = o
                            break
                samples[b, t] = best
                x_prev[b] = best


def kernel(parallel: bool = False):
    """The compiled kernel (numba, cached on disk), or None after one warning without numba.

    Two builds of the same code: a serial one for one thread (no threading layer involved, so
    nothing to start per call and nothing to clash with callers' threads) and a ``prange`` one
    over stream chunks for several threads.
    """
    global _WARNED, prange, _tanh, _acc
    if parallel in _KERNELS:
        return _KERNELS[parallel]
    try:
        numba = importlib.import_module("numba")
    except ImportError as err:
        if not _WARNED:
            warnings.warn(
                f"numba is not available ({err}); WaveNet generation falls back to the torch "
                f"cached sampler, several times slower on the CPU (pip install 'numba>=0.60')",
                RuntimeWarning,
                stacklevel=3,
            )
            _WARNED = True
        return None
    if not _KERNELS:  # the kernel calls these module globals: compiled ones replace them, once
        prange = numba.prange
        _tanh = numba.njit(cache=True, inline="always", fastmath=FASTMATH)(_PY_HELPERS[0])
        _acc = numba.njit(cache=True, inline="always", fastmath=FASTMATH)(_PY_HELPERS[1])
    source = _kernel_py
    if parallel:  # another name, so numba's disk cache keeps the two builds apart
        source = types.FunctionType(_kernel_py.__code__, _kernel_py.__globals__, "_kernel_par")
        source.__qualname__ = "_kernel_par"
    _KERNELS[parallel] = numba.njit(cache=True, parallel=parallel, fastmath=FASTMATH)(source)
    return _KERNELS[parallel]


def usable(model: WaveNet, fused: bool | None) -> bool:
    """Whether :meth:`WaveNet.generate` runs the fused kernel: ``fused=None`` picks it for a float32
    model on the CPU when numba imports; True insists (an error off the CPU or float32)."""
    if fused is False:
        return False
    weight = model.embed.weight
    fits = weight.device.type == "cpu" and weight.dtype == torch.float32
    if fused is None:
        return fits and kernel() is not None
    if not fits:
        raise ValueError(
            f"the fused kernel runs float32 models on the CPU; this one is {weight.dtype} on "
            f"{weight.device} (pass fused=None or False)"
        )
    return kernel() is not None


def _np(x: Tensor) -> np.ndarray:
    return x.detach().to(torch.float32).contiguous().numpy()


@torch.inference_mode()
def generate(
    model: WaveNet,
    n_samples: int,
    local: Tensor | None,
    speaker: Tensor | None,
    first: Tensor,
    temperature: float,
    uniforms: Tensor | None,
    return_logits: bool,
    bar=None,
) -> tuple[Tensor, Tensor | None]:
    """Samples (B, n) int64 and, with ``return_logits``, logits (B, out_classes, n).

    Arguments as validated by ``WaveNet._prepare``; ``uniforms`` (n, B) in [0, 1) drawn by the
    caller, None for the argmax. ``bar``: a progress bar (tqdm) advanced by the samples of
    each kernel call; with one, an unconditioned model runs in blocks too (same samples).
    """
    if model.out_classes > model.in_classes:  # the kernel does no bounds checks
        raise ValueError(
            f"generation feeds each sample back as the next input: out_classes "
            f"({model.out_classes}) must not exceed in_classes ({model.in_classes})"
        )
    weights, glob_weight, local_weight = _weights(model)
    batch, (big_l, _, r, g) = first.shape[0], weights["taps"].shape
    bias = np.broadcast_to(weights.pop("bias"), (batch, big_l, g))
    if glob_weight is not None:  # the speaker term, constant in time, folded into the biases
        glob = model.speaker_embed(speaker) @ glob_weight  # (B, L * G)
        bias = bias + glob.numpy().reshape(batch, big_l, g)
    weights["conv_bias"] = np.array(bias, np.float32, order="C")  # writable, C: one signature
    weights["queue"] = np.zeros((batch, int(weights["q_size"].sum()), r), np.float32)
    classes = model.out_classes
    x_prev = first.to(torch.long).numpy().copy()
    samples = np.empty((batch, n_samples), np.int64)
    shape = (batch, n_samples, classes) if return_logits else (batch, 0, 0)
    logits = np.empty(shape, np.float32)
    u = np.zeros((batch, 0), np.float32) if uniforms is None else _np(uniforms.t())
    temp = np.float32(temperature if temperature > 0 else 1.0)
    block = max(MIN_BLOCK, BLOCK_FLOATS // (batch * big_l * g))
    if local is None:  # nothing to project per block: one call, or about 100 for a bar
        block = n_samples if bar is None else max(MIN_BLOCK, -(-n_samples // 100))
    threads = max(1, min(batch, torch.get_num_threads(), _max_threads()))
    run = kernel(parallel=threads > 1)
    starts = np.linspace(0, batch, threads + 1).round().astype(np.int64)
    no_local = np.zeros((batch, 0, 0), np.float32)
    previous = _set_threads(threads) if threads > 1 else None
    try:
        for t0 in range(0, n_samples, block):
            n = min(block, n_samples - t0)
            proj = no_local
            if local_weight is not None:
                proj = _np(local[:, :, t0 : t0 + n].transpose(1, 2) @ local_weight)  # (B, n, L G)
            run(
                starts, t0, n, x_prev, local_proj=proj, uniforms=u, temperature=temp,
                samples=samples, logits_out=logits, **weights,
            )  # fmt: skip
            if bar is not None:
                bar.update(n)
    finally:
        if previous is not None:
            _set_threads(previous)
    samples_t = torch.from_numpy(samples)
    logits_t = torch.from_numpy(logits).transpose(1, 2) if return_logits else None
    return samples_t, logits_t


_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights(model: WaveNet) -> tuple[dict, Tensor | None, Tensor | None]:
    """The kernel's weight arrays, kept per model until a parameter changes (in place or
    replaced): (arrays by kernel argument name, plus "bias" (L, G); speaker projection
    (C_g, L * G) or None; local projection (C_l, L * G) or None)."""
    params = model.named_parameters(remove_duplicate=False)
    key = tuple((p.data_ptr(), p._version) for _, p in params)
    cached = _WEIGHTS.get(model)
    if cached is not None and cached[0] == key:
        return {**cached[1]}, cached[2], cached[3]
    layers, k, s = model.layers, model.kernel_size, model.skip_channels
    out_w = [layer.out.weight[:, :, 0].t() for layer in layers]  # (H, S [+ R])
    out_b = [layer.out.bias for layer in layers]
    res_w = np.zeros((len(layers), model.gate_channels // 2, model.residual_channels), np.float32)
    res_b = np.zeros((len(layers), model.residual_channels), np.float32)
    for i in range(len(layers) - 1):  # the last layer has no residual output
        res_w[i], res_b[i] = _np(out_w[i][:, s:]), _np(out_b[i][s:])
    dilations = np.array(model.dilations, dtype=np.int64)
    q_size = dilations * (k - 1)
    w1, w2 = model.head[1], model.head[3]
    arrays = dict(
        embed=_np(model.embed.weight),
        taps=_np(torch.stack([layer.conv.weight.permute(2, 1, 0) for layer in layers])),
        bias=_np(torch.stack([layer.conv.bias for layer in layers])),
        dilations=dilations,
        q_off=np.concatenate([[0], np.cumsum(q_size)[:-1]]).astype(np.int64),
        q_size=q_size,
        skip_w=_np(torch.stack([w[:, :s] for w in out_w])),
        skip_b=_np(torch.stack([b[:s] for b in out_b])),
        res_w=res_w,
        res_b=res_b,
        skip_scale=np.float32(model.skip_scale),
        w1=_np(w1.weight[:, :, 0].t()),
        b1=_np(w1.bias),
        w2=_np(w2.weight[:, :, 0].t()),
        b2=_np(w2.bias),
    )
    glob_weight = local_weight = None
    if model.speaker_embed is not None:
        glob_weight = torch.cat([layer.glob.weight for layer in layers]).t().contiguous()
    if model.local_channels is not None:  # every layer's 1x1 local conv as one matrix
        local_weight = torch.cat([layer.local.weight[:, :, 0] for layer in layers]).t()
        local_weight = local_weight.contiguous()
    _WEIGHTS[model] = (key, arrays, glob_weight, local_weight)
    return {**arrays}, glob_weight, local_weight


def _max_threads() -> int:
    return importlib.import_module("numba").config.NUMBA_NUM_THREADS


def _set_threads(threads: int) -> int:
    """Set numba's thread count; returns the previous one."""
    numba = importlib.import_module("numba")
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    return previous
