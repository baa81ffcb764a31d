"""ResNet-18/34/50/101 bottom-up pathway (torchvision's ResNets, never downloaded).

Returns C3, C4, C5 (strides 8, 16, 32). Module names equal torchvision's ResNet (conv1, bn1,
layer1..layer4; the classifier avgpool/fc is dropped), so ImageNet checkpoints and
torchvision detection state dicts (``backbone.body.*``) load without renaming.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["ResNetBody", "norm_layer_factory", "RESNETS", "FREEZE_AT_PRETRAINED"]

RESNETS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}
# Stages frozen when starting from an ImageNet checkpoint: the stem and res2 (layer1), as in
# Detectron (FREEZE_AT=2) and torchvision (trainable_backbone_layers=3). From scratch: none.
FREEZE_AT_PRETRAINED = 2
GROUPS = 32  # GroupNorm groups (Wu & He); every ResNet width is divisible by 32


def norm_layer_factory(norm: str) -> Callable[[int], nn.Module]:
    """Norm layer constructor for ``norm`` in frozen_bn (paper) | bn | gn."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return partial(nn.GroupNorm, GROUPS)
    raise ValueError(f"norm={norm!r}: allowed 'frozen_bn', 'bn', 'gn'")


def _load_checkpoint(path: str) -> dict:
    """An ImageNet ResNet state dict from a local file (weights_only=True)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"DetectorConfig.backbone_weights={path!r}: file not found") from None
    except Exception as e:  # noqa: BLE001 - report the file and the reason
        raise ValueError(f"DetectorConfig.backbone_weights={path!r}: cannot load ({e})") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"DetectorConfig.backbone_weights={path!r}: expected a state dict, got {type(state)}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


class _ResNetOfWidth(resnet.ResNet):
    """torchvision's ResNet trunk with ``width`` channels in its first stage (torchvision: 64),
    built by torchvision's own ``_make_layer`` and initialised as torchvision initialises it;
    stages have width, 2 x, 4 x, 8 x channels (x 4 for bottleneck blocks). No classifier."""

    def __init__(self, depth: int, width: int, norm_layer: Callable[[int], nn.Module]) -> None:
        nn.Module.__init__(self)
        block, layers = _BLOCKS[depth]
        self._norm_layer, self.inplanes, self.dilation, self.groups, self.base_width = norm_layer, width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


_BLOCKS = {18: (resnet.BasicBlock, (2, 2, 2, 2)), 34: (resnet.BasicBlock, (3, 4, 6, 3)),
           50: (resnet.Bottleneck, (3, 4, 6, 3)), 101: (resnet.Bottleneck, (3, 4, 23, 3))}


class ResNetBody(nn.Module):
    """ResNet trunk: image [B, 3, H, W] -> (C3, C4, C5) at strides 8, 16, 32.

    Args:
        depth: 18, 34, 50 or 101.
        norm: frozen_bn | bn | gn.
        weights: optional path to a torchvision-format ImageNet ResNet state dict.
        freeze_at: number of leading stages whose parameters are frozen (0: none, 1: stem,
            2: stem + layer1, ...). Default: FREEZE_AT_PRETRAINED with weights, else 0.
        width: channels of the first stage (64: torchvision's ResNets, which ImageNet weights
            fit); C3/C4/C5 have 2, 4, 8 x width channels (x 4 for ResNet-50/101).
    """

    def __init__(self, depth: int = 50, norm: str = "frozen_bn", weights: Optional[str] = None,
                 freeze_at: Optional[int] = None, width: int = 64) -> None:
        super().__init__()
        if depth not in RESNETS:
            raise ValueError(f"depth={depth!r}: allowed {sorted(RESNETS)}")
        if width == 64:
            net = RESNETS[depth](weights=None, norm_layer=norm_layer_factory(norm))
        else:
            net = _ResNetOfWidth(depth, width, norm_layer_factory(norm))
        if weights:
            state = _load_checkpoint(weights)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            own = net.state_dict()
            problems = sorted(k for k in own if k not in state and not k.startswith("fc.")
                              and not k.endswith("num_batches_tracked"))
            problems += sorted(k for k in state if k not in own and not k.endswith("num_batches_tracked"))
            problems += sorted(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                               if k in own and tuple(v.shape) != tuple(own[k].shape))
            if problems:
                raise ValueError(
                    f"DetectorConfig.backbone_weights={weights!r} does not fit a ResNet-{depth} with norm={norm!r}: "
                    f"{len(problems)} mismatching keys, e.g. {problems[:5]}")
            net.load_state_dict(state, strict=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels = (2 * width * expansion, 4 * width * expansion, 8 * width * expansion)  # C3-C5
        if freeze_at is None:
            freeze_at = FREEZE_AT_PRETRAINED if weights else 0
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients to the first ``freeze_at`` stages (stem = 1, layer1 = 2, ...)."""
        stages = [(self.conv1, self.bn1), (self.layer1,), (self.layer2,), (self.layer3,), (self.layer4,)]
        for stage in stages[:freeze_at]:
            for module in stage:
                for p in module.parameters():
                    p.requires_grad_(False)

    def forward(self, x: Tensor) -> tuple:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c3, c4, c5
