"""VGG-16 (Simonyan & Zisserman), the convolutional part, returning the output of named stages.

Layers and their indices are those of torchvision's ``vgg16().features`` (``features.<i>.weight``),
so an ImageNet ``vgg16`` classification checkpoint loads after dropping its classifier; the final
max-pool (index 30) is left out: the detectors that use VGG (SSD) put their own layers after
conv5_3. Stage ``conv<k>`` is the output of its last ReLU, before the stage's max-pool:
conv1 .. conv5 at strides 1, 2, 4, 8, 16 (conv4 at 38 x 38 for a 300 x 300 input with SSD's
ceil-mode third pool).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["VGG16", "vgg16_state_dict_from_torchvision"]

# Output channels of the convs of each stage (torchvision's configuration "D").
_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
STAGE_NAMES = tuple(f"conv{k}" for k in range(1, 6))


class VGG16(nn.Module):
    """The 13 convs of VGG-16 with their ReLUs and the first four max-pools, as one Sequential.

    Args:
        out_features: stages whose outputs ``forward`` returns ("conv1" .. "conv5").
        pool3_ceil_mode: round the third pool's output size up (SSD: 75 -> 38 rather than 37).
        freeze_at: stages conv1 .. conv<freeze_at> get no gradient (0: train everything).
    """

    def __init__(self, out_features: Sequence[str] = ("conv4", "conv5"), pool3_ceil_mode: bool = False, freeze_at: int = 0):
        super().__init__()
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"VGG16 has stages {STAGE_NAMES}, not {unknown}")
        self.out_features = tuple(out_features)
        layers: list[nn.Module] = []
        # Index into `features` of each stage's last ReLU: where its output is taken.
        self._stage_ends: dict[str, int] = {}
        in_channels = 3
        for stage, widths in enumerate(_STAGES):
            if stage > 0:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=pool3_ceil_mode and stage == 3))
            for width in widths:
                conv = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
                # torchvision's VGG initialisation (used when no ImageNet file is given).
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)
                layers += [conv, nn.ReLU(inplace=True)]
                in_channels = width
            self._stage_ends[STAGE_NAMES[stage]] = len(layers) - 1
        self.features = nn.Sequential(*layers)
        self._last = max(self._stage_ends[f] for f in self.out_features)
        frozen_until = self._stage_ends[STAGE_NAMES[freeze_at - 1]] if freeze_at > 0 else -1
        for i, layer in enumerate(self.features):
            if i <= frozen_until:
                layer.requires_grad_(False)

    def out_channels(self, name: str) -> int:
        return _STAGES[STAGE_NAMES.index(name)][-1]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) -> {stage name: (B, C, H_s, W_s)} for the ``out_features``."""
        wanted = {self._stage_ends[f]: f for f in self.out_features}
        out: dict[str, Tensor] = {}
        for i, layer in enumerate(self.features):
            if i > self._last:
                break
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        return out


def vgg16_state_dict_from_torchvision(sd: dict) -> dict:
    """Map a torchvision ImageNet ``vgg16`` state_dict onto :class:`VGG16` keys: ``features.*``
    are the same; the classifier (``classifier.*``) has no place in a detection backbone."""
    return {k: v for k, v in sd.items() if not k.startswith("classifier.")}
