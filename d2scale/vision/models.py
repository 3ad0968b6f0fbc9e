"""Classifiers: ResNet-18/34/50 (CIFAR 3×3 stem for small images), VGG-16-BN and VGG-19-BN
(small images: pooled features into one linear layer, as DRoP's), a small CNN.

Every model is a :class:`Net`: ``body`` maps images to the penultimate features (ResNets:
the global-average-pooled layer4 output, 512-d for ResNet-18) and ``fc`` maps features to
logits, so training dynamics, features and last-layer gradients come from one forward pass.
``dropout`` > 0 adds dropout on the features before ``fc`` (DRoP's ``--dropout``; MC-dropout
acquisition samples it at inference).
"""

from __future__ import annotations

import torch
from torch import nn

from d2scale.errors import D2ScaleError
from d2scale.vision.registry import MODEL_ALIASES, MODELS

SMALL_IMAGES = 64  # at or below this side length, ResNets get the CIFAR stem


class Net(nn.Module):
    """``fc(body(x))``; ``forward(x, features=True)`` also returns the features."""

    def __init__(self, body: nn.Module, fc: nn.Linear, dropout: float = 0.0):
        super().__init__()
        self.body, self.fc = body, fc
        self.drop = nn.Dropout(dropout) if dropout > 0 else None  # no parameters

    def forward(self, x: torch.Tensor, features: bool = False):
        h = self.body(x)
        logits = self.fc(self.drop(h) if self.drop is not None else h)
        return (logits, h) if features else logits


def build_model(
    name: str, num_classes: int, in_channels: int = 3, image_size: int = 32, dropout: float = 0.0
) -> Net:
    """The model ``name`` (one of ``MODELS``) with randomly initialised weights."""
    name = MODEL_ALIASES.get(name, name)
    if not 0 <= dropout < 1:
        raise D2ScaleError(f"--dropout must be in [0, 1); got {dropout}.")
    if name == "cnn":
        net = _cnn(num_classes, in_channels)
    elif name in ("resnet18", "resnet34", "resnet50"):
        net = _resnet(name, num_classes, in_channels, image_size <= SMALL_IMAGES)
    elif name in ("vgg16_bn", "vgg19_bn"):
        net = _vgg(name, num_classes, in_channels, image_size <= SMALL_IMAGES)
    else:
        raise D2ScaleError(f"--model must be one of {', '.join(MODELS)}; got {name!r}.")
    if dropout > 0:
        net.drop = nn.Dropout(dropout)
    return net


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` holds a dropout layer with a rate > 0 (MC dropout can sample it)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def _torchvision_models():
    from d2scale.torch_compat import ensure_torchvision

    ensure_torchvision()
    import torchvision.models

    return torchvision.models


def _resnet(name: str, num_classes: int, in_channels: int, cifar_stem: bool) -> Net:
    m = getattr(_torchvision_models(), name)(num_classes=num_classes)
    if cifar_stem:  # 3×3 stride-1 stem, no max-pool (the CIFAR ResNet of the D2 / CCS code)
        m.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        m.maxpool = nn.Identity()
    elif in_channels != 3:
        m.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    fc, m.fc = m.fc, nn.Identity()
    return Net(m, fc)


def _vgg(name: str, num_classes: int, in_channels: int, small: bool) -> Net:
    m = getattr(_torchvision_models(), name)(num_classes=num_classes)
    if in_channels != 3:
        m.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
    if small:  # CIFAR VGG (DRoP): 512-d pooled features straight into one linear layer
        body = nn.Sequential(m.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return Net(body, nn.Linear(512, num_classes))
    body = nn.Sequential(m.features, m.avgpool, nn.Flatten(), *m.classifier[:-1])
    return Net(body, m.classifier[-1])


def _cnn(num_classes: int, in_channels: int) -> Net:
    """Three 3×3 conv-BN-ReLU blocks of 16, 32, 64 channels, 2×2 max-pools between them,
    global average pooling: 64-d features, ~24k parameters. Sized for 8×8 and 28×28 digits
    on a CPU (~2M multiply-adds per 28×28 image)."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    body = nn.Sequential(
        *block(in_channels, 16),
        nn.MaxPool2d(2),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Net(body, nn.Linear(64, num_classes))
