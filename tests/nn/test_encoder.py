"""Dimension-generic convs, blocks, and the VQ-VAE encoder/decoder."""

import pytest
import torch
from torch import nn

from vqkit.nn import (
    Decoder,
    Downsample,
    Encoder,
    ResBlock,
    ResStack,
    Upsample,
    conv_nd,
    conv_transpose_nd,
    strides_per_stage,
    to_tuple,
    total_factor,
)

SIZES = {1: (24,), 2: (8, 12), 3: (4, 8, 6)}


@pytest.mark.parametrize(
    ("dims", "conv", "conv_t"),
    [
        (1, nn.Conv1d, nn.ConvTranspose1d),
        (2, nn.Conv2d, nn.ConvTranspose2d),
        (3, nn.Conv3d, nn.ConvTranspose3d),
    ],
)
def test_factories_pick_the_rank(dims, conv, conv_t):
    assert type(conv_nd(dims, 2, 3, 1)) is conv
    assert type(conv_transpose_nd(dims, 2, 3, 1)) is conv_t


@pytest.mark.parametrize("dims", [0, 4, True, "2"])
def test_bad_dims_is_a_clear_error(dims):
    with pytest.raises(ValueError, match="dims must be 1"):
        conv_nd(dims, 2, 3, 1)


def test_to_tuple_and_factor():
    assert to_tuple(2, 3) == (2, 2, 2)
    assert to_tuple([1, 2, 2], 3) == (1, 2, 2)
    assert strides_per_stage([(2, 2, 2), [1, 2, 2]], 3) == [(2, 2, 2), (1, 2, 2)]
    assert total_factor([(2, 2, 2), (1, 2, 2)]) == (2, 4, 4)
    with pytest.raises(ValueError, match="one int per spatial axis"):
        to_tuple((1, 2), 3)
    with pytest.raises(ValueError, match=">= 1"):
        to_tuple(0, 2)
    with pytest.raises(ValueError, match="one stride per downsampling stage"):
        strides_per_stage(2, 2)
    with pytest.raises(ValueError, match="at least one"):
        strides_per_stage([], 2)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2, 3, 4])
def test_down_and_up_sample_sizes_are_exact(dims, stride):
    # Per-axis strides differ on the first axis so a swapped axis would show.
    strides = (1,) + (stride,) * (dims - 1) if dims > 1 else (stride,)
    spatial = tuple(2 * s for s in strides)
    x = torch.randn(1, 2, *spatial)
    down = Downsample(dims, 2, 3, strides)
    y = down(x)
    assert y.shape == (1, 3, *(n // s for n, s in zip(spatial, strides)))
    assert Upsample(dims, 3, 2, strides)(y).shape == x.shape


def test_paper_downsample_is_kernel4_stride2_pad1():
    conv = Downsample(2, 3, 8, 2).conv
    assert conv.kernel_size == (4, 4) and conv.stride == (2, 2) and conv.padding == (1, 1)
    convt = Upsample(2, 8, 3, 2).conv
    assert convt.kernel_size == (4, 4) and convt.stride == (2, 2) and convt.padding == (1, 1)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_resblock_is_relu_conv3_relu_conv1_plus_input(dims):
    torch.manual_seed(0)
    block = ResBlock(dims, 4, 3)
    conv3, conv1 = block.block[1], block.block[3]
    assert conv3.kernel_size == (3,) * dims and conv1.kernel_size == (1,) * dims
    x = torch.randn(2, 4, *SIZES[dims])
    expected = x + conv1(torch.relu(conv3(torch.relu(x))))
    x_before = x.clone()
    torch.testing.assert_close(block(x), expected)
    assert torch.equal(x, x_before)  # the first ReLU must not modify the input in place


def test_resstack_ends_in_relu_and_chains_blocks():
    torch.manual_seed(0)
    stack = ResStack(2, 4, 3, num_blocks=2)
    x = torch.randn(2, 4, 5, 5)
    b0, b1 = stack.blocks
    torch.testing.assert_close(stack(x), torch.relu(b1(b0(x))))
    assert (stack(x) >= 0).all()


CASES = [
    (1, [2, 4], (32,)),
    (2, [2, 2], (8, 12)),
    (2, [(1, 2), 2], (6, 8)),
    (3, [(1, 2, 2), (2, 2, 2)], (4, 8, 12)),
    (3, [(2, 1, 3)], (4, 5, 6)),
]


@pytest.mark.parametrize(("dims", "strides", "spatial"), CASES)
def test_encoder_decoder_round_trip_shapes(dims, strides, spatial):
    kw = {"strides": strides, "res_hidden": 4, "num_res_blocks": 1}
    enc = Encoder(dims, 3, 8, 5, **kw)
    dec = Decoder(dims, 5, 8, 6, **kw)
    factor = total_factor(strides_per_stage(strides, dims))
    assert enc.factor == dec.factor == factor
    z = enc(torch.randn(2, 3, *spatial))
    assert z.shape == (2, 5, *(n // f for n, f in zip(spatial, factor)))
    assert dec(z).shape == (2, 6, *spatial)


def test_factor_of_named_configurations():
    kw = {"res_hidden": 4, "num_res_blocks": 1}
    assert Encoder(2, 3, 8, 4, strides=[2, 2], **kw).factor == (4, 4)
    assert Encoder(1, 1, 8, 4, strides=[2] * 6, **kw).factor == (64,)
    assert Encoder(3, 3, 8, 4, strides=[(1, 2, 2), (2, 2, 2)], **kw).factor == (2, 4, 4)


def test_sonnet_image_layout():
    # Sonnet's CIFAR example: 4x4/2 conv to hidden/2, ReLU, 4x4/2 conv to hidden, ReLU, 3x3 conv,
    # residual stack, 1x1 to D; decoder 3x3 conv, stack, 4x4/2 transposed to hidden/2, ReLU,
    # 4x4/2 transposed to the output channels.
    enc = Encoder(2, 3, 128, 64, strides=[2, 2], res_hidden=32, num_res_blocks=2)
    convs = [m for m in enc.net.modules() if isinstance(m, nn.Conv2d)]
    shapes = [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs]
    assert shapes[:3] == [
        (3, 64, (4, 4), (2, 2)),
        (64, 128, (4, 4), (2, 2)),
        (128, 128, (3, 3), (1, 1)),
    ]
    assert shapes[-1] == (128, 64, (1, 1), (1, 1))
    assert len(enc.net[-2].blocks) == 2
    dec = Decoder(2, 64, 128, 3, strides=[2, 2], res_hidden=32, num_res_blocks=2)
    ups = [m for m in dec.net.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(u.in_channels, u.out_channels) for u in ups] == [(128, 64), (64, 3)]
    assert isinstance(dec.net[0], nn.Conv2d) and dec.net[0].in_channels == 64


def test_decoder_applies_strides_in_reverse():
    dec = Decoder(3, 4, 8, 2, strides=[(1, 2, 2), (2, 1, 1)], res_hidden=4, num_res_blocks=0)
    ups = [m for m in dec.net.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert [u.stride for u in ups] == [(2, 1, 1), (1, 2, 2)]


def test_non_divisible_input_is_a_clear_error():
    enc = Encoder(2, 3, 8, 4, strides=[2, 2], res_hidden=4, num_res_blocks=1)
    with pytest.raises(ValueError) as err:
        enc(torch.randn(1, 3, 30, 32))
    msg = str(err.value)
    assert "(30, 32)" in msg and "(4, 4)" in msg and "crop or pad" in msg


def test_wrong_input_rank_or_channels_is_a_clear_error():
    enc = Encoder(2, 3, 8, 4, strides=[2], res_hidden=4, num_res_blocks=1)
    with pytest.raises(ValueError, match="in_channels=3"):
        enc(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="in_channels=3"):
        enc(torch.randn(1, 3, 8))
