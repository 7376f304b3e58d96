"""Small building blocks shared by the detectors: norm layers by name, conv + norm + activation."""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["ConvNormAct", "get_norm"]


def get_norm(name: str, channels: int) -> nn.Module | None:
    """The norm layer called ``name`` for ``channels`` channels, or None for "".

    "FrozenBN" is a BatchNorm whose statistics and affine parameters are fixed buffers (what
    ImageNet-initialised detection backbones use); "GN" uses 32 groups.
    """
    if name == "":
        return None
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if name == "GN":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"unknown norm {name!r}; expected '', 'FrozenBN', 'BN', 'SyncBN' or 'GN'")


class ConvNormAct(nn.Module):
    """Conv2d, optional norm, optional ReLU. The conv has a bias only when there is no norm.

    Submodules are named ``conv`` and ``norm`` (when present) so checkpoints read plainly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        norm: str = "",
        activation: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=norm == ""
        )
        self.norm = get_norm(norm, out_channels)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation:
            x = x.relu_()
        return x
