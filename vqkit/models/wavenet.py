"""WaveNet: the audio VQ-VAE decoder and the prior over code sequences.

"WaveNet: A Generative Model for Raw Audio" (van den Oord et al. 2016,
https://arxiv.org/abs/1609.03499); cached generation after "Fast Wavenet Generation Algorithm"
(Paine et al. 2016, https://arxiv.org/abs/1611.09482).

Conventions:
    * Inputs are class ids (B, T) int64 -- 8-bit mu-law classes for audio, codes for the prior --
      embedded by a lookup table. Not float samples: generation feeds back exactly the class it
      drew, so the cached and the naive sampler see identical inputs.
    * ``forward(x)[:, :, t]`` depends on ``x[:, :t + 1]`` (``x_t`` included) and on local
      conditioning up to ``t``; it is the distribution of the *next* sample. The caller shifts:
      ``logits = model(model.shift_right(y))`` puts the prediction of ``y_t`` at ``t``, which is
      what :meth:`WaveNet.loss` and :class:`WaveNetDecoder` do. ``local[:, :, t]`` therefore
      conditions the prediction of ``y_t``.
    * Generation starts from the input ``first`` (default ``in_classes // 2``: mu-law silence) and
      returns ``y_0 .. y_{n-1}``, aligned with ``local[:, :, 0 .. n-1]``.

Example:
    >>> model = WaveNet(in_classes=256, out_classes=256, residual_channels=16, layers_per_stack=4)
    >>> x = torch.randint(0, 256, (2, 100))
    >>> model(x).shape
    torch.Size([2, 256, 100])
    >>> model.generate(50, batch=2, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 50])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vqkit.errors import check_int
from vqkit.models import wavenet_fused
from vqkit.models.registry import register
from vqkit.nn.causal import GatedLayerState, GatedResidualLayer

PROGRESS_EVERY = 256  # samples between updates of generate()'s progress bar (torch path)


def _check_ids(name: str, ids: object, shape: tuple[int, ...], high: int) -> None:
    """``ids`` must be an int64 tensor of ``shape`` (-1: any size) with values in [0, high)."""
    if not (
        isinstance(ids, Tensor)
        and ids.dtype == torch.long
        and ids.dim() == len(shape)
        and all(want in (-1, got) for want, got in zip(shape, ids.shape))
    ):
        got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, Tensor) else repr(ids)
        raise ValueError(f"{name} must be int64 ids of shape {shape} (-1: any), got {got}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= high):
        raise ValueError(
            f"{name} must lie in [0, {high}), got values in [{int(ids.min())}, {int(ids.max())}]"
        )


def check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    """Refuse a random generator on another device than the sampling (torch would fail deep
    inside the sampler)."""
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but sampling runs on {device}; "
            f"create it with torch.Generator(device={str(device)!r})"
        )


def sample_logits(
    logits: Tensor,
    temperature: float,
    generator: torch.Generator | None,
    uniforms: Tensor | None = None,
    *,
    log_prob: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """One class per row of ``logits`` (B, K) -> (B,) int64.

    Inverts the CDF of ``softmax(logits / temperature)`` at one uniform per row: ``uniforms``
    (B,) when given (the samplers draw all of them beforehand), else drawn from ``generator``;
    none when ``temperature == 0``, which takes the argmax. Two samplers that use the same
    uniforms draw the same classes. ``uniforms`` ``(B, n)`` draws n classes per row from one
    softmax (returned as ``(B, n)``): rows that several samples share are computed once.

    ``log_prob=True`` also returns the log-probability (B,) of each draw under that softmax
    (the argmax's under ``softmax(logits)``), read off the probabilities the draw was made from
    rather than from a second pass over the logits.
    """
    if temperature == 0:
        idx = logits.argmax(dim=-1)
        if not log_prob:
            return idx
        top = logits.float().gather(1, idx[:, None]).squeeze(1)
        return idx, top - logits.float().logsumexp(-1)
    scaled = logits.float() if temperature == 1 else logits.float() / temperature  # x / 1 == x
    probs = torch.softmax(scaled, dim=-1)
    cdf = probs.cumsum(dim=-1)  # (B, K)
    if uniforms is None:
        uniforms = torch.rand(logits.shape[0], generator=generator, device=logits.device)
    per_row = uniforms.dim() == 2
    u = uniforms if per_row else uniforms.reshape(-1, 1)
    # right=True: the first class whose CDF exceeds u * total, so zero-probability classes are
    # never picked; the clamp guards u * total rounding up to the last entry.
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=logits.shape[-1] - 1)
    out = idx if per_row else idx.squeeze(1)
    if not log_prob:
        return out
    # The clamp can land on a class whose probability underflowed to 0: the floor keeps it finite.
    picked = probs.gather(1, idx)
    picked = picked.clamp_(min=torch.finfo(picked.dtype).tiny).log_()
    return out, picked if per_row else picked.squeeze(1)


@dataclass
class WaveNetState:
    """Everything :meth:`WaveNet.step` needs; built once per generation by ``init_state``.

    Attributes:
        t: Time index of the next input.
        layers: Per layer: ring buffer, weights as matrices, speaker term folded into the bias.
        local_weight: All layers' local projections stacked, (C_l, layers * G), so a step projects
            the local features for every layer in one matmul; None without local conditioning.
        head: (b1, W1, b2, W2) of the ReLU-1x1-ReLU-1x1 head, weights as (in, out) matrices.
    """

    t: int
    layers: list[GatedLayerState]
    local_weight: Tensor | None
    head: tuple[Tensor, Tensor, Tensor, Tensor]


class WaveNet(nn.Module):
    """Autoregressive model over class sequences with optional local and global conditioning.

    Args:
        in_classes: Input classes (embedded); 256 for 8-bit mu-law, K for a prior over codes.
        out_classes: Logits per step; usually ``in_classes``.
        residual_channels: Channels R of the residual stream (and of the input embedding).
        skip_channels: Channels S of the skip connections and the head; default ``2 * R``.
        gate_channels: Channels G of the gate pre-activations (two halves: filter and gate);
            even; default ``2 * R``.
        kernel_size: Taps of each dilated conv, >= 2.
        layers_per_stack: Layers per stack with dilations ``1, 2, 4, .., 2 ** (n - 1)``.
        stacks: Repetitions of that dilation cycle.
        local_channels: Channels C_l of local conditioning already at sample rate,
            ``local`` (B, C_l, T); None for none.
        global_classes: Number of speakers (global conditioning by a learned embedding); None
            for none.
        global_channels: Width of the speaker embedding; default R.
        first: Input fed before the first sample (``shift_right`` and generation); default
            ``in_classes // 2``, mu-law silence for 256 classes.
    """

    def __init__(
        self,
        *,
        in_classes: int = 256,
        out_classes: int = 256,
        residual_channels: int = 64,
        skip_channels: int | None = None,
        gate_channels: int | None = None,
        kernel_size: int = 2,
        layers_per_stack: int = 10,
        stacks: int = 2,
        local_channels: int | None = None,
        global_classes: int | None = None,
        global_channels: int | None = None,
        first: int | None = None,
    ) -> None:
        super().__init__()
        skip_channels = 2 * residual_channels if skip_channels is None else skip_channels
        gate_channels = 2 * residual_channels if gate_channels is None else gate_channels
        if global_classes is not None and global_channels is None:
            global_channels = residual_channels
        first = in_classes // 2 if first is None else first
        for name, value, low in (
            ("in_classes", in_classes, 2),
            ("out_classes", out_classes, 2),
            ("residual_channels", residual_channels, 1),
            ("skip_channels", skip_channels, 1),
            ("gate_channels", gate_channels, 2),
            ("kernel_size", kernel_size, 2),
            ("layers_per_stack", layers_per_stack, 1),
            ("stacks", stacks, 1),
            ("local_channels", local_channels, 1),
            ("global_classes", global_classes, 1),
            ("global_channels", global_channels, 1),
        ):
            if value is not None or not name.startswith(("local", "global")):  # those are optional
                check_int(name, value, low)
        if gate_channels % 2:
            raise ValueError(
                f"gate_channels must be even (filter, gate halves), got {gate_channels}"
            )
        if not isinstance(first, int) or not 0 <= first < in_classes:
            raise ValueError(f"first must be an int in [0, {in_classes}), got {first!r}")
        self.in_classes, self.out_classes = in_classes, out_classes
        self.residual_channels, self.skip_channels = residual_channels, skip_channels
        self.gate_channels, self.kernel_size = gate_channels, kernel_size
        self.local_channels, self.global_classes = local_channels, global_classes
        self.first = first
        self.dilations = [2**i for i in range(layers_per_stack)] * stacks

        self.embed = nn.Embedding(in_classes, residual_channels)
        self.speaker_embed = (
            nn.Embedding(global_classes, global_channels) if global_classes else None
        )
        self.layers = nn.ModuleList(
            GatedResidualLayer(
                residual_channels,
                gate_channels,
                skip_channels,
                kernel_size=kernel_size,
                dilation=d,
                local_channels=local_channels,
                global_channels=global_channels if global_classes else None,
                last=i == len(self.dilations) - 1,
            )
            for i, d in enumerate(self.dilations)
        )
        self.skip_scale = math.sqrt(1.0 / len(self.layers))  # keeps the skip sum's scale ~ 1
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(skip_channels, skip_channels, 1),
            nn.ReLU(),
            nn.Conv1d(skip_channels, out_classes, 1),
        )

    @property
    def receptive_field(self) -> int:
        """Inputs each output sees, the current one included: ``(k - 1) * sum(dilations) + 1``."""
        return (self.kernel_size - 1) * sum(self.dilations) + 1

    # ---------------------------------------------------------------- validation

    def _check_conditioning(
        self, local: Tensor | None, speaker: Tensor | None, batch: int, length: int
    ) -> None:
        if (local is None) != (self.local_channels is None):
            raise ValueError(
                f"local conditioning (B, C_l, T) is needed iff the model has local_channels "
                f"(here {self.local_channels}), got {None if local is None else tuple(local.shape)}"
            )
        if local is not None and tuple(local.shape) != (batch, self.local_channels, length):
            expected = (batch, self.local_channels, length)
            raise ValueError(f"local must have shape {expected}, got {tuple(local.shape)}")
        if (speaker is None) != (self.global_classes is None):
            raise ValueError(
                f"pass speaker ids (B,) iff the model has speakers; the model has "
                f"global_classes={self.global_classes}, got speaker={speaker}"
            )
        if speaker is not None:
            _check_ids("speaker", speaker, (batch,), self.global_classes)

    # ---------------------------------------------------------------- teacher forcing

    def forward_embeddings(
        self, emb: Tensor, local: Tensor | None = None, speaker: Tensor | None = None
    ) -> Tensor:
        """Logits (B, out_classes, T) from embedded inputs emb (B, R, T); lets tests differentiate
        with respect to the input."""
        h = emb
        glob = None if self.speaker_embed is None else self.speaker_embed(speaker)  # (B, C_g)
        skips = 0
        for layer in self.layers:
            h, skip = layer(h, local, glob)
            skips = skips + skip
        return self.head(skips * self.skip_scale)

    def forward(
        self, x: Tensor, local: Tensor | None = None, speaker: Tensor | None = None
    ) -> Tensor:
        """Teacher-forced logits; output t sees inputs <= t (see the module docstring).

        Args:
            x: Input class ids (B, T) int64.
            local: Conditioning at sample rate (B, C_l, T), iff ``local_channels`` is set.
            speaker: Speaker ids (B,) int64, iff ``global_classes`` is set.

        Returns:
            Logits (B, out_classes, T) for the sample after each input.
        """
        _check_ids("x", x, (-1, -1), self.in_classes)
        self._check_conditioning(local, speaker, *x.shape)
        return self.forward_embeddings(self.embed(x).transpose(1, 2), local, speaker)

    def shift_right(self, y: Tensor) -> Tensor:
        """Targets (B, T) -> inputs (B, T): ``[first, y_0, .., y_{T-2}]``."""
        return F.pad(y[:, :-1], (1, 0), value=self.first)

    def loss(self, y: Tensor, local: Tensor | None = None, speaker: Tensor | None = None) -> Tensor:
        """Mean cross-entropy (nats) of targets y (B, T) given their own past (scalar)."""
        return F.cross_entropy(self(self.shift_right(y), local, speaker), y)

    def nll_bits(
        self, y: Tensor, local: Tensor | None = None, speaker: Tensor | None = None
    ) -> Tensor:
        """Mean negative log-likelihood in bits per step for each example, (B,)."""
        nll = F.cross_entropy(self(self.shift_right(y), local, speaker), y, reduction="none")
        return nll.mean(1) / math.log(2)

    # ---------------------------------------------------------------- cached steps

    @torch.no_grad()
    def init_state(
        self, batch: int, *, speaker: Tensor | None = None, device: torch.device | None = None
    ) -> WaveNetState:
        """Zero history for ``batch`` sequences, with the weights laid out as step matrices.

        Args:
            batch: Sequences B generated together.
            speaker: Speaker ids (B,) iff the model has speakers.
            device: Defaults to the model's device.
        """
        if (speaker is None) != (self.speaker_embed is None):
            raise ValueError(
                f"pass speaker ids ({batch},) iff the model has speakers, got {speaker}"
            )
        device = self.embed.weight.device if device is None else device
        glob = None if self.speaker_embed is None else self.speaker_embed(speaker.to(device))
        layers = [layer.init_state(batch, glob=glob, device=device) for layer in self.layers]
        local_weight = None
        if self.local_channels is not None:
            local_weight = torch.cat([layer.local.weight[:, :, 0] for layer in self.layers])
            local_weight = local_weight.t().contiguous()  # (C_l, layers * G)
        w1, w2 = self.head[1], self.head[3]  # as (in, out) matrices for addmm
        head = (
            w1.bias,
            w1.weight[:, :, 0].t().contiguous(),
            w2.bias,
            w2.weight[:, :, 0].t().contiguous(),
        )
        return WaveNetState(0, layers, local_weight, head)

    def step(self, x: Tensor, state: WaveNetState, local: Tensor | None = None) -> Tensor:
        """Logits for the sample after input x; advances ``state`` by one step.

        O(layers) work per call and no validation (the samplers call it in a loop); use it under
        ``torch.inference_mode()``.

        Args:
            x: Input class ids at time ``state.t``, (B,) int64.
            state: From :meth:`init_state`.
            local: Local conditioning at time ``state.t``, (B, C_l), iff the model has it.

        Returns:
            Logits (B, out_classes); equal to ``forward(inputs)[:, :, t]`` up to float rounding.
        """
        t, g = state.t, self.gate_channels
        h = F.embedding(x, self.embed.weight)  # (B, R)
        local_gates = None if local is None else local @ state.local_weight  # (B, L * G)
        skips = None
        for i, layer in enumerate(self.layers):
            local_gate = None if local_gates is None else local_gates[:, i * g : (i + 1) * g]
            h, skip = layer.step(h, state.layers[i], t, local_gate)
            skips = skip if skips is None else skips.add_(skip)  # skip is fresh: accumulate in it
        state.t = t + 1
        b1, w1, b2, w2 = state.head
        hidden = torch.addmm(b1, skips.mul_(self.skip_scale).relu_(), w1).relu_()
        return torch.addmm(b2, hidden, w2)

    # ---------------------------------------------------------------- generation

    def _prepare(self, n_samples, local, speaker, batch, temperature, generator, first):
        """Validate generation arguments; returns (batch, local, speaker, first (B,))."""
        check_int("n_samples", n_samples)
        if not isinstance(temperature, int | float) or not 0 <= temperature < math.inf:
            raise ValueError(
                f"temperature must be a finite number >= 0 (0: argmax), got {temperature!r}"
            )
        device = self.embed.weight.device
        check_generator(generator, device)
        sizes = {}
        if batch is not None:
            check_int("batch", batch)
            sizes["batch"] = batch
        for name, value in (("local", local), ("speaker", speaker), ("first", first)):
            if isinstance(value, Tensor) and value.dim() > 0:
                sizes[name] = int(value.shape[0])
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch sizes disagree: {sizes}; give tensors with the same first dim")
        batch = next(iter(sizes.values()), 1)
        if isinstance(speaker, int):
            speaker = torch.full((batch,), speaker, dtype=torch.long)
        first = self.first if first is None else first
        if isinstance(first, int):
            first = torch.full((batch,), first, dtype=torch.long)
        _check_ids("first", first, (batch,), self.in_classes)
        first = first.to(device)
        local = None if local is None else local.to(device=device, dtype=self.embed.weight.dtype)
        speaker = None if not isinstance(speaker, Tensor) else speaker.to(device)
        self._check_conditioning(local, speaker, batch, n_samples)
        return batch, local, speaker, first

    @torch.inference_mode()
    def generate(
        self,
        n_samples: int,
        *,
        local: Tensor | None = None,
        speaker: Tensor | int | None = None,
        batch: int | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        first: Tensor | int | None = None,
        cached: bool = True,
        fused: bool | None = None,
        return_logits: bool = False,
        progress: str | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Sample ``n_samples`` classes, one at a time.

        Args:
            n_samples: Samples n to draw.
            local: Conditioning (B, C_l, n) iff the model has local conditioning; ``local[..., t]``
                conditions sample t.
            speaker: Speaker ids (B,) or one int, iff the model has speakers.
            batch: Sequences B; inferred from the tensors given, else 1.
            temperature: Divides the logits; 0 takes the argmax.
            generator: Random generator on the model's device, for reproducible samples.
            first: Input before sample 0, int or (B,); default ``self.first``.
            cached: Step every layer once per sample from its ring buffer (fast); False runs a
                full forward pass over the last ``receptive_field`` inputs per sample, which gives
                the same last output as the whole prefix (the slow reference). Both draw the same
                samples for the same generator state.
            fused: With ``cached``, run the whole loop in one compiled CPU kernel
                (:mod:`vqkit.models.wavenet_fused`, several times faster); None picks it for a
                float32 model on the CPU when numba imports, False keeps the torch step path
                (the reference, and the one used on CUDA). All draw the same samples from the same
                uniforms.
            return_logits: Also return the logits each sample was drawn from.
            progress: Show a progress bar over the samples with this title (None: none); it
                changes nothing of what is drawn.

        Returns:
            Class ids (B, n) int64, and with ``return_logits`` the logits (B, out_classes, n),
            which equal ``forward(shift_right(samples))`` up to float rounding.
        """
        batch, local, speaker, first = self._prepare(
            n_samples, local, speaker, batch, temperature, generator, first
        )
        # Every sampler draws its uniforms up front, in this one call, so all of them (naive,
        # cached, fused) invert the CDF at the same numbers for the same generator state.
        uniforms = None
        if temperature > 0:
            uniforms = torch.rand(n_samples, batch, generator=generator, device=first.device)
        if fused and not cached:
            raise ValueError("fused=True runs the cached sampler; it needs cached=True")
        bar = tqdm(
            total=n_samples, desc=progress, unit="sample", disable=progress is None, leave=False
        )
        if cached and wavenet_fused.usable(self, fused):
            with bar:
                samples, all_logits = wavenet_fused.generate(
                    self, n_samples, local, speaker, first, temperature, uniforms, return_logits,
                    bar=None if progress is None else bar,
                )  # fmt: skip
            return (samples, all_logits) if return_logits else samples
        if cached:
            state = self.init_state(batch, speaker=speaker)
            local_steps = (
                None if local is None else local.permute(2, 0, 1).contiguous()
            )  # (n, B, C_l)
        inputs = torch.empty(batch, n_samples + 1, dtype=torch.long, device=first.device)
        inputs[:, 0] = first  # inputs[:, t + 1] is sample t
        all_logits = None
        if return_logits:
            all_logits = first.new_empty(
                batch, self.out_classes, n_samples, dtype=self.embed.weight.dtype
            )
        for t in range(n_samples):
            if cached:
                logits = self.step(inputs[:, t], state, None if local is None else local_steps[t])
            else:
                window = slice(max(0, t + 1 - self.receptive_field), t + 1)
                local_window = None if local is None else local[:, :, window]
                logits = self(inputs[:, window], local_window, speaker)[:, :, -1]
            u = None if uniforms is None else uniforms[t]
            inputs[:, t + 1] = sample_logits(logits, temperature, generator, u)
            if all_logits is not None:
                all_logits[:, :, t] = logits
            if (t + 1) % PROGRESS_EVERY == 0 or t + 1 == n_samples:
                bar.update(t + 1 - bar.n)
        bar.close()
        samples = inputs[:, 1:].contiguous()
        return (samples, all_logits) if return_logits else samples

    def generate_naive(self, n_samples: int, **kwargs) -> Tensor:
        """:meth:`generate` with ``cached=False``: the reference sampler, same arguments."""
        return self.generate(n_samples, cached=False, **kwargs)


@register("wavenet_prior")
def wavenet_prior(
    *,
    num_codes: int,
    num_speakers: int | None = None,
    residual_channels: int = 64,
    skip_channels: int | None = None,
    gate_channels: int | None = None,
    speaker_channels: int | None = None,
    kernel_size: int = 2,
    layers_per_stack: int = 6,
    stacks: int = 2,
) -> WaveNet:
    """WaveNet prior over code sequences (B, T') in [0, num_codes), optionally per speaker.

    Train with ``prior.loss(codes, speaker=speaker)``; sample with
    ``prior.generate(T', speaker=speaker)``.

    Example:
        >>> prior = wavenet_prior(num_codes=512, residual_channels=32, layers_per_stack=6)
        >>> prior.generate(20, batch=2).shape
        torch.Size([2, 20])
    """
    return WaveNet(
        in_classes=num_codes,
        out_classes=num_codes,
        residual_channels=residual_channels,
        skip_channels=skip_channels,
        gate_channels=gate_channels,
        kernel_size=kernel_size,
        layers_per_stack=layers_per_stack,
        stacks=stacks,
        global_classes=num_speakers,
        global_channels=speaker_channels,
    )
