"""The encoder f and the projector of the paper's experiments (App. D): a ResNet without its
classifier, then Linear -> BatchNorm1d -> ReLU -> Linear. Losses see the projector output z;
the linear probe sees the encoder features h.

The ResNets are torchvision's: its BasicBlock / Bottleneck, its parameter names (conv1, bn1,
layer1..layer4, so torchvision and solo-learn state dicts load) and its init. Two knobs:
`width` (channels of the first stage; stages have width, 2, 4, 8 x width, x4 for Bottleneck) and
`stem`:

    stem        first layers                          use
    'cifar'     3x3 conv stride 1, no max-pool        the paper's CIFAR encoder, 32 px stays 32
    'cifar_s2'  3x3 conv stride 2, no max-pool        CPU demos: 4x fewer FLOPs, 16 px after it
    'imagenet'  7x7 conv stride 2, 3x3 max-pool s2    ImageNet-100, STL-10 (the paper's ResNet-50)

Shapes: B images, C = 3 channels, S image side, D_h encoder feature dim (8 * width * expansion:
512 for resnet18/34 and 2048 for resnet50 at width 64), d embedding dim (projector output, 128).

Try it (CPU, a second):
    python -c "import models, torch; h, z = models.ContrastiveModel(width=16)(torch.randn(4, 3, \
32, 32)); print(h.shape, z.shape)"
"""
import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

ARCHS = ('resnet18', 'resnet34', 'resnet50')
STEMS = ('cifar', 'cifar_s2', 'imagenet')
_LAYOUT = {  # block type and blocks per stage, as torchvision (He et al., 2016, Table 1)
    'resnet18': (BasicBlock, (2, 2, 2, 2)),
    'resnet34': (BasicBlock, (3, 4, 6, 3)),
    'resnet50': (Bottleneck, (3, 4, 6, 3)),
}


def _stage(block, in_channels, planes, depth, stride):
    """depth blocks; the first one changes the resolution (stride) and the number of channels
    (to planes * expansion), its shortcut then a strided 1x1 conv + BN as in torchvision."""
    out_channels = planes * block.expansion
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride),
                                 nn.BatchNorm2d(out_channels))
    return nn.Sequential(block(in_channels, planes, stride, shortcut),
                         *[block(out_channels, planes) for _ in range(depth - 1)])


class ResNetEncoder(nn.Module):
    """f: (B, 3, S, S) images -> (B, D_h) features after global average pooling."""

    def __init__(self, arch='resnet18', *, width=64, stem='cifar'):
        super().__init__()
        if arch not in ARCHS or stem not in STEMS or not (isinstance(width, int) and width >= 1):
            raise ValueError(f'need an arch of {ARCHS}, a stem of {STEMS} and an int width >= 1; '
                             f'got {arch!r}, {stem!r}, {width!r}')
        block, depths = _LAYOUT[arch]
        w, e = width, block.expansion
        if stem == 'imagenet':
            self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, w, 3, stride=1 if stem == 'cifar' else 2, padding=1,
                                   bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(block, w, w, depths[0], 1)
        self.layer2 = _stage(block, w * e, 2 * w, depths[1], 2)
        self.layer3 = _stage(block, 2 * w * e, 4 * w, depths[2], 2)
        self.layer4 = _stage(block, 4 * w * e, 8 * w, depths[3], 2)
        self.feature_dim = 8 * w * e  # D_h
        for m in self.modules():  # torchvision's init; BatchNorm keeps PyTorch's weight 1, bias 0
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f'expected images (B, 3, S, S), got {tuple(x.shape)}')
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, w, S', S'), S' = S, S/2, S/4
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, D_h, S'/8, S'/8)
        return x.mean((2, 3))  # (B, D_h)


class Projector(nn.Sequential):
    """g: (B, in_dim) -> (B, out_dim): Linear -> BatchNorm1d -> ReLU -> Linear (App. D).
    BatchNorm1d needs B >= 2 in training mode. The first Linear has no bias: the BatchNorm
    subtracts the batch mean, so a bias there would get a gradient of pure rounding noise."""

    def __init__(self, in_dim, hidden_dim, out_dim=128):
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError(f'projector dims must be >= 1, got {in_dim}, {hidden_dim}, {out_dim}')
        super().__init__(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class ContrastiveModel(nn.Module):
    """x (B, 3, S, S) -> (h, z): encoder features h (B, D_h) for evaluation and the unnormalised
    projector output z (B, d) for the losses (they L2-normalise: u = z / |z|).

    proj_hidden defaults to the paper's 512 (resnet18/34) or 2048 (resnet50), whatever the width.
    """

    def __init__(self, arch='resnet18', *, width=64, stem='cifar', proj_hidden=None,
                 proj_dim=128):
        super().__init__()
        self.encoder = ResNetEncoder(arch, width=width, stem=stem)
        hidden = proj_hidden if proj_hidden is not None else (2048 if arch == 'resnet50' else 512)
        self.projector = Projector(self.encoder.feature_dim, hidden, proj_dim)

    def forward(self, x):
        h = self.encoder(x)  # (B, D_h)
        return h, self.projector(h)  # (B, D_h), (B, d)


# ---- Plumbing (skip on a first reading): the layout to train in, the --device flag -----------

def memory_format(model, device):
    """The layout to train model in on device: channels_last (NHWC), the layout of cuDNN's
    and oneDNN's fast convolutions (experiments/performance.md measures it), except
    on a CPU when a 1x1 stride-2 conv has fewer than 16 input channels (a ResNet's shortcut at
    width * expansion < 16). There oneDNN's backward-weights kernel writes past its buffer or
    returns wrong weight gradients (oneDNN issue #6035: abort at 4 channels on AVX2)."""
    small = any(m.in_channels < 16 for m in model.modules() if isinstance(m, nn.Conv2d)
                and m.kernel_size == (1, 1) and m.stride != (1, 1))
    return torch.contiguous_format if device.type == 'cpu' and small else torch.channels_last


def pick_device(name):
    """--device: 'auto' -> cuda, then mps, then cpu; else the named device, which must exist
    (ValueError with the fix, for the script to print against its flag)."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else
                            'mps' if torch.backends.mps.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f'--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps') \
            from None
    if not {'cuda': torch.cuda.is_available, 'mps': torch.backends.mps.is_available}.get(
            device.type, lambda: True)():
        raise ValueError(f'--device {name}: not available here; use --device cpu (or auto)')
    return device
