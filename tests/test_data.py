"""Tests for data.py: the shapes generator, the on-disk loaders (tiny files written in the real
formats), the batched augmentation against torchvision's per-image ops, and batch_order."""
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import data



STATS = dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
IDENTITY = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), p_flip=0.0, p_jitter=0.0, p_gray=0.0)


def unnormalize(x):
    mean, std = torch.tensor(STATS['mean']), torch.tensor(STATS['std'])
    return x * std[:, None, None] + mean[:, None, None]


# ---------------------------------------------------------------------------------------------
# make_shapes / load_dataset('shapes')

def test_make_shapes_types_determinism_and_classes():
    x, y = data.make_shapes(50, seed=3)
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.uint8
    assert y.shape == (50,) and y.dtype == torch.int64
    assert torch.equal(torch.bincount(y), torch.full((10,), 5))  # all 10 classes, balanced
    x2, y2 = data.make_shapes(50, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = data.make_shapes(50, seed=4)
    assert not torch.equal(x, x3)
    assert data.make_shapes(4, seed=0, image_size=64)[0].shape == (4, 3, 64, 64)
    assert len(data.SHAPE_CLASSES) == 10


def test_shapes_are_visible_in_grayscale():
    # Foreground and background luminance differ by >= 0.3 (about 76 grey levels), so a shape
    # survives random grayscale: the spread of grey levels in every image is large.
    x, _ = data.make_shapes(200, seed=0)
    gray = data._gray(x.float() / 255).flatten(1)  # (n, H*W)
    spread = gray.quantile(0.98, dim=1) - gray.quantile(0.02, dim=1)
    assert spread.min() > 0.2


def test_load_shapes_splits_differ():
    xtr, ytr, k = data.load_dataset('shapes', data_dir=None, train=True, n_shapes=30)
    xte, _, _ = data.load_dataset('shapes', data_dir=None, train=False, n_shapes=30)
    assert k == 10 and xtr.shape == (30, 3, 32, 32) and not torch.equal(xtr, xte)
    assert torch.equal(xtr, data.load_dataset('shapes', data_dir=None, train=True, n_shapes=30)[0])
    assert len(data.load_dataset('shapes', data_dir=None, train=False)[0]) == 1000


# ---------------------------------------------------------------------------------------------
# Real datasets, written in torchvision's on-disk formats

def write_cifar(path, n, label_key, classes, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    y = rng.integers(0, classes, n).tolist()
    with open(path, 'wb') as f:  # bytes keys, as the official Python 2 pickles load
        pickle.dump({b'batch_label': b'x', b'data': x, label_key: y}, f)
    return x.reshape(n, 3, 32, 32), np.array(y)


def test_cifar10_loader(tmp_path):
    folder = tmp_path / 'cifar-10-batches-py'
    folder.mkdir()
    parts = [write_cifar(folder / f'data_batch_{i}', 20, b'labels', 10, i) for i in range(1, 6)]
    test = write_cifar(folder / 'test_batch', 20, b'labels', 10, 9)
    x, y, k = data.load_dataset('cifar10', data_dir=tmp_path, train=True)
    assert k == 10 and x.shape == (100, 3, 32, 32) and x.dtype == torch.uint8
    assert np.array_equal(x.numpy(), np.concatenate([p[0] for p in parts]))
    assert np.array_equal(y.numpy(), np.concatenate([p[1] for p in parts]))
    x, y, _ = data.load_dataset('cifar10', data_dir=str(tmp_path), train=False)
    assert np.array_equal(x.numpy(), test[0]) and y.dtype == torch.int64
    (folder / 'data_batch_3').unlink()
    with pytest.raises(FileNotFoundError, match='data_batch_3'):
        data.load_dataset('cifar10', data_dir=tmp_path, train=True)


def test_cifar100_loader_and_corrupt_files(tmp_path):
    folder = tmp_path / 'cifar-100-python'
    folder.mkdir()
    x0, y0 = write_cifar(folder / 'train', 20, b'fine_labels', 100, 0)
    x, y, k = data.load_dataset('cifar100', data_dir=tmp_path, train=True)
    assert k == 100 and np.array_equal(x.numpy(), x0) and np.array_equal(y.numpy(), y0)
    with pytest.raises(FileNotFoundError, match='test'):
        data.load_dataset('cifar100', data_dir=tmp_path, train=False)
    (folder / 'test').write_bytes(b'not a pickle')
    with pytest.raises(ValueError, match='not a CIFAR'):
        data.load_dataset('cifar100', data_dir=tmp_path, train=False)
    with open(folder / 'test', 'wb') as f:
        pickle.dump({b'data': np.zeros((4, 100), np.uint8), b'fine_labels': [0] * 4}, f)
    with pytest.raises(ValueError, match='3072'):
        data.load_dataset('cifar100', data_dir=tmp_path, train=False)


def test_stl10_loader(tmp_path):
    folder = tmp_path / 'stl10_binary'
    folder.mkdir()
    rng = np.random.default_rng(0)
    x0 = rng.integers(0, 256, (6, 3, 96, 96), dtype=np.uint8)  # (N, 3, H, W) row-major
    y0 = rng.integers(0, 10, 6)
    (folder / 'train_X.bin').write_bytes(x0.transpose(0, 1, 3, 2).tobytes())  # column-major
    (folder / 'train_y.bin').write_bytes((y0 + 1).astype(np.uint8).tobytes())  # labels 1..10
    (folder / 'unlabeled_X.bin').write_bytes(x0[:2].transpose(0, 1, 3, 2).tobytes())
    x, y, k = data.load_dataset('stl10', data_dir=tmp_path, train=True)
    assert k == 10 and x.shape == (6, 3, 96, 96)
    assert np.array_equal(x.numpy(), x0) and np.array_equal(y.numpy(), y0)
    x, y, _ = data.load_dataset('stl10_unlabeled', data_dir=tmp_path, train=True)
    assert np.array_equal(x.numpy(), x0[:2]) and (y == -1).all()
    with pytest.raises(FileNotFoundError, match='test_X.bin.*test_y.bin'):
        data.load_dataset('stl10', data_dir=tmp_path, train=False)
    (folder / 'train_X.bin').write_bytes(b'\0' * 1000)
    with pytest.raises(ValueError, match='96'):
        data.load_dataset('stl10', data_dir=tmp_path, train=True)
    with pytest.raises(ValueError, match='unknown dataset'):
        data.load_dataset('mnist', data_dir=tmp_path, train=True)


def test_imagefolder_pairs(tmp_path):
    for c in ('a', 'b'):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new('RGB', (40, 30), (60 * i, 100, 200)).save(tmp_path / c / f'{i}.png')
    kw = data.AUGMENT_PRESETS['imagenet'] | dict(size=16)
    ds = data.ImageFolderPairs(tmp_path, data.imagefolder_two_view_transform(**kw, **STATS))
    x1, x2, label, index = ds[3]
    assert len(ds) == 4 and ds.num_classes == 2 and (label, index) == (1, 3)
    assert x1.shape == x2.shape == (3, 16, 16)
    image = Image.open(tmp_path / 'a' / '0.png')
    assert data.imagefolder_eval_transform(16, **STATS)(image).shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError, match='ImageFolder'):
        data.ImageFolderPairs(tmp_path / 'missing', None)


# ---------------------------------------------------------------------------------------------
# augment

def test_augment_shape_range_and_randomness():
    x, _ = data.make_shapes(8, seed=0)
    out = data.augment(x, size=24, **STATS)
    assert out.shape == (8, 3, 24, 24) and out.dtype == torch.float32
    raw = unnormalize(out)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    twice = data.augment(x[:1].expand(2, -1, -1, -1), size=24, **STATS)
    assert not torch.allclose(twice[0], twice[1])  # per-sample parameters
    u, v = data.two_views(x, size=24, **STATS)
    assert not torch.allclose(u, v)


def test_augment_reproducible_with_generator():
    x, _ = data.make_shapes(8, seed=0)
    kw = data.AUGMENT_PRESETS['stl10'] | dict(size=32)  # every op on, blur included
    a = data.augment(x, generator=torch.Generator().manual_seed(1), **kw, **STATS)
    b = data.augment(x, generator=torch.Generator().manual_seed(1), **kw, **STATS)
    c = data.augment(x, generator=torch.Generator().manual_seed(2), **kw, **STATS)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_identity_flip_and_gray():
    x, _ = data.make_shapes(4, seed=0)
    ref = data.normalize(x, **STATS)
    assert torch.allclose(data.augment(x, size=32, **IDENTITY, **STATS), ref, atol=1e-5)
    assert torch.allclose(unnormalize(ref), x.float() / 255, atol=1e-6)
    flipped = data.augment(x, size=32, **IDENTITY | dict(p_flip=1.0), **STATS)
    assert torch.allclose(flipped, torch.flip(ref, dims=[3]), atol=1e-5)
    gray = unnormalize(data.augment(x, size=32, **IDENTITY | dict(p_gray=1.0), **STATS))
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-5)
    assert torch.allclose(gray[:, 0], gray[:, 2], atol=1e-5)
    # all four jitter ops at factor 1 / hue shift 0 (an HSV round trip) leave the image alone
    still = data.augment(x, size=32, **IDENTITY | dict(p_jitter=1.0, jitter=(0, 0, 0, 0)), **STATS)
    assert torch.allclose(still, ref, atol=1e-4)


def test_crop_boxes_respect_scale_ratio_and_image():
    # On a ramp image bilinear sampling is exact, so each output row / column tells where the
    # sampling grid lies: recover the crop box of every sample (64 px in, 8 px out).
    B, W, S = 512, 64, 8
    ramp = (torch.arange(W) + 0.5) / W  # (W,) pixel centres in [0, 1]
    x = torch.stack([ramp.expand(W, W), ramp[:, None].expand(W, W), ramp.expand(W, W)])
    out = data.augment(x.expand(B, -1, -1, -1), size=S, p_jitter=0, p_gray=0,
                       mean=(0, 0, 0), std=(1, 1, 1))
    dx = out[:, 0, 0, -1] - out[:, 0, 0, 0]  # (B,) signed: negative when flipped
    w = dx.abs() * S / (S - 1)  # (B,) crop width / W
    h = (out[:, 1, -1, 0] - out[:, 1, 0, 0]) * S / (S - 1)  # (B,) crop height / H
    assert (w * h >= 0.08 - 1e-3).all() and (w * h <= 1 + 1e-3).all()
    assert (w / h >= 3 / 4 - 1e-3).all() and (w / h <= 4 / 3 + 1e-3).all()
    left = torch.minimum(out[:, 0, 0, 0], out[:, 0, 0, -1]) - 0.5 * w / S  # (B,) x0 / W
    assert (left >= -1e-4).all() and (left + w <= 1 + 1e-4).all()
    assert 0.4 < (dx < 0).float().mean() < 0.6  # p_flip = 0.5
    assert 0.3 < (w * h).mean() < 0.6  # E[area] under torchvision's rule is about 0.45


def test_jitter_ops_match_torchvision():
    x = torch.rand(3, 3, 8, 8)
    f = torch.tensor([0.5, 1.3, 0.0])
    hue = torch.tensor([-0.3, 0.1, 0.45])
    tv = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for op, tv_op, factors in zip(data._JITTER_OPS, tv, (f, f, f, hue)):
        expected = torch.stack([tv_op(x[i], factors[i].item()) for i in range(3)])
        assert torch.allclose(op(x.clone(), factors), expected, atol=1e-5), tv_op.__name__


def test_hue_rotates_red_to_green():
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    green = data._hue(red, torch.tensor([1 / 3]))
    assert torch.allclose(green.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_blur_matches_torchvision():
    x = torch.rand(2, 3, 32, 32)
    kw = IDENTITY | dict(p_blur=1.0, blur_sigma=(1.5, 1.5), mean=(0, 0, 0), std=(1, 1, 1))
    expected = TF.gaussian_blur(x, kernel_size=data.blur_kernel_size(32), sigma=1.5)
    assert torch.allclose(data.augment(x, size=32, **kw), expected, atol=1e-5)
    assert [data.blur_kernel_size(s) for s in (32, 96, 224)] == [3, 9, 23]


@pytest.mark.parametrize('bad', [
    dict(size=0), dict(scale=(0.0, 1.0)), dict(scale=(0.5, 1.2)), dict(ratio=(2.0, 1.0)),
    dict(p_flip=1.5), dict(p_gray=-0.1), dict(p_blur=2.0), dict(jitter=(0.4, 0.4, 0.4, 0.7)),
    dict(blur_sigma=(0.0, 1.0)), dict(std=(1.0, 0.0, 1.0)),
])
def test_augment_rejects_bad_arguments(bad):
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError):
        data.augment(x, **dict(dict(size=8, **STATS), **bad))


def test_augment_rejects_bad_images():
    for x in (torch.zeros(3, 8, 8), torch.zeros(2, 1, 8, 8), torch.zeros(2, 3, 8, 8).long()):
        with pytest.raises(ValueError):
            data.augment(x, size=8, **STATS)


# ---------------------------------------------------------------------------------------------
# batch_order

def test_batch_order_reshuffled():
    a = data.batch_order(103, 10, epoch=0, seed=0)
    assert a.shape == (10, 10) and a.dtype == torch.int64
    assert len(a.unique()) == 100 and a.min() >= 0 and a.max() < 103  # 3 dropped
    assert torch.equal(a, data.batch_order(103, 10, epoch=0, seed=0))  # resumable
    assert not torch.equal(a, data.batch_order(103, 10, epoch=1, seed=0))
    assert not torch.equal(a, data.batch_order(103, 10, epoch=0, seed=1))


def test_batch_order_fixed():
    a = data.batch_order(100, 8, epoch=0, seed=5, fixed=True)
    assert a.shape == (12, 8) and len(a.unique()) == 96
    assert torch.equal(a, data.batch_order(100, 8, epoch=7, seed=5, fixed=True))
    assert not torch.equal(a, data.batch_order(100, 8, epoch=0, seed=6, fixed=True))
    for m, n in [(1, 10), (11, 10)]:
        with pytest.raises(ValueError, match='2 <= m <= n'):
            data.batch_order(n, m, epoch=0, seed=0)
