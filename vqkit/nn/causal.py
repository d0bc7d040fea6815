"""Causal (left-padded, dilated) 1D convolution with a cached single-step path.

The full pass pads ``dilation * (kernel_size - 1)`` zeros on the left, so output ``t`` sees inputs
``t - dilation * (kernel_size - 1) .. t`` and nothing later. The step path computes that same output
from one new input and a ring buffer of the last ``dilation * (kernel_size - 1)`` inputs, with the
conv weight used as ``kernel_size`` matrices (Paine et al. 2016, "Fast Wavenet Generation
Algorithm", https://arxiv.org/abs/1611.09482)::

    y_t = b + W[:, :, 0] x_{t - d(k-1)} + ... + W[:, :, k-2] x_{t - d} + W[:, :, k-1] x_t

:class:`GatedResidualLayer` is the WaveNet layer built on it (gated activation, local and global
conditioning, residual and skip outputs), with the same forward / ``init_state`` / ``step`` trio.

Example:
    >>> conv = CausalConv1d(4, 6, kernel_size=2, dilation=4)
    >>> x = torch.randn(3, 4, 10)
    >>> full = conv(x)  # (3, 6, 10)
    >>> state = conv.init_state(3)
    >>> steps = torch.stack([conv.step(x[:, :, t], state, t) for t in range(10)], dim=-1)
    >>> torch.allclose(full, steps, atol=1e-6)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.errors import check_int

SQRT_HALF = math.sqrt(0.5)  # keeps the variance of the residual stream ~ constant with depth


@dataclass
class CausalConvState:
    """Cached state of one :class:`CausalConv1d` for step-by-step evaluation.

    Attributes:
        queue: Ring buffer (L, B, C_in) of the last ``L = dilation * (kernel_size - 1)`` inputs;
            the input of time ``s`` lives in slot ``s % L``. Zeros at first, which is exactly the
            zero padding of the full pass.
        taps: Weight taps (k, C_in, C_out), contiguous; ``taps[i]`` multiplies
            ``x_{t - dilation * (k - 1 - i)}``. A snapshot taken by ``init_state``: rebuild the
            state after the weights change.
        bias: (C_out,), or (B, C_out) when a caller folds a per-example constant into it (WaveNet
            folds the speaker term in, so it costs nothing per step), or None.
    """

    queue: Tensor
    taps: Tensor
    bias: Tensor | None


class CausalConv1d(nn.Conv1d):
    """Dilated 1D convolution that only looks back: (B, C_in, T) -> (B, C_out, T).

    Same parameters (and state-dict keys) as ``nn.Conv1d`` with stride 1 and no padding; the
    causal left padding is added in ``forward``.

    Args:
        in_channels: Input channels C_in.
        out_channels: Output channels C_out.
        kernel_size: Taps k >= 1 (2 in WaveNet).
        dilation: Spacing d >= 1 between taps.
        bias: Learn an additive bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 2,
        *,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("kernel_size", kernel_size),
            ("dilation", dilation),
        ):
            check_int(name, value)
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)

    @property
    def context(self) -> int:
        """Past inputs each output needs besides the current one: ``dilation * (k - 1)``."""
        return self.dilation[0] * (self.kernel_size[0] - 1)

    def forward(self, x: Tensor) -> Tensor:
        """Full causal pass.

        Args:
            x: Input (B, C_in, T).

        Returns:
            Output (B, C_out, T); output ``t`` depends only on inputs ``<= t``.
        """
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CausalConv1d expects input of shape (B, {self.in_channels}, T), "
                f"got {tuple(x.shape)}"
            )
        return super().forward(F.pad(x, (self.context, 0)))

    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CausalConvState:
        """Fresh step state for ``batch`` sequences starting at time 0 (zero history).

        Args:
            batch: Number of sequences B stepped together.
            device: Defaults to the weight's device.
            dtype: Defaults to the weight's dtype.
        """
        device = self.weight.device if device is None else device
        dtype = self.weight.dtype if dtype is None else dtype
        queue = torch.zeros(self.context, batch, self.in_channels, device=device, dtype=dtype)
        # (C_out, C_in, k) -> (k, C_in, C_out): one contiguous (C_in, C_out) matrix per tap, so a
        # step is k plain matmuls with no per-step transposes or copies.
        taps = self.weight.detach().permute(2, 1, 0).to(device=device, dtype=dtype).contiguous()
        bias = None if self.bias is None else self.bias.detach().to(device=device, dtype=dtype)
        return CausalConvState(queue=queue, taps=taps, bias=bias)

    def step(self, x: Tensor, state: CausalConvState, t: int) -> Tensor:
        """One output sample from the input at time ``t``; updates ``state.queue`` in place.

        Call with ``t = 0, 1, 2, ...`` in order, under ``torch.inference_mode()`` (or no_grad).

        Args:
            x: Input at time t, (B, C_in).
            state: From :meth:`init_state`.
            t: Time index of ``x`` (0 for the first sample).

        Returns:
            Output at time t, (B, C_out); equals ``forward(inputs)[:, :, t]`` up to float rounding.
        """
        k, d, size = self.kernel_size[0], self.dilation[0], self.context
        taps = state.taps
        y = x @ taps[k - 1] if state.bias is None else torch.addmm(state.bias, x, taps[k - 1])
        if size:
            queue = state.queue
            for i in range(k - 1):
                # x_{t - d (k - 1 - i)} was written at slot (t - d (k - 1 - i)) % size; slots of
                # negative times still hold the initial zeros (the padding).
                y.addmm_(queue[(t - d * (k - 1 - i)) % size], taps[i])
            # Overwrites x_{t - size}, which no later step needs.
            queue[t % size].copy_(x)
        return y


@dataclass
class GatedLayerState:
    """Step state of one :class:`GatedResidualLayer`: its conv's state and the 1x1 output conv
    split into skip and residual matrices, (G / 2, S) and (G / 2, R), with their biases (the
    residual ones None for a ``last`` layer)."""

    conv: CausalConvState
    skip_weight: Tensor
    skip_bias: Tensor
    res_weight: Tensor | None
    res_bias: Tensor | None


class GatedResidualLayer(nn.Module):
    """WaveNet layer: dilated causal conv, gated activation, 1x1 to skip (and residual) channels.

    ``z = tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h)`` with ``h`` the local (1x1 conv) and
    global (linear, broadcast over time) conditioning; filter and gate are the two halves of
    ``gate_channels``. The next residual input is ``(x + 1x1(z)) * sqrt(1/2)``. A ``last`` layer
    has no residual output: it would feed nothing, and unused parameters upset DDP.

    Args:
        residual_channels: Channels R of x.
        gate_channels: Channels G of the gate pre-activations (even).
        skip_channels: Channels S of the skip output.
        kernel_size: Taps of the dilated conv.
        dilation: Its dilation.
        local_channels: Channels C_l of local conditioning, or None.
        global_channels: Channels C_g of global conditioning, or None.
        last: Drop the residual output.
    """

    def __init__(
        self,
        residual_channels: int,
        gate_channels: int,
        skip_channels: int,
        *,
        kernel_size: int = 2,
        dilation: int = 1,
        local_channels: int | None = None,
        global_channels: int | None = None,
        last: bool = False,
    ) -> None:
        super().__init__()
        if gate_channels % 2:
            raise ValueError(
                f"gate_channels must be even (filter and gate halves), got {gate_channels}"
            )
        self.skip_channels, self.last = skip_channels, last
        self.conv = CausalConv1d(residual_channels, gate_channels, kernel_size, dilation=dilation)
        self.local = (
            nn.Conv1d(local_channels, gate_channels, 1, bias=False) if local_channels else None
        )
        self.glob = (
            nn.Linear(global_channels, gate_channels, bias=False) if global_channels else None
        )
        out_channels = skip_channels + (0 if last else residual_channels)
        self.out = nn.Conv1d(gate_channels // 2, out_channels, 1)

    def forward(
        self, x: Tensor, local: Tensor | None = None, glob: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x (B, R, T), local (B, C_l, T), glob (B, C_g) -> (next x (B, R, T), skip (B, S, T)).

        A ``last`` layer returns x unchanged as the next x.
        """
        a = self.conv(x)  # (B, G, T)
        if self.local is not None:
            a = a + self.local(local)
        if self.glob is not None:
            a = a + self.glob(glob).unsqueeze(-1)
        f, g = a.chunk(2, dim=1)
        out = self.out(torch.tanh(f) * torch.sigmoid(g))  # (B, S [+ R], T)
        skip = out[:, : self.skip_channels]
        if self.last:
            return x, skip
        return (x + out[:, self.skip_channels :]) * SQRT_HALF, skip

    @torch.no_grad()
    def init_state(
        self, batch: int, *, glob: Tensor | None = None, device: torch.device | None = None
    ) -> GatedLayerState:
        """Fresh step state; the global term ``V h`` (constant in time) is folded into the conv
        bias, so it costs nothing per step.

        Args:
            batch: Sequences B.
            glob: Global conditioning (B, C_g) iff the layer has it.
            device: Defaults to the weights' device.
        """
        conv = self.conv.init_state(batch, device=device)
        if self.glob is not None:
            conv.bias = (conv.bias + self.glob(glob.to(conv.taps.device))).contiguous()  # (B, G)
        # (S [+ R], G / 2, 1) -> (G / 2, S [+ R]): step outputs are plain addmm's, no transposes.
        weight = self.out.weight[:, :, 0].t().to(conv.taps).contiguous()
        bias = self.out.bias.to(conv.taps)
        s = self.skip_channels
        if self.last:
            return GatedLayerState(conv, weight, bias, None, None)
        res_weight, res_bias = weight[:, s:].contiguous(), bias[s:].contiguous()
        return GatedLayerState(conv, weight[:, :s].contiguous(), bias[:s], res_weight, res_bias)

    def step(
        self, x: Tensor, state: GatedLayerState, t: int, local_gate: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One time step: x (B, R) at time t -> (next x (B, R), skip (B, S)).

        Args:
            x: Residual input at time t, (B, R).
            state: From :meth:`init_state`; updated in place.
            t: Time index (0 for the first sample).
            local_gate: The local term ``V h_t`` already projected, (B, G); a caller holding many
                layers projects them all in one matmul. Required iff the layer has local
                conditioning.
        """
        a = self.conv.step(x, state.conv, t)  # (B, G)
        if local_gate is not None:
            a += local_gate
        half = a.shape[1] // 2
        z = torch.tanh(a[:, :half]).mul_(torch.sigmoid(a[:, half:]))  # (B, G / 2)
        skip = torch.addmm(state.skip_bias, z, state.skip_weight)  # (B, S)
        if self.last:
            return x, skip
        # In place on the fresh addmm output: fewer allocations in the sampling loop.
        return torch.addmm(state.res_bias, z, state.res_weight).add_(x).mul_(SQRT_HALF), skip
