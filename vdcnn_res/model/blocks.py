"""Residual 1D conv blocks: the paper's BasicConvResBlock and two extensions.

Every block is called as block(x, pad_in, pad_out): x (B, C_in, L_in) with its padding
already zero, pad_in (B, 1, L_in) and pad_out (B, 1, L_out) the padding masks before and
after the block's stride. Only a block's first strided conv strides.

The stage builder decides each block's shortcut and hands it over: ``None`` (a plain block:
no addition and no module at all, so parameter counts are honest and DDP sees no unused
parameters), ``nn.Identity()``, or a projection (1x1 conv + BN with the block's stride).
Blocks never re-decide it; they only say which input the shortcut reads and which layer
``zero_init_last`` zeros.

Every BatchNorm is a :class:`~.layers.MaskedBatchNorm1d` built by ``norm_layer`` (torchvision's
pattern) and called through :func:`~.layers.masked_batch_norm` with the keep mask of its input
(so a SyncBatchNorm that replaced it stays masked), so training statistics count valid
positions only (``norm_layer=partial(MaskedBatchNorm1d, masked=False)``: torch's plain BN).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import MaskedBatchNorm1d, masked_batch_norm

__all__ = [
    "BLOCKS",
    "BasicConvResBlock",
    "BottleneckConvResBlock",
    "PreActConvResBlock",
    "ResidualBlock",
    "conv1",
    "conv3",
    "conv_k",
    "EvenSameConv1d",
    "NormLayer",
    "Projection",
    "projection",
]

NormLayer = Callable[[int], MaskedBatchNorm1d]  # channels -> a BatchNorm called as norm(x, keep)


def conv3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv1d:
    """k=3 conv, 'same' padding; no bias (a BatchNorm follows)."""
    return nn.Conv1d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class EvenSameConv1d(nn.Conv1d):
    """Stride-1 conv of an even kernel k with 'same' output length: k/2 - 1 inputs to the left,
    k/2 to the right (torch's padding="same" split). Pads k/2 per side and drops the first output,
    which avoids torch's padded input copy and its warning, and exports to ONNX as a plain conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)[..., 1:]


def conv_k(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv1d:
    """Conv of any kernel, no bias. k=3 is exactly :func:`conv3`; other odd kernels pad (k-1)/2 per
    side; even kernels (stride 1 only: the config refuses them with conv downsampling) are
    :class:`EvenSameConv1d`."""
    if kernel == 3:
        return conv3(in_channels, out_channels, stride)
    if kernel % 2 == 0:
        return EvenSameConv1d(in_channels, out_channels, kernel)
    return nn.Conv1d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)


def conv1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv1d:
    """1x1 conv; no bias (a BatchNorm follows)."""
    return nn.Conv1d(in_channels, out_channels, 1, stride=stride, bias=False)


class Projection(nn.Sequential):
    """Projection shortcut: 1x1 conv with the block's stride, then BatchNorm; ``forward(x, keep)``
    with keep (B, 1, L_out) the valid positions of the output. (A Sequential: its state-dict
    keys ``0.weight``, ``1.*`` are those of files written before it was a class.)"""

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:  # type: ignore[override]
        conv, norm = self
        return masked_batch_norm(norm, conv(x), keep).mul(keep)  # (B, C_out, L_out)


def projection(in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer = MaskedBatchNorm1d) -> Projection:
    """Projection shortcut: 1x1 conv with the block's stride + BatchNorm."""
    return Projection(conv1(in_channels, out_channels, stride), norm_layer(out_channels))


class ResidualBlock(nn.Module):
    """out = branch(x) (+ shortcut(x)), then ReLU unless the block is pre-activated.

    Subclasses implement ``build`` (the branch's layers), ``branch`` (returning the masked
    residual and the tensor a projection shortcut reads) and ``zero_init_last``.
    """

    relu_after_add = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        shortcut: nn.Module | None = None,
        norm_layer: NormLayer = MaskedBatchNorm1d,
    ) -> None:
        super().__init__()
        self.norm_layer = norm_layer  # used by build() only
        self.build(in_channels, out_channels, stride)
        self.shortcut = shortcut  # registered last: parameter order (and so seeded init) as in vdcnn-res 0.1.0

    def build(self, in_channels: int, out_channels: int, stride: int) -> None:
        raise NotImplementedError

    def branch(self, x: Tensor, pad_in: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def zero_init_last(self) -> None:
        """Zero the branch's last scale so the block starts as its shortcut (timm's pattern)."""
        raise NotImplementedError

    def forward(self, x: Tensor, pad_in: Tensor, pad_out: Tensor) -> Tensor:
        keep = ~pad_out
        out, projected_input = self.branch(x, pad_in, keep)  # (B, C, L_out)
        if isinstance(self.shortcut, nn.Identity):
            out = out + x
        elif self.shortcut is not None:
            out = out + self.shortcut(projected_input, keep)
        return F.relu(out) if self.relu_after_add else out


class BasicConvResBlock(ResidualBlock):
    """conv(k3, stride) -> BN -> ReLU -> conv(k3) -> BN -> (+ shortcut) -> ReLU (paper).

    ``kernel_sizes`` generalises the two k=3 convs to any number of convs (conv_i, bn_i, with
    ReLU between): (8, 5, 3) is the block of the time-series ResNet (Wang et al. 2017).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        shortcut: nn.Module | None = None,
        norm_layer: NormLayer = MaskedBatchNorm1d,
        kernel_sizes: tuple[int, ...] = (3, 3),
    ) -> None:
        self.kernel_sizes = tuple(kernel_sizes)
        super().__init__(in_channels, out_channels, stride, shortcut, norm_layer)

    def build(self, in_channels: int, out_channels: int, stride: int) -> None:
        for i, kernel in enumerate(self.kernel_sizes, start=1):
            cin = in_channels if i == 1 else out_channels
            setattr(self, f"conv{i}", conv_k(cin, out_channels, kernel, stride if i == 1 else 1))
            setattr(self, f"bn{i}", self.norm_layer(out_channels))

    def branch(self, x: Tensor, pad_in: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        out = x
        last = len(self.kernel_sizes)
        for i in range(1, last):
            out = F.relu(masked_batch_norm(getattr(self, f"bn{i}"), getattr(self, f"conv{i}")(out), keep).mul(keep))
        return masked_batch_norm(getattr(self, f"bn{last}"), getattr(self, f"conv{last}")(out), keep).mul(keep), x

    def zero_init_last(self) -> None:
        nn.init.zeros_(getattr(self, f"bn{len(self.kernel_sizes)}").weight)


class PreActConvResBlock(ResidualBlock):
    """BN -> ReLU -> conv(k3, stride) -> BN -> ReLU -> conv(k3) (+ shortcut), no ReLU after the add.

    "Identity Mappings in Deep Residual Networks" ordering. A projection shortcut reads the
    pre-activated input, as in that paper; the network adds a final BN-ReLU.
    """

    relu_after_add = False

    def build(self, in_channels: int, out_channels: int, stride: int) -> None:
        self.bn1 = self.norm_layer(in_channels)
        self.conv1 = conv3(in_channels, out_channels, stride)
        self.bn2 = self.norm_layer(out_channels)
        self.conv2 = conv3(out_channels, out_channels)

    def branch(self, x: Tensor, pad_in: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        keep_in = ~pad_in
        pre = F.relu(masked_batch_norm(self.bn1, x, keep_in).mul(keep_in))  # (B, C_in, L_in)
        out = F.relu(masked_batch_norm(self.bn2, self.conv1(pre), keep).mul(keep))
        return self.conv2(out).mul(keep), pre

    def zero_init_last(self) -> None:
        # Not bn2's gamma: with gamma = beta = 0 the ReLU after it outputs 0 with zero
        # gradient and the branch would never wake up. Zeroing conv2 keeps it trainable.
        nn.init.zeros_(self.conv2.weight)


class BottleneckConvResBlock(ResidualBlock):
    """1x1 reduce (C // 4) -> k3 (stride) -> 1x1 expand to C, BN after each, ReLU between,
    (+ shortcut) -> ReLU.

    The stride sits on the k3 conv (ResNet v1.5): a strided 1x1 conv would just drop every
    other position.
    """

    def build(self, in_channels: int, out_channels: int, stride: int) -> None:
        mid = max(1, out_channels // 4)
        self.conv1 = conv1(in_channels, mid)
        self.bn1 = self.norm_layer(mid)
        self.conv2 = conv3(mid, mid, stride)
        self.bn2 = self.norm_layer(mid)
        self.conv3 = conv1(mid, out_channels)
        self.bn3 = self.norm_layer(out_channels)

    def branch(self, x: Tensor, pad_in: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        keep_in = ~pad_in
        out = F.relu(masked_batch_norm(self.bn1, self.conv1(x), keep_in).mul(keep_in))  # (B, C/4, L_in)
        out = F.relu(masked_batch_norm(self.bn2, self.conv2(out), keep).mul(keep))  # (B, C/4, L_out)
        return masked_batch_norm(self.bn3, self.conv3(out), keep).mul(keep), x  # (B, C, L_out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


BLOCKS: dict[str, type[ResidualBlock]] = {
    "basic": BasicConvResBlock,
    "preact": PreActConvResBlock,
    "bottleneck": BottleneckConvResBlock,
}
