"""k-max pooling, masked max pooling and length/mask helpers."""

import pytest
import torch
import torch.nn.functional as F

from vdcnn_res.model.layers import (
    KMaxDownsample,
    KMaxPool1d,
    MaskedBatchNorm1d,
    MaskedMaxPool1d,
    halve_lengths,
    kmax_pool1d,
    padding_mask,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def reference_kmax(x: torch.Tensor, k: int) -> torch.Tensor:
    """top-k values, re-ordered by position (valid only when there are no ties)."""
    idx = torch.topk(x, k, dim=-1).indices.sort(dim=-1).values
    return x.gather(-1, idx)


def test_padding_mask():
    pad = padding_mask(torch.tensor([0, 2, 5]), 5)
    assert pad.shape == (3, 1, 5) and pad.dtype == torch.bool
    assert pad[:, 0].tolist() == [
        [True] * 5,
        [False, False, True, True, True],
        [False] * 5,
    ]


@pytest.mark.parametrize("n", list(range(1, 40)))
def test_halve_lengths_matches_strided_conv_and_maxpool(n):
    x = torch.randn(1, 1, n)
    conv_len = F.conv1d(x, torch.ones(1, 1, 3), stride=2, padding=1).shape[-1]
    pool_len = F.max_pool1d(x, 3, stride=2, padding=1).shape[-1]
    assert int(halve_lengths(torch.tensor([n]))) == conv_len == pool_len == -(-n // 2)


@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_kmax_keeps_topk_in_original_order(k):
    torch.manual_seed(k)
    x = torch.randn(3, 5, 20)  # continuous values: no ties
    out = kmax_pool1d(x, k)
    assert out.shape == (3, 5, k)
    torch.testing.assert_close(out, reference_kmax(x, k), rtol=0, atol=0)


def test_kmax_is_not_adaptive_max_pool():
    x = torch.tensor([[[9.0, 8.0, 7.0, 0.0, 0.0, 0.0, 1.0, 0.0]]])
    assert kmax_pool1d(x, 3).tolist() == [[[9.0, 8.0, 7.0]]]
    assert F.adaptive_max_pool1d(x, 3).tolist() != [[[9.0, 8.0, 7.0]]]


def test_kmax_breaks_ties_by_earliest_position():
    x = torch.tensor([[[0.0, 2.0, 0.0, 1.0, 0.0, 1.0, 0.0]]], requires_grad=True)
    # Best first: 2 (pos 1), 1 (pos 3), 1 (pos 5), then the earliest 0 (pos 0).
    out = kmax_pool1d(x, 4)
    assert out.tolist() == [[[0.0, 2.0, 1.0, 1.0]]]
    out.sum().backward()  # the gradient shows which positions were taken
    assert x.grad[0, 0].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    z = torch.zeros(2, 1, 10, requires_grad=True)
    kmax_pool1d(z, 3).sum().backward()
    assert z.grad[:, 0].tolist() == [[1.0, 1.0, 1.0] + [0.0] * 7] * 2


def test_kmax_never_selects_padding():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 12)
    lengths = torch.tensor([12, 7])
    x_padded = x.clone()
    x_padded[1, :, 7:] = 100.0  # would win if padding were not masked
    out = kmax_pool1d(x_padded, 5, padding_mask(lengths, 12))
    torch.testing.assert_close(out[0], reference_kmax(x[:1], 5)[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1], reference_kmax(x[1:, :, :7], 5)[0], rtol=0, atol=0)


def test_kmax_per_text_k_and_out_len():
    torch.manual_seed(1)
    x = torch.randn(3, 2, 10)
    k = torch.tensor([5, 2, 1])
    pad = padding_mask(torch.tensor([10, 4, 1]), 10)
    out = kmax_pool1d(x, k, pad, out_len=6)
    assert out.shape == (3, 2, 6)
    torch.testing.assert_close(out[0, :, :5], reference_kmax(x[:1], 5)[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1, :, :2], reference_kmax(x[1:2, :, :4], 2)[0], rtol=0, atol=0)
    torch.testing.assert_close(out[2, :, :1], x[2, :, :1], rtol=0, atol=0)
    assert (out[0, :, 5:] == 0).all() and (out[1, :, 2:] == 0).all() and (out[2, :, 1:] == 0).all()


def test_kmax_with_fewer_valid_positions_than_k_keeps_them_all():
    x = torch.tensor([[[3.0, -1.0, 2.0, 50.0]]])
    out = kmax_pool1d(x, 3, padding_mask(torch.tensor([2]), 4))
    assert out.tolist() == [[[3.0, -1.0, 0.0]]]


def test_kmax_out_len_longer_than_input_raises():
    with pytest.raises(ValueError, match="out_len <= length"):
        kmax_pool1d(torch.randn(1, 1, 4), 5)


def test_kmax_gradient_reaches_selected_positions_only():
    x = torch.tensor([[[1.0, 5.0, 3.0, 4.0, 2.0]]], requires_grad=True)
    KMaxPool1d(2)(x).sum().backward()
    assert x.grad.tolist() == [[[0.0, 1.0, 0.0, 1.0, 0.0]]]


@pytest.mark.parametrize("length", [5, 6, 9])
def test_masked_max_pool_equals_max_pool_on_the_text_alone(length):
    torch.manual_seed(length)
    L = 13
    x = -torch.rand(2, 3, L) - 1.0  # all negative: zero-filled padding would win
    x[:, :, length:] = 0.0
    lengths = torch.tensor([length, L])
    lengths_out = halve_lengths(lengths)
    out = MaskedMaxPool1d()(x, padding_mask(lengths, L), lengths_out, padding_mask(lengths_out, 7))
    alone = F.max_pool1d(x[:1, :, :length], 3, stride=2, padding=1)
    n = alone.shape[-1]
    torch.testing.assert_close(out[:1, :, :n], alone, rtol=0, atol=0)
    assert (out[0, :, n:] == 0).all()
    torch.testing.assert_close(out[1:], F.max_pool1d(x[1:], 3, stride=2, padding=1), rtol=0, atol=0)


def test_kmax_downsample_halves_each_texts_own_length():
    torch.manual_seed(3)
    L = 11
    x = torch.randn(3, 4, L)
    lengths = torch.tensor([11, 6, 3])
    pad = padding_mask(lengths, L)
    x = x.masked_fill(pad, 0.0)
    lengths_out = halve_lengths(lengths)  # 6, 3, 2
    out = KMaxDownsample()(x, pad, lengths_out, padding_mask(lengths_out, 6))
    assert out.shape == (3, 4, 6)
    for b, (n, k) in enumerate(zip(lengths.tolist(), lengths_out.tolist())):
        torch.testing.assert_close(out[b, :, :k], reference_kmax(x[b : b + 1, :, :n], k)[0], rtol=0, atol=0)
        assert (out[b, :, k:] == 0).all()


def test_pooling_in_bfloat16():
    # Distinct integers are exact in bfloat16: no ties, so topk is a valid reference.
    x = torch.stack([torch.randperm(48).view(3, 16) for _ in range(2)]).to(torch.bfloat16)
    lengths = torch.tensor([16, 9])
    pad = padding_mask(lengths, 16)
    lengths_out = halve_lengths(lengths)
    pad_out = padding_mask(lengths_out, 8)
    for layer in (MaskedMaxPool1d(), KMaxDownsample()):
        y = layer(x, pad, lengths_out, pad_out)
        assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    y = kmax_pool1d(x, 4, pad)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y[:1], reference_kmax(x[:1], 4), rtol=0, atol=0)


# --------------------------------------------------------------------------- masked BatchNorm


def valid_columns(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(B, C, L) -> (C, sum of lengths): every valid position of every row, side by side."""
    return torch.cat([x[i, :, :n] for i, n in enumerate(lengths)], dim=1)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_masked_batchnorm_is_batchnorm_over_valid_positions(momentum):
    torch.manual_seed(0)
    lengths = [11, 4, 7]
    x = torch.randn(3, 5, 11) * 3 + 2
    x[1, :, 4:] = 50.0  # padding content must not matter
    keep = ~padding_mask(torch.tensor(lengths), 11)
    masked = MaskedBatchNorm1d(5, momentum=momentum)
    plain = torch.nn.BatchNorm1d(5, momentum=momentum)
    with torch.no_grad():
        for bn in (masked, plain):
            bn.weight.copy_(torch.linspace(0.5, 2.0, 5))
            bn.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    xm = x.clone().requires_grad_()
    xr = valid_columns(x, lengths)[None].clone().requires_grad_()  # (1, C, N): plain BN sees only valid positions
    for _ in range(2):  # running statistics after two steps, plain momentum and cumulative average
        out = masked(xm, keep)
        ref = plain(xr)
    torch.testing.assert_close(valid_columns(out, lengths), ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    assert int(masked.num_batches_tracked) == 2
    # Gradients: the same loss on valid positions gives the same input and affine gradients.
    w = torch.randn(5, sum(lengths))
    (valid_columns(out, lengths) * w).sum().backward()
    (ref[0] * w).sum().backward()
    torch.testing.assert_close(valid_columns(xm.grad, lengths), xr.grad[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(masked.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-5)
    assert xm.grad[1, :, 4:].abs().max() == 0  # padding gets no gradient through the statistics


def test_masked_batchnorm_without_padding_in_eval_or_unmasked_is_torchs():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9)
    full = torch.ones(2, 1, 9, dtype=torch.bool)
    some = ~padding_mask(torch.tensor([9, 3]), 9)
    for keep, masked in ((full, True), (some, False), (None, True)):
        ours, torchs = MaskedBatchNorm1d(4, masked=masked), torch.nn.BatchNorm1d(4)
        torch.testing.assert_close(ours(x, keep), torchs(x))
        torch.testing.assert_close(ours.running_var, torchs.running_var)
        ours.eval(), torchs.eval()
        torch.testing.assert_close(ours(x, some), torchs(x))  # eval: running statistics, no mask needed
    assert "masked=False" in repr(MaskedBatchNorm1d(4, masked=False))
    assert MaskedBatchNorm1d(4).state_dict().keys() == torch.nn.BatchNorm1d(4).state_dict().keys()


def test_masked_batchnorm_statistics_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    lengths = [16, 5]
    x = (torch.randn(2, 3, 16) + 100.0).bfloat16()  # a large mean: bf16 moments would lose the variance
    keep = ~padding_mask(torch.tensor(lengths), 16)
    bn = MaskedBatchNorm1d(3, momentum=1.0)
    out = bn(x, keep)
    assert out.dtype == torch.bfloat16
    expected = valid_columns(x.float(), lengths).var(dim=1)  # unbiased, as running_var keeps it
    torch.testing.assert_close(bn.running_var, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("options", [dict(affine=False), dict(track_running_stats=False)])
def test_masked_batchnorm_without_affine_or_running_statistics(options):
    torch.manual_seed(0)
    lengths = [9, 3]
    x = torch.randn(2, 4, 9, dtype=torch.float64) * 2 - 1
    keep = ~padding_mask(torch.tensor(lengths), 9)
    masked, plain = MaskedBatchNorm1d(4, **options).double(), torch.nn.BatchNorm1d(4, **options).double()
    xm = x.clone().requires_grad_()
    xr = valid_columns(x, lengths)[None].clone().requires_grad_()
    out, ref = masked(xm, keep), plain(xr)
    torch.testing.assert_close(valid_columns(out, lengths), ref[0])
    w = torch.randn(4, sum(lengths), dtype=torch.float64)
    (valid_columns(out, lengths) * w).sum().backward()
    (ref[0] * w).sum().backward()
    torch.testing.assert_close(valid_columns(xm.grad, lengths), xr.grad[0])
    if masked.running_var is not None:
        torch.testing.assert_close(masked.running_var, plain.running_var)


def test_masked_batchnorm_keeps_the_layout_and_rejects_a_single_value():
    x = torch.randn(2, 3, 8)
    keep = ~padding_mask(torch.tensor([8, 2]), 8)
    out = MaskedBatchNorm1d(3)(x, keep)
    assert out.shape == x.shape and out.is_contiguous()  # the next convolution reads it without a copy
    with pytest.raises(ValueError, match="more than 1 value"):  # torch's own message, as for BatchNorm1d
        MaskedBatchNorm1d(3)(x[:1], ~padding_mask(torch.tensor([1]), 8))
