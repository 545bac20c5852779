"""ResNet-50 truncated after layer 3 with global average pooling: CLAM's ``resnet50_trunc`` (1024-d).

He et al., "Deep Residual Learning", CVPR 2016; truncation as in CLAM (Lu et al. 2021, mahmoodlab/CLAM
``models/resnet_custom_dep.py`` / ``timm_wrapper.py`` with ``out_indices=(3,)``), which MHIM-MIL uses for its
ResNet-50 features. Written in plain PyTorch (torchvision/timm are not needed); module names match
torchvision's ``resnet50`` so a torchvision state dict (e.g. ``resnet50-0676ba61.pth`` / ``-19c8e357.pth``)
loads with only ``layer4.*`` and ``fc.*`` left over. Stride sits on the 3x3 convolution ("ResNet v1.5") as in
torchvision.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50Trunc(nn.Module):
    """Image [B, 3, H, W] (ImageNet-normalised) -> embedding [B, 1024]."""

    embed_dim = 1024
    LEFT_OVER = ("layer4.", "fc.")  # torchvision keys this trunk does not have

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c = 64
        stages = {"layer1": (3, 64, 1), "layer2": (4, 128, 2), "layer3": (6, 256, 2)}
        for name, (blocks, width, stride) in stages.items():
            layers = []
            for i in range(blocks):
                layers.append(Bottleneck(c, width, stride if i == 0 else 1))
                c = width * Bottleneck.expansion
            setattr(self, name, nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x.mean(dim=(2, 3))
