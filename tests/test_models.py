"""Tests for models.py: shapes for every arch and stem, equality with torchvision's ResNets, the
projector of App. D, argument checks, the device picker and the training layout."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torchvision

import models

EXPANSION = {'resnet18': 1, 'resnet34': 1, 'resnet50': 4}


@pytest.mark.parametrize('arch', models.ARCHS)
@pytest.mark.parametrize('stem, stem_side', [('cifar', 32), ('cifar_s2', 16), ('imagenet', 8)])
def test_shapes_for_every_arch_and_stem(arch, stem, stem_side):
    model = models.ContrastiveModel(arch, width=8, stem=stem, proj_hidden=32)
    x = torch.randn(4, 3, 32, 32)
    h, z = model(x)
    D_h = 8 * 8 * EXPANSION[arch]
    assert model.encoder.feature_dim == D_h
    assert h.shape == (4, D_h) and z.shape == (4, 128)
    enc = model.encoder
    assert enc.maxpool(enc.relu(enc.bn1(enc.conv1(x)))).shape == (4, 8, stem_side, stem_side)


@pytest.mark.parametrize('arch', models.ARCHS)
def test_imagenet_stem_has_torchvision_parameters(arch):
    with torch.device('meta'):  # structure only: no memory, no init time
        reference = getattr(torchvision.models, arch)()
        encoder = models.ResNetEncoder(arch, stem='imagenet')
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith('fc.')}
    assert {k: v.shape for k, v in encoder.state_dict().items()} == expected
    assert encoder.feature_dim == reference.fc.in_features


def test_resnet18_computes_what_torchvision_computes():
    reference = torchvision.models.resnet18()
    reference.fc = nn.Identity()
    encoder = models.ResNetEncoder('resnet18', stem='imagenet')
    encoder.load_state_dict(reference.state_dict())
    reference.eval(), encoder.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder(x), reference(x), atol=1e-5)


def test_init_follows_torchvision():
    encoder = models.ResNetEncoder('resnet18', width=16)
    w = encoder.layer3[0].conv1.weight  # (64, 32, 3, 3): fan_out = 64 * 9
    assert abs(w.std().item() - (2 / (64 * 9)) ** 0.5) < 0.01
    assert all((m.weight == 1).all() and (m.bias == 0).all()
               for m in encoder.modules() if isinstance(m, nn.BatchNorm2d))


def test_projector_structure_and_defaults():
    proj = models.Projector(64, 32, 16)
    assert [type(m) for m in proj] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (proj[0].in_features, proj[0].out_features, proj[3].out_features) == (64, 32, 16)
    assert proj(torch.randn(5, 64)).shape == (5, 16)
    assert models.ContrastiveModel('resnet18', width=4).projector[0].out_features == 512
    assert models.ContrastiveModel('resnet50', width=4).projector[0].out_features == 2048
    assert models.ContrastiveModel(width=4, proj_dim=32).projector[3].out_features == 32


@pytest.mark.parametrize('kwargs', [
    dict(arch='resnet101'), dict(stem='tiny'), dict(width=0), dict(width=8.5), dict(proj_dim=0),
    dict(proj_hidden=0),
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        models.ContrastiveModel(**kwargs)


def test_bad_input_shape():
    model = models.ContrastiveModel(width=4)
    for x in (torch.randn(2, 1, 32, 32), torch.randn(3, 32, 32)):
        with pytest.raises(ValueError, match='3, S, S'):
            model(x)


def test_pick_device():
    assert models.pick_device('cpu') == torch.device('cpu')
    assert models.pick_device('auto').type == ('cuda' if torch.cuda.is_available() else
                                               'mps' if torch.backends.mps.is_available() else
                                               'cpu')
    with pytest.raises(ValueError, match='not a device'):
        models.pick_device('gpu')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='not available here'):
            models.pick_device('cuda:0')


# One training step in the layout models.memory_format picks, at the tests' smallest width, must
# leave the weights the NCHW step leaves. Run in a subprocess (an abort fails this test, not the
# suite) with oneDNN capped at AVX2, whose 1x1 stride-2 backward-weights kernel corrupts memory
# on channels_last inputs with < 8 channels: so this fails on any x86 CPU if the rule goes.
LAYOUT_STEP = """
import copy, torch, data, losses, models, train
torch.set_num_threads(1)
torch.manual_seed(0)
model = models.ContrastiveModel("resnet18", width=4, stem="cifar_s2")
nchw = copy.deepcopy(model)
model = model.to(memory_format=models.memory_format(model, torch.device("cpu")))
aug = data.augment_kwargs("shapes")
x, y = data.two_views(data.make_shapes(32, seed=0)[0], generator=torch.Generator().manual_seed(0),
                      **aug)
loss_fn = train.make_loss("simclr", temperature=0.2, siglip_t=10.0, siglip_b=10.0,
                          within_view=False)
for net in (model, nchw):
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(20):
        train.contrastive_step(net, opt, x, y, loss_fn=loss_fn, vrns_fn=losses.vrns_loss, n=256,
                               lam=1.0)
print(max((a - b).abs().max().item() for a, b in zip(model.parameters(), nchw.parameters())))
"""


def test_the_picked_layout_trains_as_nchw_on_avx2():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", LAYOUT_STEP], cwd=root, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2",
                                                       "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) < 1e-4


def test_memory_format_rule():
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    for width, arch, layout in [(4, 'resnet18', torch.contiguous_format),
                                (8, 'resnet18', torch.contiguous_format),
                                (16, 'resnet18', torch.channels_last),
                                (4, 'resnet50', torch.channels_last)]:  # shortcut in: 4 * 4
        with torch.device('meta'):
            model = models.ContrastiveModel(arch, width=width)
        assert models.memory_format(model, cpu) == layout
        assert models.memory_format(model, cuda) == torch.channels_last
