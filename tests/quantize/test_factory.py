"""build_quantizer: every kind, FSQ's levels, and clear errors."""

from __future__ import annotations

import pytest
import torch

from vqkit.quantize import (
    FSQ,
    KINDS,
    LFQ,
    ResidualVQ,
    SimVQ,
    VectorQuantizer,
    build_quantizer,
)


@pytest.mark.parametrize(
    ("kind", "kwargs", "cls", "num_codes"),
    [
        ("vq", dict(num_codes=32, ema=True, rotation=True), VectorQuantizer, 32),
        ("fsq", dict(levels=[8, 5, 5, 5]), FSQ, 1000),
        ("lfq", dict(num_codes=64, entropy_weight=0.2), LFQ, 64),
        ("simvq", dict(num_codes=32, rotation=True, code_dim=4), SimVQ, 32),
        ("residual", dict(num_codes=32, levels=3, kmeans_init=True), ResidualVQ, 32),
    ],
)
def test_every_kind_builds_and_quantizes(kind, kwargs, cls, num_codes):
    q = build_quantizer(kind, dim=8, **kwargs)
    assert type(q) is cls and q.num_codes == num_codes and q.dim == 8
    out = q(torch.randn(2, 8, 4, 3))
    assert out.quantized.shape == (2, 8, 4, 3)
    assert 0 < out.usage <= 1 and out.perplexity >= 1


def test_kinds_are_the_five_quantizers():
    assert KINDS == ("vq", "fsq", "lfq", "simvq", "residual")


@pytest.mark.parametrize(
    ("num_codes", "levels"),
    [
        (2**8, [8, 6, 5]),
        (2**10, [8, 5, 5, 5]),
        (2**12, [7, 5, 5, 5, 5]),
        (2**14, [8, 8, 8, 6, 5]),
        (2**16, [8, 8, 8, 5, 5, 5]),
    ],
)
def test_fsq_levels_from_num_codes_follow_the_paper_table(num_codes, levels):
    fsq = build_quantizer("fsq", dim=16, num_codes=num_codes)
    assert fsq.levels == levels
    assert fsq.num_codes == torch.tensor(levels).prod().item()  # derived from the levels
    assert isinstance(fsq.project_in, torch.nn.Linear)  # 16 -> len(levels)


def test_fsq_without_projection_when_dim_equals_the_number_of_levels():
    fsq = build_quantizer("fsq", dim=4, levels=[8, 5, 5, 5])
    assert isinstance(fsq.project_in, torch.nn.Identity)
    lfq = build_quantizer("lfq", dim=4, num_codes=16)
    assert isinstance(lfq.project_in, torch.nn.Identity)
    assert isinstance(build_quantizer("lfq", dim=8, num_codes=16).project_in, torch.nn.Linear)


def test_fsq_size_errors():
    with pytest.raises(ValueError, match="recommended levels only for num_codes"):
        build_quantizer("fsq", dim=8, num_codes=1000)
    with pytest.raises(ValueError, match="give 1000 codes, not num_codes=1024"):
        build_quantizer("fsq", dim=8, num_codes=1024, levels=[8, 5, 5, 5])
    assert build_quantizer("fsq", dim=8, num_codes=1000, levels=[8, 5, 5, 5]).num_codes == 1000
    with pytest.raises(ValueError, match="needs levels"):
        build_quantizer("fsq", dim=8)
    with pytest.raises(ValueError, match="list of ints"):
        build_quantizer("fsq", dim=8, levels=5)


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(
        ValueError, match="unknown quantizer kind 'pq'.*vq, fsq, lfq, simvq, residual"
    ):
        build_quantizer("pq", dim=8, num_codes=16)


@pytest.mark.parametrize(
    ("kind", "kwargs", "bad"),
    [
        ("fsq", dict(levels=[5, 5], ema=True), "ema"),
        ("lfq", dict(num_codes=16, code_dim=4), "code_dim"),
        ("simvq", dict(num_codes=16, kmeans_init=True), "kmeans_init"),
        ("vq", dict(num_codes=16, entropy_weight=0.1), "entropy_weight"),
        ("residual", dict(num_codes=16, levels=2, heads=2), "heads"),
        ("vq", dict(num_codes=16, levels=2), "levels"),
    ],
)
def test_arguments_that_do_not_apply_name_the_argument_and_the_kind(kind, kwargs, bad):
    with pytest.raises(ValueError, match=f"{bad} do not apply to quantizer kind '{kind}'"):
        build_quantizer(kind, dim=8, **kwargs)


def test_missing_sizes():
    with pytest.raises(ValueError, match="'vq' needs num_codes"):
        build_quantizer("vq", dim=8)
    with pytest.raises(ValueError, match="'residual' needs levels"):
        build_quantizer("residual", dim=8, num_codes=16)
    with pytest.raises(ValueError, match="power of 2"):
        build_quantizer("lfq", dim=8, num_codes=100)
