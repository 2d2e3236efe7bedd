"""Tests for models.py: shapes for every arch and stem, equality with torchvision's ResNets, the
projector of App. D, argument checks and the device picker."""
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
        with pytest.raises(ValueError, match='no CUDA GPU'):
            models.pick_device('cuda:0')
