"""Masking helpers and pooling layers that respect each text's valid length.

Convention: `pad` masks are bool tensors of shape (B, 1, L), True at padding positions,
so `x.mul(~pad)` zeros the padding of a (B, C, L) activation (a multiply: several times
faster than `masked_fill` with a broadcast mask on CPU, docs/performance.md). Texts are
right-padded, so a text's valid positions are 0 .. length - 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "halve_lengths",
    "padding_mask",
    "kmax_pool1d",
    "KMaxPool1d",
    "MaskedMaxPool1d",
    "KMaxDownsample",
    "MaskedAvgPool1d",
    "MaskedBatchNorm1d",
    "masked_batch_norm",
]


def padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Bool mask (B, 1, max_len), True where position >= the text's length."""
    positions = torch.arange(max_len, device=lengths.device)
    return (positions[None, :] >= lengths[:, None]).unsqueeze(1)  # (B, 1, L)


def halve_lengths(lengths: Tensor) -> Tensor:
    """Valid length after a halving step: ceil(n / 2).

    Holds for conv(k=3, stride=2, padding=1), max_pool(3, stride=2, padding=1) and the
    k-max downsampling alike: output j looks at inputs 2j-1 .. 2j+1, so it is inside the
    text exactly when 2j <= n - 1.
    """
    return torch.div(lengths + 1, 2, rounding_mode="floor")


def _lowest(dtype: torch.dtype) -> float:
    """Smallest finite value of `dtype`: padding filled with it never wins a max."""
    return torch.finfo(dtype).min


def kmax_pool1d(
    x: Tensor,
    k: int | Tensor,
    pad: Tensor | None = None,
    out_len: int | None = None,
) -> Tensor:
    """Order-preserving k-max pooling along time, per channel.

    Keeps the k largest values of each (text, channel) row among its valid positions, in
    their original temporal order. Ties are broken by position (earliest first) through a
    stable descending sort; ReLU outputs contain many exact zeros, so this matters for
    determinism and padding invariance (torch.topk does not promise a tie order).

    Args:
        x: (B, C, L) activations.
        k: how many values to keep, an int or a per-text (B,) LongTensor.
        pad: optional (B, 1, L) bool mask, True at padding; padding is never selected.
            A text with fewer than k valid positions keeps all of them.
        out_len: output length K (default: k, or max(k) for a tensor k). Positions past a
            text's own k are zero.

    Returns:
        (B, C, K) tensor.
    """
    B, C, L = x.shape
    if out_len is None:
        out_len = int(k) if isinstance(k, int) else int(k.max())
    if out_len > L:
        raise ValueError(f"k-max pooling needs out_len <= length, got {out_len} > {L}")

    scores = x if pad is None else x.masked_fill(pad, _lowest(x.dtype))
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # (B, C, L)
    idx = order[..., :out_len]  # (B, C, K) candidate positions, best first

    # Number kept per text: min(k, valid length), as a (B, 1, 1) tensor.
    keep_n = torch.as_tensor(k, device=x.device).reshape(-1, 1, 1).expand(B, 1, 1)
    if pad is not None:
        valid = (~pad).sum(dim=-1, keepdim=True)  # (B, 1, 1)
        keep_n = torch.minimum(keep_n, valid)
    drop = torch.arange(out_len, device=x.device)[None, None, :] >= keep_n  # (B, 1, K)

    # Push dropped ranks past the end, then sort positions to restore temporal order.
    idx = idx.masked_fill(drop, L).sort(dim=-1).values  # (B, C, K)
    out = x.gather(-1, idx.clamp(max=L - 1))  # (B, C, K)
    return out.masked_fill(drop, 0.0)


class KMaxPool1d(nn.Module):
    """Fixed-k order-preserving k-max pooling over valid positions (the VDCNN head).

    Not `AdaptiveMaxPool1d(k)`: that takes the max of k windows, not the top-k values.
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: Tensor, pad: Tensor | None = None) -> Tensor:
        return kmax_pool1d(x, self.k, pad)  # (B, C, k)

    def extra_repr(self) -> str:
        return f"k={self.k}"


class MaskedMaxPool1d(nn.Module):
    """MaxPool1d(kernel 3, stride 2, padding 1) that never lets padding win.

    Padding is filled with the dtype's lowest value before pooling (equal to the implicit
    -inf padding at a sequence end), and the output's padding is zeroed afterwards.
    """

    def forward(self, x: Tensor, pad: Tensor, lengths_out: Tensor, pad_out: Tensor) -> Tensor:
        x = x.masked_fill(pad, _lowest(x.dtype))
        return self.pool(x).mul(~pad_out)  # (B, C, ceil(L/2))

    def pool(self, x: Tensor) -> Tensor:
        return F.max_pool1d(x, kernel_size=3, stride=2, padding=1)


class KMaxDownsample(nn.Module):
    """Halve each text's length by k-max pooling with k = ceil(valid length / 2).

    The output length of the batch is ceil(L / 2), the same as the other downsampling
    kinds, so shapes depend only on the padded length.
    """

    def forward(self, x: Tensor, pad: Tensor, lengths_out: Tensor, pad_out: Tensor) -> Tensor:
        return kmax_pool1d(x, lengths_out, pad, out_len=pad_out.shape[-1])


class MaskedAvgPool1d(nn.Module):
    """Global average over each row's valid positions: (B, C, L) -> (B, C, 1).

    The global-average-pooling head of the time-series ResNet (Wang et al. 2017), padding-
    invariant: padded positions are excluded from both the sum and the count.
    """

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        keep = ~pad  # (B, 1, L)
        count = keep.sum(dim=-1, keepdim=True).clamp(min=1).to(x.dtype)  # (B, 1, 1)
        return x.mul(keep).sum(dim=-1, keepdim=True) / count


_LOW_PRECISION = (torch.float16, torch.bfloat16)  # statistics in fp32, as torch's BatchNorm under autocast


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics count a batch's valid positions only.

    ``forward(x, keep)``: x (B, C, L), keep (B, 1, L) bool, True at valid positions. In training
    mode the batch mean and variance (and so the running estimates) are taken over the valid
    positions, so a text's or series' output does not depend on how much padding its
    batch-mates add, and evaluation (running statistics, torch's own kernel) normalises with
    statistics of the same kind the model was trained with. Plain BatchNorm averages the padded
    zeros in: with unequal lengths the training-mode and eval-mode outputs disagree.

    ``masked=False`` ignores ``keep`` (torch's BatchNorm over every position, as in vdcnn-res
    before masked statistics existed); a batch without padding takes torch's kernel either way
    (the same statistics). Parameters and buffers are BatchNorm1d's, so state dicts are unchanged.
    In training mode with padding, padded positions of the output hold the bias (callers zero them).
    """

    def __init__(self, num_features: int, masked: bool = True, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        self.masked = masked

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        if not (self.masked and self.training and keep is not None) or bool(keep.all()):
            return super().forward(x)
        valid = keep.to(torch.float32 if x.dtype in _LOW_PRECISION else x.dtype)
        count = valid.sum()
        if count < 2:  # torch's own error for a single value per channel
            return _on_valid_rows(super().forward, x, keep)
        weight = valid.new_ones(self.num_features) if self.weight is None else self.weight
        bias = valid.new_zeros(self.num_features) if self.bias is None else self.bias
        out, mean, var = _MaskedBatchNorm.apply(x.to(valid.dtype), valid, weight, bias, self.eps)
        if self.running_mean is not None and self.running_var is not None:  # None unless track_running_stats
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * count / (count - 1)).to(self.running_var.dtype), factor)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.masked else ", masked=False")


class _MaskedBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm of x (B, C, L) with the mean and variance of the positions where
    ``keep`` (B, 1, L, 1.0 valid, 0.0 padding) is 1: ``(out, mean, var)``, var biased.

    BatchNorm's forward and backward written out with counts over valid positions: a handful of
    elementwise passes and two reductions by matrix products, in x's own (B, C, L) layout, so the
    next convolution gets a contiguous input (benchmarks/masked_norm_cost.py). The output at padded
    positions is ``bias`` (every caller zeroes padding after the norm); no gradient reaches x there.
    """

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        count = keep.sum()
        keep_t = keep.transpose(1, 2)  # (B, L, 1): sums over valid positions as (B, C, L) @ (B, L, 1)
        mean = torch.bmm(x, keep_t).sum(0)[:, 0] / count  # (C,)
        centred = (x - mean[:, None]).mul_(keep)  # zero at padding
        var = torch.linalg.vecdot(centred, centred).sum(0) / count
        rstd = (var + eps).rsqrt()
        scale = weight * rstd
        out = (centred * scale[:, None]).add_(bias[:, None])
        ctx.save_for_backward(centred, keep, rstd, scale, count)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad: Tensor, _mean: Tensor, _var: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        centred, keep, rstd, scale, count = ctx.saved_tensors
        grad_valid = torch.bmm(grad, keep.transpose(1, 2)).sum(0)[:, 0]  # (C,) sum over valid positions
        grad_centred = torch.linalg.vecdot(grad, centred).sum(0)  # padding: centred is zero
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # BatchNorm's input gradient: scale * (g - mean(g) - x_hat * mean(g * x_hat)), valid positions
            grad_x = (grad * scale[:, None]).sub_((scale * grad_valid / count)[:, None]).mul_(keep)
            grad_x.addcmul_(centred, (-scale * rstd * rstd * grad_centred / count)[:, None])
        if ctx.needs_input_grad[2]:
            grad_weight = grad_centred * rstd
        if ctx.needs_input_grad[3]:
            grad_bias = grad.sum((0, 2))  # the padded outputs are the bias too
        return grad_x, None, grad_weight, grad_bias, None


def _on_valid_rows(norm: Callable[[Tensor], Tensor], x: Tensor, keep: Tensor) -> Tensor:
    """A BatchNorm's forward applied to the valid positions of x (B, C, L) as rows (n, C): torch's
    own kernel keeps the statistics (and running estimates) of those rows; scattered back, padding
    zero. For norms that take one argument (SyncBatchNorm) and batches with fewer than two valid
    values; the transposed layout it leaves slows the next convolution, so MaskedBatchNorm1d
    otherwise computes in place (:class:`_MaskedBatchNorm`)."""
    valid = keep.squeeze(1)  # (B, L)
    rows = norm(x.transpose(1, 2)[valid])  # (n, C)
    out = x.new_zeros(x.shape[0], x.shape[2], x.shape[1]).index_put((valid,), rows.to(x.dtype))  # (B, L, C)
    return out.transpose(1, 2)  # (B, C, L)


def masked_batch_norm(norm: nn.Module, x: Tensor, keep: Tensor) -> Tensor:
    """``norm`` on x (B, C, L) with training statistics over the valid positions ``keep`` (B, 1, L).

    A :class:`MaskedBatchNorm1d` masks as configured. Any other BatchNorm stands where Lightning's
    ``trainer.sync_batchnorm`` replaced one by ``torch.nn.SyncBatchNorm`` (which takes one
    argument): it is applied to the valid positions as rows the same way, so the statistics stay
    masked, and synced over the processes (SyncBatchNorm takes (N, C) input and counts each
    process's rows).
    """
    if isinstance(norm, MaskedBatchNorm1d):
        return norm(x, keep)
    if not norm.training or bool(keep.all()):
        return norm(x)
    return _on_valid_rows(norm, x, keep)
