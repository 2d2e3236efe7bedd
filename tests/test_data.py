"""Tests for data.py: the presets, the shapes generator, the readers (tiny files in torchvision's
on-disk layout, read through torchvision), the batched augmentation against torchvision's
per-image ops, and batch_order. STL-10's reader: tests/test_stl10.py."""
import colorsys
import inspect
import pickle
import textwrap
import traceback
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.datasets.utils import check_integrity

import data
from conftest import PASTE_NAMESPACE, paste_alone
from syncs import count_syncs

STATS = dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
IDENTITY = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), p_flip=0.0, p_jitter=0.0, p_gray=0.0)


def unnormalize(x):
    mean, std = torch.tensor(STATS['mean']), torch.tensor(STATS['std'])
    return x * std[:, None, None] + mean[:, None, None]


# ---------------------------------------------------------------------------------------------
# Presets

# augment_kwargs of every dataset as the committed results were run: a changed value fails here
SIMCLR_IMAGENET = dict(scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), p_jitter=0.8, p_gray=0.2,
                       p_blur=0.5, blur_sigma=(0.1, 2.0))
CIFAR = dict(size=32, scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), p_jitter=0.8, p_gray=0.2,
             p_blur=0.0)
SHAPES = dict(size=32, scale=(0.35, 1.0), jitter=(0.8, 0.8, 0.8, 0.5), p_jitter=0.8, p_gray=0.2,
              p_blur=0.0)
STL10 = dict(size=96, **SIMCLR_IMAGENET, mean=(0.4467, 0.4398, 0.4066),
             std=(0.2603, 0.2566, 0.2713))
EXPECTED_KWARGS = {
    'shapes': SHAPES | dict(mean=(0.499, 0.499, 0.5), std=(0.317, 0.309, 0.321)),
    'shapes100': SHAPES | dict(mean=(0.499, 0.499, 0.5), std=(0.314, 0.305, 0.317)),
    'cifar10': CIFAR | dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    'cifar100': CIFAR | dict(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    'stl10': STL10,
    'stl10_unlabeled': STL10,
    'imagefolder': dict(size=224, **SIMCLR_IMAGENET, mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225)),
}


def test_augment_kwargs_are_the_presets_the_results_were_run_with():
    assert data.DATASETS == tuple(EXPECTED_KWARGS) and set(data.GENERATED) < set(data.DATASETS)
    for dataset, expected in EXPECTED_KWARGS.items():
        assert data.augment_kwargs(dataset) == expected, dataset
        assert data.augment_kwargs(dataset, 64) == expected | dict(size=64), dataset
    kw = data.augment_kwargs('cifar10')
    kw['size'] = 8  # a copy: the caller's changes stay out of PRESETS
    assert data.augment_kwargs('cifar10')['size'] == 32
    for bad in [('mnist', 0), ('shapes', -1)]:
        with pytest.raises(ValueError, match='image_size >= 0'):
            data.augment_kwargs(*bad)


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
    gray = data.batch_grayscale(x.float() / 255, p_gray=1.0)[:, 0].flatten(1)  # (n, H*W)
    spread = gray.quantile(0.98, dim=1) - gray.quantile(0.02, dim=1)
    assert spread.min() > 0.2


def test_load_shapes_seeds_the_splits_apart():
    # train is make_shapes(seed=2 seed), test make_shapes(seed=2 seed + 1): the committed results
    # were drawn this way, and the splits never share an image
    for name, fills in [('shapes', False), ('shapes100', True)]:
        xtr, ytr, k = data.load_dataset(name, 'train', seed=3, n_shapes=30)
        xte, yte, _ = data.load_dataset(name, 'test', seed=3, n_shapes=30)
        assert k == data.shape_classes(fills) and xtr.shape == (30, 3, 32, 32)
        for (x, y), seed in [((xtr, ytr), 6), ((xte, yte), 7)]:
            x0, y0 = data.make_shapes(30, seed=seed, fills=fills)
            assert torch.equal(x, x0) and torch.equal(y, y0)
    assert len(data.load_dataset('shapes', 'test')[0]) == 5000


def test_shapes100_labels_are_shape_and_fill():
    # label = shape + 10 * fill; the 10-class images are unchanged by the option; a fill shows
    # inside the shape: the outline-only class (fill 1) paints less of the shape than solid (0).
    x, y = data.make_shapes(400, seed=1, fills=True)
    assert torch.equal(torch.bincount(y, minlength=100), torch.full((100,), 4))
    x10, y10 = data.make_shapes(400, seed=1)
    assert torch.equal(y % 10, y10)
    solid = (y // 10 == 0)
    assert torch.equal(x[solid], x10[solid])  # same draws; a solid fill is the old image
    gray = x.float().mean(1)  # (n, H, W)
    contrast = (gray - gray.flatten(1).median(1).values[:, None, None]).abs().gt(40)
    painted = contrast.flatten(1).float().mean(1)  # share of pixels off the background
    assert painted[y // 10 == 1].mean() < 0.6 * painted[solid].mean()
    assert data.shape_classes(True) == 100 and len(data.FILL_PATTERNS) == 10


# ---------------------------------------------------------------------------------------------
# CIFAR through torchvision, on tiny files in its on-disk layout

CIFAR_FILES = {  # name -> (folder, train files, test files, label key, classes, meta file, key)
    'cifar10': ('cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], ['test_batch'],
                'labels', 10, 'batches.meta', 'label_names'),
    'cifar100': ('cifar-100-python', ['train'], ['test'], 'fine_labels', 100, 'meta',
                 'fine_label_names'),
}


def write_cifar(root, name):
    """Tiny CIFAR files under root in torchvision's layout: {split: (images (N, 3, 32, 32) uint8,
    labels (N,))}, each split with its own size. A file is a pickled dict of 'data', uint8
    (N, 3072) rows of the R, G and B planes (each 32 x 32, row-major), and the labels; CIFAR-100
    holds fine and coarse labels. (The official files are Python 2 pickles, whose keys
    torchvision reads as these str keys.)"""
    folder, train, test, key, classes, meta, meta_key = CIFAR_FILES[name]
    (root / folder).mkdir()
    rng, written = np.random.default_rng(0), {}
    for split, files, n in [('train', train, 3), ('test', test, 4)]:  # n images a file
        x = rng.integers(0, 256, (n * len(files), 3, 32, 32), dtype=np.uint8)  # (N, 3, H, W)
        y = rng.integers(0, classes, n * len(files))  # (N,)
        for k, file in enumerate(files):
            part = slice(k * n, (k + 1) * n)
            entry = {'data': x[part].reshape(n, 3072), key: y[part].tolist(),
                     'coarse_labels': (y[part] // 5).tolist()}
            with open(root / folder / file, 'wb') as f:
                pickle.dump(entry, f)
        written[split] = x, y
    with open(root / folder / meta, 'wb') as f:
        pickle.dump({meta_key: [f'class {k}' for k in range(classes)]}, f)
    return written


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_cifar_is_read_through_torchvision(tmp_path, no_md5, name):
    written = write_cifar(tmp_path, name)
    for split in ('train', 'test'):
        images, labels = written[split]
        assert not np.array_equal(images[:, :, 0], images[:, :, :, 0])  # rows are not columns
        x, y, classes = data.load_dataset(name, split, data_dir=tmp_path)
        assert x.dtype == torch.uint8 and x.shape == images.shape and x.is_contiguous()
        assert np.array_equal(x.numpy(), images)  # (N, 3, H, W): channels, rows, columns in place
        assert y.dtype == torch.int64 and np.array_equal(y.numpy(), labels)  # CIFAR-100's fine
        assert classes == (100 if name == 'cifar100' else 10)


def test_missing_or_corrupted_files_name_the_folder_and_the_fix(tmp_path, monkeypatch):
    folder = tmp_path / 'cifar-10-batches-py'

    def error(**kwargs):  # the FileNotFoundError's message, checked to be one line
        with pytest.raises(FileNotFoundError) as info:
            data.load_dataset('cifar10', 'train', data_dir=tmp_path, **kwargs)
        shown = ''.join(traceback.format_exception(info.value))  # what the user would see
        assert 'Dataset not found' not in shown  # torchvision's RuntimeError, replaced
        assert '\n' not in str(info.value) and str(folder) in str(info.value)
        return str(info.value)

    assert '--download' in error() and 'place' in error()  # no files at all
    write_cifar(tmp_path, 'cifar10')
    assert 'corrupted' in error()  # files that fail torchvision's MD5 check
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity',
                        lambda path, md5=None: check_integrity(path))
    assert len(data.load_dataset('cifar10', 'train', data_dir=tmp_path)[0]) == 15
    (folder / 'test_batch').unlink()  # torchvision needs every file, whichever split is read
    error()


def test_download_is_passed_to_torchvision(tmp_path, no_md5, monkeypatch):
    fetched = []

    def download(url, root, **kwargs):  # torchvision's fetch and unpack: here, tiny files
        fetched.append(write_cifar(tmp_path, 'cifar10'))

    monkeypatch.setattr(torchvision.datasets.cifar, 'download_and_extract_archive', download)
    x, _, _ = data.load_dataset('cifar10', 'test', data_dir=str(tmp_path), download=True)
    assert len(fetched) == 1 and np.array_equal(x.numpy(), fetched[0]['test'][0])


@pytest.mark.parametrize('name, split', [('mnist', 'train'), ('imagefolder', 'train'),
                                         ('stl10_unlabeled', 'train'), ('cifar10', 'unlabeled'),
                                         ('shapes', 'val')])
def test_load_dataset_names_the_valid_choices(tmp_path, name, split):
    with pytest.raises(ValueError, match="cifar100 or stl10.*stl10's unlabeled"):
        data.load_dataset(name, split, data_dir=tmp_path)


def test_imagefolder_pairs(tmp_path):
    for c in ('a', 'b'):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new('RGB', (40, 30), (60 * i, 100, 200)).save(tmp_path / c / f'{i}.png')
    kw = data.augment_kwargs('imagefolder', 16) | STATS
    ds = data.ImageFolderPairs(tmp_path, data.imagefolder_two_view_transform(**kw))
    x1, x2, label, index = ds[3]
    assert len(ds) == 4 and ds.folder.classes == ['a', 'b'] and (label, index) == (1, 3)
    assert x1.shape == x2.shape == (3, 16, 16) and not torch.equal(x1, x2)
    image = Image.open(tmp_path / 'a' / '0.png')
    assert data.imagefolder_eval_transform(16, **STATS)(image).shape == (3, 16, 16)
    images, labels = data.imagefolder_images(ds.folder, [3, 0], 16)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [1, 0]
    with pytest.raises(FileNotFoundError, match='missing'):
        data.ImageFolderPairs(tmp_path / 'missing', None)


# ---------------------------------------------------------------------------------------------
# The batch functions and augment: torchvision's semantics, exactly where measurable

ALL_ON = data.augment_kwargs('stl10', 32) | STATS  # every operation on, blur included
BATCH_FUNCTIONS = {  # function -> its keyword arguments, with every random choice live
    data.batch_crop_flip: dict(size=24, scale=(0.2, 1.0), p_flip=0.5),
    data.batch_color_jitter: dict(jitter=(0.8, 0.8, 0.8, 0.2), p_jitter=0.8),
    data.batch_grayscale: dict(p_gray=0.5),
    data.batch_blur: dict(p_blur=0.5, sigma=(0.1, 2.0), kernel_size=5),
}


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def ks(a, b):
    """Two-sample Kolmogorov-Smirnov distance: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.ravel(a).astype(float)), np.sort(np.ravel(b).astype(float))
    at = np.concatenate([a, b])
    return np.abs(np.searchsorted(a, at, 'right') / len(a)
                  - np.searchsorted(b, at, 'right') / len(b)).max()


def torchvision_draws(transform, image, n, seed):
    """(n, ...) outputs of a torchvision transform applied to one image n times."""
    torch.manual_seed(seed)
    return torch.stack([transform(image) for _ in range(n)])


@pytest.mark.parametrize('fn', BATCH_FUNCTIONS, ids=lambda fn: fn.__name__)
def test_batch_functions_paste_alone(fn):
    x = torch.rand(16, 3, 32, 32, generator=seeded(0))
    expected = fn(x, generator=seeded(1), **BATCH_FUNCTIONS[fn])
    assert torch.equal(paste_alone(fn)(x, generator=seeded(1), **BATCH_FUNCTIONS[fn]), expected)
    assert expected.shape[2:] != x.shape[2:] or not torch.equal(expected, x)  # it did something


def test_normalize_pastes_alone_and_takes_uint8_or_float():
    x, _ = data.make_shapes(4, seed=0)
    expected = data.normalize(x, **STATS)
    assert torch.equal(paste_alone(data.normalize)(x, **STATS), expected)
    assert torch.allclose(data.normalize(x.float() / 255, **STATS), expected)
    assert torch.allclose(unnormalize(expected), x.float() / 255, atol=1e-6)
    with pytest.raises(ValueError):
        data.normalize(x, mean=(0.5, 0.5), std=(1, 1, 1))


PARTS = (data.blur_kernel_size, data.batch_crop_flip, data.batch_color_jitter, data.batch_grayscale,
         data.batch_blur, data.normalize, data.augment, data.two_views)


def paste_together(*fns):
    """fns as a reader gets them by copying their sources, and nothing else, into one file that
    imports only math, numbers, numpy as np, torch and torch.nn.functional as F: its namespace."""
    namespace = dict(PASTE_NAMESPACE)
    for fn in fns:
        exec(textwrap.dedent(inspect.getsource(fn)), namespace)
    return namespace


def test_two_views_pastes_alone_with_its_parts():
    # a module-level helper or constant that augment or two_views used would raise NameError
    x, _ = data.make_shapes(16, seed=0)
    expected = data.two_views(x, generator=seeded(1), **ALL_ON)
    pasted = paste_together(*PARTS)['two_views'](x, generator=seeded(1), **ALL_ON)
    assert all(torch.equal(a, b) for a, b in zip(pasted, expected))
    assert not torch.equal(*expected)


@pytest.mark.parametrize('fake_device', ['cuda', 'meta'])
def test_augmentation_makes_no_host_sync(fake_device):
    # On a GPU, a nonzero, a boolean mask, an .item() or a constant built on the CPU makes the CPU
    # wait: the augmentation, every operation on, makes none, for uint8 and float images.
    images, _ = data.make_shapes(8, seed=0)
    for x in (images, images.float() / 255):
        counts = count_syncs(data.two_views, x, generator=seeded(0), fake_device=fake_device,
                             **ALL_ON)
        assert counts == Counter(), counts


SYNCING = {  # a function of x that synchronises on a GPU -> the name count_syncs gives it
    'aten.index (bool)': lambda x: x[x > 0.5],
    'aten.index_put (bool)': lambda x: x.__setitem__(x[:, 0] > 0.5, x[0]),
    'aten.nonzero': lambda x: x.nonzero(),
    'aten.masked_select': lambda x: x.masked_select(x > 0.5),
    'aten._local_scalar_dense': lambda x: float(x.sum()),
    'aten.equal': lambda x: torch.equal(x, x),
    'copy host->device': lambda x: torch.tensor([1.0]).to(x.device) + x,
    'copy device->host': lambda x: x.cpu(),
}
SYNCING_TOO = {  # more spellings of the same syncs
    'aten._local_scalar_dense': [lambda x: x.sum().item(), lambda x: bool(x.sum() > 0)],
    'copy host->device': [lambda x: x.new_tensor([1.0, 2.0, 3.0]) + x,
                          lambda x: torch.tensor([1.0, 2.0, 3.0], device=x.device) + x],
}


@pytest.mark.parametrize('fake_device', ['cuda', 'meta'])
def test_count_syncs_counts_each_kind_of_sync(fake_device):
    x = torch.rand(4, 3)
    for name, fn in SYNCING.items():
        assert count_syncs(fn, x, fake_device=fake_device) == Counter({name: 1}), name
    for name, fns in SYNCING_TOO.items():
        for fn in fns:
            assert count_syncs(fn, x, fake_device=fake_device) == Counter({name: 1}), name
    twice = count_syncs(lambda x: (x.nonzero(), x.nonzero()), x, fake_device=fake_device)
    assert twice == Counter({'aten.nonzero': 2})
    free = count_syncs(lambda x: torch.where(x > 0.5, x, 0.0) * 2 + torch.full(
        (3,), 0.5, device=x.device) + torch.arange(3, device=x.device), x, fake_device=fake_device)
    assert free == Counter()


def test_count_syncs_runs_a_training_step_on_a_copy_of_the_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 8))
    before = [t.clone() for t in model.state_dict().values()]
    images, _ = data.make_shapes(8, seed=0)

    def step(model, images, generator, check=False):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = data.two_views(images, generator=generator, **ALL_ON)
        loss = -F.cosine_similarity(model(x), model(y)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if check and not torch.isfinite(loss):  # a Python test of a GPU value: one sync
            raise FloatingPointError

    assert count_syncs(step, model, images, seeded(0), fake_device='meta') == Counter()
    counts = count_syncs(step, model, images, seeded(0), check=True, fake_device='meta')
    assert counts == Counter({'aten._local_scalar_dense': 1})

    def update(model, images):  # fake CUDA: forward and an AdamW step (no backward without a GPU)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        assert model(data.normalize(images, **STATS)).device.type == 'cuda'
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()

    assert count_syncs(update, model, images) == Counter()
    after = list(model.state_dict().values())
    assert all(a.device.type == 'cpu' and torch.equal(a, b) for a, b in zip(after, before))


def test_augment_shape_range_and_randomness():
    x, _ = data.make_shapes(8, seed=0)
    out = data.augment(x, size=24, **STATS)
    assert out.shape == (8, 3, 24, 24) and out.dtype == torch.float32
    raw = unnormalize(out)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    twice = data.augment(x[:1].expand(2, -1, -1, -1), size=24, **STATS)
    assert not torch.allclose(twice[0], twice[1])  # per-sample parameters


def test_two_views_draw_only_from_the_generator():
    x, _ = data.make_shapes(8, seed=0)
    torch.manual_seed(0)
    u1, v1 = data.two_views(x, generator=seeded(1), **ALL_ON)
    torch.manual_seed(1)  # the global RNG must not matter
    u2, v2 = data.two_views(x, generator=seeded(1), **ALL_ON)
    assert torch.equal(u1, u2) and torch.equal(v1, v2) and not torch.equal(u1, v1)
    u3, _ = data.two_views(x, generator=seeded(2), **ALL_ON)
    assert not torch.equal(u1, u3)


def test_augment_identity_flip_and_gray():
    x, _ = data.make_shapes(4, seed=0)
    ref = data.normalize(x, **STATS)
    assert torch.allclose(data.augment(x, size=32, **IDENTITY, **STATS), ref, atol=1e-5)
    flipped = data.augment(x, size=32, **IDENTITY | dict(p_flip=1.0), **STATS)
    assert torch.allclose(flipped, torch.flip(ref, dims=[3]), atol=1e-5)
    gray = unnormalize(data.augment(x, size=32, **IDENTITY | dict(p_gray=1.0), **STATS))
    expected = TF.rgb_to_grayscale(x.float() / 255)  # (4, 1, 32, 32)
    assert torch.allclose(gray, expected.expand(-1, 3, -1, -1), atol=1e-5)
    # factors 1 and a hue shift of 0 (an HSV round trip) leave the image alone
    still = data.augment(x, size=32, **IDENTITY | dict(p_jitter=1.0, jitter=(0, 0, 0, 1e-9)),
                         **STATS)
    assert torch.allclose(still, ref, atol=1e-5)


# Crops. A probe image holds each pixel's own coordinates, so the output tells every crop box:
# while the box is no larger than the output (upsampling), the first and last output pixels
# read the box's first and last pixels exactly.

def probe(B, H, W):
    """(B, 2, H, W) float: channel 0 is each pixel's x (column), channel 1 its y (row)."""
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing='ij')
    return torch.stack([x, y]).float().expand(B, -1, -1, -1)


def crop_boxes(out):
    """(top, left, height, width, flipped), each (B,), of batch_crop_flip's output of a probe."""
    first, last = out[:, 0, 0, 0], out[:, 0, 0, -1]  # (B,) x of the first / last column
    top, bottom = out[:, 1, 0, 0], out[:, 1, -1, 0]  # (B,)
    left = torch.minimum(first, last)
    assert (left - left.round()).abs().max() < 1e-4 and (top - top.round()).abs().max() < 1e-4
    return (top.round().long(), left.round().long(), (bottom - top + 1).round().long(),
            ((last - first).abs() + 1).round().long(), first > last)


@pytest.mark.parametrize('H, W, S', [(32, 32, 32), (24, 40, 48)])
def test_crop_resamples_inside_the_box_as_torchvision(H, W, S):
    # same generator seed -> same boxes on the probe and on the image
    B = 64
    images = torch.rand(B, 3, H, W, generator=seeded(0))
    out = data.batch_crop_flip(images, size=S, generator=seeded(1))
    boxes = crop_boxes(data.batch_crop_flip(probe(B, H, W), size=S, generator=seeded(1)))
    for b, (top, left, h, w, flipped) in enumerate(zip(*boxes)):
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        expected = TF.resized_crop(images[b], int(top), int(left), int(h), int(w), [S, S],
                                   antialias=False)
        expected = TF.hflip(expected) if flipped else expected
        assert (out[b] - expected).abs().max() < 1e-5


@pytest.mark.parametrize('dataset', ['cifar10', 'shapes'])
def test_crop_boxes_are_distributed_as_torchvision(dataset):
    # torchvision's RandomResizedCrop.get_params against ours, 32 px: whole-pixel sides, offsets
    # that reach both edges, the 10 tries and the fallback. Measured distances on the right code
    # are about a third of each bound; each bound fails the crop always centred, an aspect
    # uniform instead of log-uniform, or a side uniform instead of the area.
    scale, n_tv, n = data.augment_kwargs(dataset)['scale'], 6000, 24000
    torch.manual_seed(0)
    tv = np.array([T.RandomResizedCrop.get_params(torch.empty(3, 32, 32), scale, [3 / 4, 4 / 3])
                   for _ in range(n_tv)])  # (n_tv, 4) top, left, height, width
    ours = [crop_boxes(data.batch_crop_flip(probe(n // 4, 32, 32), size=32, scale=scale,
                                            generator=seeded(k)))
            for k in range(4)]
    top, left, h, w, flipped = [torch.cat(part).numpy() for part in zip(*ours)]
    stats = {  # name -> (torchvision's value, ours, bound)
        'mean area fraction': ((tv[:, 2] * tv[:, 3]).mean() / 1024, (h * w).mean() / 1024, 0.01),
        'flush left or right': (((tv[:, 1] == 0) | (tv[:, 1] + tv[:, 3] == 32)).mean(),
                                ((left == 0) | (left + w == 32)).mean(), 0.03),
        'whole image': (((tv[:, 2] == 32) & (tv[:, 3] == 32)).mean(),
                        ((h == 32) & (w == 32)).mean(), 0.003),
        'flipped': (0.5, flipped.mean(), 0.02),
    }
    for name, (expected, got, bound) in stats.items():
        assert abs(got - expected) < bound, (name, got, expected)
    assert ks(np.log(w / h), np.log(tv[:, 3] / tv[:, 2])) < 0.04
    assert ks(h * w, tv[:, 2] * tv[:, 3]) < 0.04
    assert ks(left, tv[:, 1]) < 0.04 and ks(top, tv[:, 0]) < 0.04


def test_crop_falls_back_to_torchvisions_centre_crop():
    # a tall image (W / H = 1/4) and large areas: no try fits, torchvision crops the centre
    # with the aspect clamped to 3/4
    torch.manual_seed(0)
    expected = T.RandomResizedCrop.get_params(torch.empty(3, 32, 8), [0.9, 1.0], [3 / 4, 4 / 3])
    top, left, h, w, _ = crop_boxes(data.batch_crop_flip(probe(16, 32, 8), size=32,
                                                         scale=(0.9, 1.0), generator=seeded(0)))
    assert expected == (10, 0, 11, 8)
    assert (top == 10).all() and (left == 0).all() and (h == 11).all() and (w == 8).all()


# Colour. Probe pixels recover each image's factor, so each operation is compared with
# torchvision's at the same factor; distributions are compared with torchvision's ColorJitter
# applied to one image many times.

def hue_of(rgb):
    """Hue in [0, 1) of each (3,) row of rgb, as colorsys (HSV)."""
    return torch.tensor([colorsys.rgb_to_hsv(*map(float, c))[0] for c in rgb])


def test_each_jitter_op_is_torchvisions_at_the_same_factor():
    B = 24
    x = torch.rand(B, 3, 8, 8, generator=seeded(0)) * 0.5 + 0.25
    x[:, :, 0, 0] = 0.5  # gray probe
    x[:, :, 0, 1] = torch.tensor([0.6, 0.45, 0.5])  # coloured probe
    x[:, :, 0, 2] = torch.tensor([1.0, 0.0, 0.0])  # red probe
    ops = {
        'brightness': (TF.adjust_brightness, lambda out: out[:, 0, 0, 0] / 0.5),
        'contrast': (TF.adjust_contrast, lambda out: (out[:, 0, 0, 1] - out[:, 0, 0, 0]) / 0.1),
        'saturation': (TF.adjust_saturation,
                       lambda out: (out[:, 0, 0, 1] - out[:, 1, 0, 1]) / 0.15),
        'hue': (TF.adjust_hue, lambda out: (hue_of(out[:, :, 0, 2]) + 0.5) % 1 - 0.5),
    }
    for n, (name, (tv_op, factor_of)) in enumerate(ops.items()):
        jitter = [0.0] * 4
        jitter[n] = 0.5 if name == 'hue' else 0.8
        out = data.batch_color_jitter(x, jitter=jitter, p_jitter=1.0, generator=seeded(n))
        factors = factor_of(out)  # (B,)
        assert factors.std() > 0.1, name  # the factors vary
        expected = torch.stack([tv_op(x[b], float(factors[b])) for b in range(B)])
        assert (out - expected).abs().max() < 1e-5, name


def jitter_outputs(image, jitter, p_jitter, n, n_tv, seed):
    """(n, 3, 2, 2) outputs of augment with only the colour jitter on, and (n_tv, 3, 2, 2) of
    torchvision's RandomApply([ColorJitter(*jitter)], p_jitter), on one image (3, 2, 2)."""
    kw = IDENTITY | dict(jitter=jitter, p_jitter=p_jitter, mean=(0, 0, 0), std=(1, 1, 1))
    ours = data.augment(image.expand(n, -1, -1, -1), size=2, generator=seeded(seed), **kw)
    tv = T.RandomApply([T.ColorJitter(*jitter)], p=p_jitter)
    return ours, torchvision_draws(tv, image, n_tv, seed)


def test_jitter_factors_are_distributed_as_torchvision():
    # A gray image shows the brightness factor alone (contrast, saturation and hue leave gray
    # alone); a two-tone gray image shows the contrast factor; a coloured one saturation and hue.
    # On the right code the largest distance is 0.03 (two-sample noise at these sizes: 0.035
    # at 1%); factors drawn only <= 1, or hue shifts only >= 0, give 0.35 or more.
    gray = torch.full((3, 2, 2), 0.5)  # (3, 2, 2) images, square: the crop keeps them whole
    two_tone = torch.tensor([0.3, 0.7]).expand(3, 2, 2).clone()
    colour = torch.tensor([0.7, 0.4, 0.2])[:, None, None].expand(3, 2, 2).clone()
    for image, jitter in [(gray, (0.4, 0.4, 0.4, 0.1)), (two_tone, (0, 0.8, 0, 0)),
                          (colour, (0, 0, 0.8, 0)), (colour, (0, 0, 0, 0.1)),
                          (colour, (0, 0, 0, 0.5))]:
        ours, tv = jitter_outputs(image, jitter, 0.8, n=8000, n_tv=3000, seed=0)
        for c in range(3):
            for px in range(2):
                assert ks(ours[:, c, 0, px], tv[:, c, 0, px]) < 0.05, (jitter, c, px)


def test_jitter_order_is_random_per_image():
    # Saturation then hue differs from hue then saturation on a blue image: ColorJitter draws
    # the order per image. Largest distance on the right code 0.03; with one order for every
    # image, the hue first or last, 0.10.
    blue = torch.tensor([0.1, 0.1, 0.9])[:, None, None].expand(3, 2, 2).clone()
    ours, tv = jitter_outputs(blue, (0, 0, 1.0, 0.5), 1.0, n=16000, n_tv=4000, seed=1)
    assert max(ks(ours[:, c, 0, 0], tv[:, c, 0, 0]) for c in range(3)) < 0.05


def test_grayscale_probability_and_values():
    x = torch.rand(4000, 3, 2, 2, generator=seeded(0))
    out = data.batch_grayscale(x, p_gray=0.2, generator=seeded(1))
    gray = (out[:, 0] == out[:, 1]).all(2).all(1)  # (B,)
    assert abs(gray.float().mean() - 0.2) < 0.02
    assert torch.equal(out[~gray], x[~gray])
    assert torch.allclose(out[gray], TF.rgb_to_grayscale(x[gray]).expand(-1, 3, -1, -1),
                          atol=1e-6)


def test_blur_is_torchvisions_at_the_same_sigma():
    x = torch.rand(2, 3, 32, 32)
    kw = IDENTITY | dict(p_blur=1.0, blur_sigma=(1.5, 1.5), mean=(0, 0, 0), std=(1, 1, 1))
    expected = TF.gaussian_blur(x, kernel_size=data.blur_kernel_size(32), sigma=1.5)
    assert torch.allclose(data.augment(x, size=32, **kw), expected, atol=1e-5)
    assert [data.blur_kernel_size(s) for s in (32, 96, 224)] == [3, 9, 23]


def test_blur_is_distributed_as_torchvision():
    # An impulse keeps k_0^2 of itself, k_0 the kernel's centre weight: one number per sigma,
    # and 1 when the image is not blurred (probability 1 - p_blur).
    impulse = torch.zeros(3, 32, 32)
    impulse[:, 16, 16] = 1
    kw = IDENTITY | dict(p_blur=0.5, blur_sigma=(0.1, 2.0), mean=(0, 0, 0), std=(1, 1, 1))
    ours = data.augment(impulse.expand(4000, -1, -1, -1), size=32, generator=seeded(0), **kw)
    tv = T.RandomApply([T.GaussianBlur(3, (0.1, 2.0))], p=0.5)
    tv = torchvision_draws(tv, impulse[:1, 15:18, 15:18], 2000, seed=0)
    assert ks(ours[:, 0, 16, 16], tv[:, 0, 1, 1]) < 0.05


@pytest.mark.parametrize('bad, checked_by', [  # checked_by: a word of the function's message
    (dict(size=0), 'size'), (dict(scale=(0.0, 1.0)), 'scale'), (dict(scale=(0.5, 1.2)), 'scale'),
    (dict(ratio=(2.0, 1.0)), 'ratio'), (dict(jitter=(0.4, 0.4, 0.4, 0.7)), 'jitter'),
    (dict(jitter=(0.4, -0.1, 0.4, 0.1)), 'jitter'), (dict(jitter=(0.4,) * 3), 'jitter'),
    (dict(blur_sigma=(0.0, 1.0)), 'sigma'), (dict(blur_sigma=(2.0, 1.0)), 'sigma'),
    (dict(std=(1.0, 0.0, 1.0)), 'std'), (dict(mean=(0.5, 0.5)), 'mean'),
])
def test_augment_rejects_bad_arguments(bad, checked_by):
    # one check in each batch function, mean and std in normalize: augment itself pastes alone
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=checked_by):
        data.augment(x, **dict(dict(size=8, **STATS), **bad))


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
    for m, n, seed, epoch in [(1, 10, 0, 0), (11, 10, 0, 0), (5, 10, -1, 0), (5, 10, 0, -1)]:
        with pytest.raises(ValueError, match='2 <= m <= n'):
            data.batch_order(n, m, epoch=epoch, seed=seed)
