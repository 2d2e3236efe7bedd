"""Data for contrastive learning: datasets as uint8 tensors, SimCLR augmentation as batched tensor
operations, and the batch schedule (reshuffled every epoch, or the fixed batches of Thm 5.5).

- `make_shapes` draws the offline default dataset: 10 shape classes from signed distance
  functions; colour, position, scale and pixel noise are nuisances, each destroyed by some
  augmentation, so the shape is the only thing two views share. `fills=True` draws shapes100,
  100 classes (shape x fill pattern): harder, and with 1 % of negative pairs in one class (10 %
  for shapes), closer to CIFAR-100 where the paper measures its Table 1.
- `load_dataset` reads shapes, CIFAR-10/100 and STL-10 (torchvision's on-disk formats) into memory.
- `augment` / `two_views`: SimCLR's augmentation (App. D) on a whole batch, on whatever device
  the images are on, with per-image random parameters from one torch.Generator. `augment` chains
  four batch functions, each of which pastes alone into other code: `batch_crop_flip`,
  `batch_color_jitter`, `batch_grayscale`, `batch_blur`, then `normalize`. None of them makes
  the CPU wait for a GPU (no nonzero, boolean mask, .item(), or constant copied from the CPU).
  `python bench.py` times two_views against torchvision's per-image PIL pipeline.
- `DATASETS`, `augment_kwargs(dataset, image_size)`: the datasets train.py trains on, and each
  one's augmentation preset with its channel statistics.
- `batch_order`: the instance indices of every batch of one epoch.
- `ImageFolderPairs` and the two `imagefolder_*_transform`s: the PIL path for ImageNet-style trees.

Shapes: N images in a dataset, B images in a batch, C = 3 channels, H = W input side, S output
side, m pairs per batch, n training-set size.

The batched augmentation draws from torchvision's distributions (tests/test_data.py checks it)
and gives torchvision's pixels for the same parameters; docs/usage.md says where and by how
much it differs (no antialiasing when downscaling, float32 box rounding, PIL's 8-bit rounding).

Try it (CPU, about a second):
    python -c "import data; x, y = data.make_shapes(5000, seed=0); print(x.shape, y[:10])"
    python -c "import data; x, _ = data.make_shapes(256, seed=0); \
u, v = data.two_views(x, **data.augment_kwargs('shapes')); print(u.shape, v.shape)"
"""
import math
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets, transforms as T

# Channel mean/std of the training split, splatted into augment/normalize:
# augment(x, **AUGMENT_PRESETS['cifar'], **DATASET_STATS['cifar10']). ImageNet's values also serve
# ImageNet-100 and Tiny-ImageNet; shapes' are measured on make_shapes(50_000, seed=0) (and with
# fills=True for shapes100).
DATASET_STATS = {
    'shapes': dict(mean=(0.499, 0.499, 0.500), std=(0.317, 0.309, 0.321)),
    'shapes100': dict(mean=(0.499, 0.499, 0.500), std=(0.314, 0.305, 0.317)),
    'cifar10': dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    'cifar100': dict(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    'stl10': dict(mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713)),
    'imagenet': dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}
DATASET_STATS['imagefolder'] = DATASET_STATS['imagenet']  # ImageNet-100, Tiny-ImageNet, ...
DATASET_STATS['stl10_unlabeled'] = DATASET_STATS['stl10']

# ---------------------------------------------------------------------------------------------
# The offline dataset: shapes drawn from signed distance functions

# Each SDF takes coordinates (x, y) in units of the shape's radius r (y points down, as in images)
# and returns the signed distance to the outline in the same units, < 0 inside. Orientation is
# fixed: no augmentation rotates, so a rotated copy would be a nuisance nothing removes.
SHAPE_CLASSES = ('disk', 'square', 'triangle', 'plus', 'ring', 'star', 'bar', 'crescent', 'L',
                 'half_disk')


def _box(x, y, hx, hy):
    """Exact SDF of the axis-aligned box |x| <= hx, |y| <= hy."""
    dx, dy = x.abs() - hx, y.abs() - hy
    return torch.hypot(dx.clamp_min(0), dy.clamp_min(0)) + torch.maximum(dx, dy).clamp_max(0)


def _star(x, y):
    """Five points (tips at radius 1, dents at 0.4), one pointing up; approximate distance."""
    theta = torch.atan2(x, -y)  # angle from "up"
    return torch.hypot(x, y) - (0.4 + 0.6 * (0.5 + 0.5 * torch.cos(5 * theta)) ** 2)


_SDFS = (  # in SHAPE_CLASSES order; sizes chosen so the shapes cover similar areas
    lambda x, y: torch.hypot(x, y) - 0.85,
    lambda x, y: _box(x, y, 0.75, 0.75),
    lambda x, y: torch.maximum(y, 0.866 * x.abs() - 0.5 * y) - 0.55,  # edge normals 120 deg apart
    lambda x, y: torch.minimum(_box(x, y, 0.9, 0.3), _box(x, y, 0.3, 0.9)),
    lambda x, y: (torch.hypot(x, y) - 0.7).abs() - 0.22,
    _star,
    lambda x, y: _box(x, y, 1.0, 0.32),
    lambda x, y: torch.maximum(torch.hypot(x, y) - 0.9, 0.75 - torch.hypot(x - 0.4, y)),
    lambda x, y: torch.minimum(_box(x + 0.45, y, 0.3, 0.9), _box(x, y - 0.6, 0.75, 0.3)),
    lambda x, y: torch.maximum(torch.hypot(x, y - 0.35) - 1.0, y - 0.35),
)


def _stripes(t, period, half_width):
    """Signed distance to parallel lines t = period * (k + 1/2) of the given half width."""
    return ((t / period) % 1 - 0.5).abs() * period - half_width


# shapes100's fill patterns, as signed distances (< 0 painted) in units of the radius. Every one
# is symmetric under a horizontal flip and has a fixed phase at the shape's centre, so crop and
# flip keep the pattern; stripes are 0.3 radius wide (2.4-4.2 px at 32 px).
_P = 0.6  # period
FILL_PATTERNS = ('solid', 'outline', 'h_stripes', 'v_stripes', 'checker', 'dots', 'rings',
                 'grid', 'top_half', 'diagonal_grid')
_FILLS = (  # in FILL_PATTERNS order; x (n, 1, W) and y (n, H, 1) broadcast where both are used
    lambda x, y: torch.full_like(x, -1.0),
    lambda x, y: torch.full_like(x, 1.0),  # only the outline (drawn for every pattern)
    lambda x, y: _stripes(y, _P, _P / 4),
    lambda x, y: _stripes(x, _P, _P / 4),
    lambda x, y: _checker(_stripes(x, _P, _P / 4), _stripes(y, _P, _P / 4)),
    lambda x, y: torch.hypot(((x / _P) % 1 - 0.5) * _P, ((y / _P) % 1 - 0.5) * _P) - 0.2,
    lambda x, y: _stripes(torch.hypot(x, y), _P, _P / 4),
    lambda x, y: torch.minimum(_stripes(x, _P, 0.1), _stripes(y, _P, 0.1)),
    lambda x, y: y,
    lambda x, y: torch.minimum(_stripes((x + y) / 2 ** 0.5, _P, 0.1),
                               _stripes((x - y) / 2 ** 0.5, _P, 0.1)),
)


def _checker(dx, dy):
    """Painted where both stripe distances have one sign; distance to the nearer edge."""
    return -torch.sign(dx * dy) * torch.minimum(dx.abs(), dy.abs())


_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights exactly as torchvision's rgb_to_grayscale


def _colours(v, g):
    """Random RGB colours in [0, 1] with luminance exactly v (n, 1); random hue and saturation."""
    raw = torch.rand(len(v), 3, generator=g) * 2 - 1  # (n, 3)
    chroma = raw - raw @ torch.tensor(_LUMA)[:, None]  # (n, 3) luminance ~0 (weights sum to ~1)
    room = torch.where(chroma > 0, 1 - v, v) / chroma.abs().clamp_min(1e-6)  # (n, 3) to gamut edge
    return v + chroma * room.amin(1, keepdim=True) * torch.rand(len(v), 1, generator=g)  # (n, 3)


def shape_classes(fills=False):
    """Number of classes of make_shapes: 10 shapes, times 10 fill patterns with fills."""
    return len(SHAPE_CLASSES) * (len(FILL_PATTERNS) if fills else 1)


def make_shapes(n, *, seed, image_size=32, fills=False):
    """n images (n, 3, H, W) uint8 and labels (n,) int64, deterministic in seed; classes balanced.

    Nuisances and the augmentation that destroys each: colours -> colour jitter (strong hue) and
    grayscale; position and scale (radius 8-14 px at 32 px) -> random resized crop; pixel noise
    (std 3% of the range) -> the crop resamples it at a new offset. Foreground and background
    luminance differ by 0.3-0.7 so the shape survives grayscale. Backgrounds are flat: with strong
    colour gradients an encoder learned the background instead of the shape. Raw pixels are a
    poor feature: a linear probe on them scores 14-23% (chance 10%).
    Cost: about 0.3 s for n = 5,000 on one CPU core (3 s with fills).

    fills=True draws shapes100: label = shape + 10 * fill pattern (FILL_PATTERNS), each shape
    outlined 1.5 px wide and filled with its pattern in the foreground colour. The random draws
    are those of fills=False, so the 10-class dataset is unchanged by the option.
    """
    if n < 1 or image_size < 8:
        raise ValueError(f'make_shapes needs n >= 1 and image_size >= 8, got {n}, {image_size}')
    g = torch.Generator().manual_seed(seed)
    H = image_size
    labels = (torch.arange(n) % shape_classes(fills))[torch.randperm(n, generator=g)]  # (n,)
    shape = labels % len(SHAPE_CLASSES)  # (n,)
    r = (8 + 6 * torch.rand(n, generator=g)) * H / 32  # (n,) radius in pixels
    centre = 0.9 * r[:, None] + (H - 1.8 * r[:, None]) * torch.rand(n, 2, generator=g)  # (n, 2)
    v_bg = torch.rand(n, 1, generator=g)  # (n, 1) background luminance
    v_fg = (v_bg + 0.3 + 0.4 * torch.rand(n, 1, generator=g)) % 1  # (n, 1) >= 0.3 away
    bg, fg = _colours(v_bg, g), _colours(v_fg, g)  # (n, 3) each
    pix = torch.arange(H) + 0.5  # (H,) pixel centres
    images = torch.empty(n, 3, H, H, dtype=torch.uint8)
    for k, sdf in enumerate(_SDFS):  # one vectorised pass per class keeps the peak memory low
        i = (shape == k).nonzero().squeeze(1)  # (n_k,)
        rk = r[i, None, None]  # (n_k, 1, 1)
        x = (pix[None, None, :] - centre[i, 0, None, None]) / rk  # (n_k, 1, W)
        y = (pix[None, :, None] - centre[i, 1, None, None]) / rk  # (n_k, H, 1)
        d = sdf(x, y) * rk  # (n_k, H, W) signed distance in pixels
        alpha = (0.5 - d).clamp(0, 1)  # (n_k, H, W) 1-px antialiased
        if fills:
            outline = (0.5 - ((d + 0.75).abs() - 0.75)).clamp(0, 1)  # (n_k, H, W)
            fill_of = labels[i] // len(SHAPE_CLASSES)  # (n_k,)
            for f, fill in enumerate(_FILLS):
                j = (fill_of == f).nonzero().squeeze(1)  # (n_kf,)
                painted = (0.5 - fill(x[j], y[j]) * rk[j]).clamp(0, 1)  # (n_kf, H, W)
                alpha[j] = alpha[j] * torch.maximum(painted, outline[j])
        alpha = alpha[:, None]  # (n_k, 1, H, W)
        img = bg[i, :, None, None] + alpha * (fg[i] - bg[i])[:, :, None, None]  # (n_k, 3, H, W)
        img = img + 0.03 * torch.randn(img.shape, generator=g)
        images[i] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels


# ---------------------------------------------------------------------------------------------
# Real datasets from torchvision's on-disk formats (download=True lets torchvision fetch them)

_CIFAR = {  # name -> (folder, train files, test files, label key, classes, torchvision class)
    'cifar10': ('cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], ['test_batch'],
                'labels', 10, datasets.CIFAR10),
    'cifar100': ('cifar-100-python', ['train'], ['test'], 'fine_labels', 100, datasets.CIFAR100),
}
GENERATED = ('shapes', 'shapes100')  # drawn by make_shapes, offline; the rest are read from disk
# Every dataset train.py can train on. 'imagefolder' is an ImageNet-style tree (ImageNet-100,
# Tiny-ImageNet) streamed through ImageFolderPairs; the others load into memory (load_dataset).
DATASETS = ('shapes', 'shapes100', 'cifar10', 'cifar100', 'stl10', 'stl10_unlabeled', 'imagefolder')


def _require(folder, files):
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f'missing {", ".join(missing)} in {folder}. Fetch them with download=True (python '
            f'train.py --download) on a machine with internet, or place the files there.')


def _read_cifar(path, label_key, classes):
    """One pickled batch: {b'data': uint8 (N, 3072) rows of R, G, B planes, label_key: [N]}."""
    try:  # the official Python 2 pickles (unpickling runs code: only load files you trust)
        with open(path, 'rb') as f:
            d = {k.decode() if isinstance(k, bytes) else k: v
                 for k, v in pickle.load(f, encoding='bytes').items()}
        x, y = np.asarray(d['data']), np.asarray(d[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, AttributeError, KeyError, TypeError) as e:
        raise ValueError(f'{path} is not a CIFAR batch file ({e!r}); delete it and re-download') \
            from e
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),) \
            or y.min(initial=0) < 0 or y.max(initial=0) >= classes:
        raise ValueError(f'{path}: data {x.dtype} {x.shape} / labels {y.shape} are not CIFAR '
                         f'(uint8 (N, 3072), N labels in [0, {classes}))')
    return x.reshape(-1, 3, 32, 32), y


def _read_stl(folder, split):
    """STL-10 binaries: uint8 images stored column-major (transposed), labels 1..10 -> 0..9."""
    x = np.fromfile(folder / f'{split}_X.bin', dtype=np.uint8)
    if x.size == 0 or x.size % (3 * 96 * 96):
        raise ValueError(f'{folder / f"{split}_X.bin"}: {x.size} bytes is not N x 3 x 96 x 96')
    x = x.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)  # (N, 3, H, W), rows and columns swapped
    if split == 'unlabeled':
        return x, np.full(len(x), -1, dtype=np.int64)  # no labels: -1
    y = np.fromfile(folder / f'{split}_y.bin', dtype=np.uint8).astype(np.int64) - 1
    if y.shape != (len(x),) or y.min() < 0 or y.max() > 9:
        raise ValueError(f'{folder / f"{split}_y.bin"}: expected {len(x)} labels in 1..10')
    return x, y


def load_dataset(name, *, data_dir, train, download=False, seed=0, n_shapes=None):
    """Whole split in memory: images (N, 3, H, W) uint8 on CPU, labels (N,) int64, num_classes.

    'shapes' is generated (n_shapes images, default 5,000 in each split: at 5,000 test images
    the sampling noise of an accuracy near 50 % is +-0.7 points; train uses seed 2*seed and
    test 2*seed+1, so the splits never share an image; data_dir is ignored).
    'stl10_unlabeled' is STL-10's 100,000 unlabeled images (2.8 GB; labels -1; train only).
    """
    if name in GENERATED:
        n = n_shapes if n_shapes is not None else 5000
        fills = name == 'shapes100'
        x, y = make_shapes(n, seed=2 * seed + (0 if train else 1), fills=fills)
        return x, y, shape_classes(fills)
    if name not in DATASETS or name == 'imagefolder':
        raise ValueError(f'load_dataset reads {[d for d in DATASETS if d != "imagefolder"]}, got '
                         f'{name!r} (an imagefolder tree streams through ImageFolderPairs)')
    root = Path(data_dir)
    if name in _CIFAR:
        sub, train_files, test_files, label_key, classes, tv_class = _CIFAR[name]
        files = train_files if train else test_files
        if download:
            tv_class(root, train=train, download=True)
        _require(root / sub, files)
        parts = [_read_cifar(root / sub / f, label_key, classes) for f in files]
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return torch.from_numpy(x), torch.from_numpy(y), classes
    if name == 'stl10_unlabeled' and not train:
        raise ValueError("stl10_unlabeled has no test split; evaluate on 'stl10'")
    split = 'unlabeled' if name == 'stl10_unlabeled' else ('train' if train else 'test')
    if download:
        datasets.STL10(root, split=split, download=True)
    labelled = split != 'unlabeled'
    _require(root / 'stl10_binary', [f'{split}_X.bin'] + [f'{split}_y.bin'] * labelled)
    x, y = _read_stl(root / 'stl10_binary', split)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), 10


# ---------------------------------------------------------------------------------------------
# Augmentation as batched tensor operations (SimCLR, App. D)

# kwargs of augment (and of imagefolder_two_view_transform); mean/std come from DATASET_STATS.
_SIMCLR_IMAGENET = dict(scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), p_jitter=0.8, p_gray=0.2,
                        p_blur=0.5, blur_sigma=(0.1, 2.0))
AUGMENT_PRESETS = {
    'cifar': dict(size=32, scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), p_jitter=0.8,
                  p_gray=0.2, p_blur=0.0),  # the paper's CIFAR preset
    'imagenet': dict(size=224, **_SIMCLR_IMAGENET),
    'stl10': dict(size=96, **_SIMCLR_IMAGENET),
    # Offline demo. scale (0.2, 1) often cut the shape out of the crop; weak hue jitter let the
    # colours identify an image, so hue covers the whole circle (0.5).
    'shapes': dict(size=32, scale=(0.35, 1.0), jitter=(0.8, 0.8, 0.8, 0.5), p_jitter=0.8,
                   p_gray=0.2, p_blur=0.0),
}

# dataset -> its AUGMENT_PRESETS entry (ImageFolder trees are ImageNet-like)
PRESET_OF = {'shapes': 'shapes', 'shapes100': 'shapes', 'cifar10': 'cifar', 'cifar100': 'cifar',
             'stl10': 'stl10', 'stl10_unlabeled': 'stl10', 'imagefolder': 'imagenet'}


def augment_kwargs(dataset, image_size=0):
    """augment's keyword arguments for a dataset of DATASETS: its preset, its channel statistics,
    and the output side image_size in pixels when > 0 (0 keeps the preset's)."""
    if dataset not in DATASETS or image_size < 0:
        raise ValueError(f'augment_kwargs needs a dataset of {DATASETS} and image_size >= 0, '
                         f'got {dataset!r}, {image_size}')
    kwargs = dict(AUGMENT_PRESETS[PRESET_OF[dataset]], **DATASET_STATS[dataset])
    if image_size:
        kwargs['size'] = image_size
    return kwargs


def blur_kernel_size(size):
    """SimCLR's Gaussian kernel: about 10% of the image side, odd (32 -> 3, 96 -> 9, 224 -> 23)."""
    return int(0.1 * size) // 2 * 2 + 1


def batch_crop_flip(x, *, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p_flip=0.5,
                    generator=None):
    """torchvision's RandomResizedCrop(size, scale, ratio) then RandomHorizontalFlip(p_flip), each
    image its own box: (B, C, H, W) float -> (B, C, S, S).

    The box as RandomResizedCrop.get_params: 10 tries of an area ~ U(scale) * H W and an aspect
    w / h log-uniform in ratio; sides rounded to whole pixels; the first try that fits wins, at a
    top-left corner uniform over every whole-pixel position. If no try fits, a centre crop with
    the aspect clamped into ratio. The box is then resized bilinearly as torchvision's
    resized_crop(antialias=False): output pixel k reads box coordinate (k + 0.5) h / S - 0.5,
    clamped into the box, so no output pixel reads outside the box.
    """
    if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f'need 0 < scale <= 1 and 0 < ratio, got {scale}, {ratio}')
    B, _, H, W = x.shape
    area = H * W * torch.empty(B, 10, device=x.device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(B, 10, device=x.device).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)  # (B, 10)
    w = (area * log_ratio.exp()).sqrt().round()  # (B, 10) whole pixels, round half to even
    h = (area / log_ratio.exp()).sqrt().round()  # (B, 10) as Python's round in torchvision
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # (B, 10)
    first = fits.int().argmax(1, keepdim=True)  # (B, 1) the first try that fits
    found = fits.any(1)  # (B,)
    r = min(max(W / H, ratio[0]), ratio[1])  # fallback: the image's aspect clamped into ratio
    w0, h0 = (W, round(W / r)) if W / H <= r else (round(H * r), H)
    w = torch.where(found, w.gather(1, first)[:, 0], w0)  # (B,)
    h = torch.where(found, h.gather(1, first)[:, 0], h0)  # (B,)
    u = torch.rand(B, 3, generator=generator, device=x.device)  # (B, 3) in [0, 1)
    top = torch.where(found, (u[:, 0] * (H - h + 1)).floor(), (H - h0) // 2)  # (B,) 0 .. H - h
    left = torch.where(found, (u[:, 1] * (W - w + 1)).floor(), (W - w0) // 2)  # (B,) 0 .. W - w
    # Output pixel k (of S) reads box coordinate (k + 1/2) w / S - 1/2, clamped into [0, w - 1];
    # a flipped image reads its row backwards, k -> S - 1 - k.
    k = torch.arange(size, device=x.device) + 0.5  # (S,) output pixel centres
    kx = torch.where((u[:, 2] < p_flip)[:, None], size - k, k)  # (B, S)
    bx = torch.minimum((kx * (w / size)[:, None] - 0.5).clamp_min(0), (w - 1)[:, None])  # (B, S)
    by = torch.minimum((k * (h / size)[:, None] - 0.5).clamp_min(0), (h - 1)[:, None])  # (B, S)
    gx = (2 * (left[:, None] + bx) + 1) / W - 1  # (B, S) grid_sample's coordinates: pixel p
    gy = (2 * (top[:, None] + by) + 1) / H - 1  # (B, S) at (2 p + 1) / W - 1 (align_corners=False)
    grid = torch.stack([gx[:, None, :].expand(B, size, size),
                        gy[:, :, None].expand(B, size, size)], 3)  # (B, S, S, 2)
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)


def batch_color_jitter(x, *, jitter=(0.4, 0.4, 0.4, 0.1), p_jitter=0.8, generator=None):
    """torchvision's RandomApply([ColorJitter(*jitter)], p_jitter) on each image: (B, 3, H, W) in
    [0, 1] -> same. jitter = (brightness, contrast, saturation, hue): factors ~ U(max(0, 1 - j),
    1 + j) for the first three, a hue shift ~ U(-j, j) of the circle, drawn per image, and the four
    operations applied in a random order per image, as ColorJitter does.

    Brightness, contrast and saturation are each a blend f x + (1 - f) t, clamped to [0, 1], with
    t = 0, the mean luma of the image, or the luma of each pixel; an image for which a step is not
    its turn gets f = 1, which leaves it exactly as it was (torch.lerp returns x at weight 0). The
    order splits into the hue's place (0-3) and an order of the other three, so the batch runs
    three blend steps before the hue and three after, each image blending in those before its hue
    and those after: one pass of the costly hue rotation instead of four.
    """
    if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
        raise ValueError(f'need jitter = (brightness, contrast, saturation, hue) >= 0 with hue '
                         f'<= 0.5, got {jitter}')
    if p_jitter == 0 or max(jitter) == 0:
        return x
    B = x.shape[0]
    u = torch.rand(B, 6, generator=generator, device=x.device)  # (B, 6)
    f = torch.stack([max(0, 1 - j) + (1 + j - max(0, 1 - j)) * u[:, n]
                     for n, j in enumerate(jitter[:3])], 1)  # (B, 3) blend factors
    shift = jitter[3] * (2 * u[:, 3] - 1)  # (B,) hue shift, a fraction of the circle
    on = u[:, 4] < p_jitter  # (B,)
    # Each image's order: the hue's place, 0-3, and an order of brightness (0), contrast (1) and
    # saturation (2); together uniform over the 24 orders of the four operations.
    hue_at = (4 * u[:, 5]).long()  # (B,)
    order = torch.rand(B, 3, generator=generator, device=x.device).argsort(1)  # (B, 3)

    # A fresh (B, 3, H, W) or (B, H, W) buffer costs about as much as the arithmetic on it (page
    # faults), so the steps work in place: on one copy of x and two planes reused.
    x = x.clone()
    luma, k = torch.empty_like(x[:, 0]), torch.empty_like(x[:, 0])  # (B, H, W) each
    for step in range(6):
        if step == 3 and jitter[3] > 0:  # hue rotation through HSV, as torchvision's adjust_hue
            r, g, b = x.unbind(1)  # (B, H, W) each
            v = x.amax(1)  # (B, H, W) value
            chroma = x.amin(1).neg_().add_(v)  # (B, H, W) max - min
            # 6 x hue = (g - b) / chroma if r is the max, else 2 + (b - r) / chroma if g is, else
            # 4 + (r - g) / chroma. Picked by lerp with weights sign(v - g), sign(v - r): 0 at
            # the max, else 1 (lerp is exact at 0 and 1; torch.where over a bool mask is several
            # times slower on a CPU).
            h = (b - r).add_(chroma, alpha=2).lerp_((r - g).add_(chroma, alpha=4), (v - g).sign_())
            h = (g - b).lerp_(h, (v - r).sign_())  # (B, H, W) numerator of 6 x hue
            h.div_(chroma.clamp_min(1e-8)).add_(6 * shift[:, None, None])  # (B, H, W) in [-4, 8]
            # HSV -> RGB: channel n is v - chroma clamp(2 - d_n, 0, 1), d_n the distance from
            # k_n = 6 hue - (3, 5, 7)_n to the nearest multiple of 6; for |k| <= 12 that is
            # d = 3 - |||k| - 6| - 3|. torchvision's piecewise-linear table, without a modulo.
            for n in range(3):  # channel by channel, into x: v, chroma and h hold what it needs
                torch.sub(h, 3 + 2 * n, out=k).abs_().sub_(6).abs_().sub_(3).abs_().sub_(1)
                torch.addcmul(v, chroma, k.clamp_(0, 1), value=-1, out=k)  # (B, H, W) channel n
                x[:, n].lerp_(k, on.float()[:, None, None])  # jitter off: x, exactly
        op = order[:, step % 3]  # (B,) 0 brightness, 1 contrast, 2 saturation
        turn = on & ((step % 3 < hue_at) if step < 3 else (step % 3 >= hue_at))  # (B,)
        w = torch.where(turn, 1 - f.gather(1, op[:, None])[:, 0], 0.0)[:, None, None, None]
        # ITU-R 601 luma, torchvision's rgb_to_grayscale weights
        torch.mul(x[:, 0], 0.2989, out=luma).add_(x[:, 1], alpha=0.587).add_(x[:, 2], alpha=0.114)
        mean = luma.mean((1, 2), keepdim=True)  # (B, 1, 1)
        target = luma.mul_((op == 2).float()[:, None, None]).add_(
            (op == 1).float()[:, None, None] * mean)  # (B, H, W); 0 for brightness
        x.lerp_(target[:, None], w).clamp_(0, 1)  # (1 - w) x + w target, exactly x where w = 0
    return x


def batch_grayscale(x, *, p_gray=0.2, generator=None):
    """torchvision's RandomGrayscale(p_gray): each image, with probability p_gray, becomes its
    ITU-R 601 luma in all three channels. (B, 3, H, W) -> same."""
    if p_gray == 0:
        return x
    gray = torch.rand(x.shape[0], generator=generator, device=x.device) < p_gray  # (B,)
    luma = (x[:, 0] * 0.2989).add_(x[:, 1], alpha=0.587).add_(x[:, 2], alpha=0.114)  # (B, H, W)
    return x.lerp(luma[:, None], gray.float()[:, None, None, None])  # (B, 3, H, W) exact: w 0, 1


def batch_blur(x, *, p_blur=0.5, sigma=(0.1, 2.0), kernel_size, generator=None):
    """torchvision's RandomApply([GaussianBlur(kernel_size, sigma)], p_blur) on each image, sigma
    ~ U(sigma) per image: (B, C, H, W) -> same. Separable, reflect padding; an image left
    unblurred gets the kernel (0, ..., 1, ..., 0). One grouped convolution per direction."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be odd and >= 1, got {kernel_size}')
    if p_blur == 0:
        return x
    B, C, H, W = x.shape
    K = kernel_size
    u = torch.rand(B, 2, generator=generator, device=x.device)  # (B, 2)
    s = sigma[0] + (sigma[1] - sigma[0]) * u[:, 0]  # (B,)
    t = torch.arange(K, device=x.device) - K // 2  # (K,) taps
    kern = torch.exp(-0.5 * (t / s[:, None]) ** 2)  # (B, K)
    kern = torch.where((u[:, 1] < p_blur)[:, None], kern / kern.sum(1, keepdim=True), t == 0)
    kern = kern.repeat_interleave(C, 0)  # (B C, K) the image's kernel for each channel
    y = F.pad(x.reshape(1, B * C, H, W), [K // 2] * 4, mode='reflect')  # (1, B C, H+K-1, W+K-1)
    y = F.conv2d(y, kern[:, None, :, None], groups=B * C)  # (1, B C, H, W + K - 1) vertical
    y = F.conv2d(y, kern[:, None, None, :], groups=B * C)  # (1, B C, H, W) horizontal
    return y.view(B, C, H, W)


def normalize(x, *, mean, std):
    """(B, 3, H, W) uint8, or float in [0, 1] -> (x - mean) / std per channel, float. Also the
    evaluation path (no augmentation)."""
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f'mean and std need 3 entries and std > 0, got {mean}, {std}')
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()  # (B, 3, H, W)
    mean, std = [torch.stack([torch.full((1, 1), a, device=x.device) for a in stat])
                 for stat in (mean, std)]  # (3, 1, 1) each, filled on the device: no copy
    return x.sub(mean).div_(std)  # (B, 3, H, W)


def augment(images, *, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p_flip=0.5,
            jitter=(0.4, 0.4, 0.4, 0.1), p_jitter=0.8, p_gray=0.2, p_blur=0.0,
            blur_sigma=(0.1, 2.0), mean, std, generator=None):
    """One SimCLR view of every image: (B, 3, H, W) uint8 or [0, 1] float -> (B, 3, S, S) float.

    torchvision's pipeline, in its order: RandomResizedCrop(size, scale, ratio), horizontal flip
    (p_flip), ColorJitter(*jitter) with probability p_jitter, RandomGrayscale(p_gray),
    GaussianBlur(blur_kernel_size(size), blur_sigma) with probability p_blur, normalisation. All
    randomness comes from generator (on the images' device; None = the global RNG), so a seeded
    generator reproduces a batch.
    """
    _check_augment_args(images, size, scale, ratio, jitter, blur_sigma, mean, std, p_flip=p_flip,
                        p_jitter=p_jitter, p_gray=p_gray, p_blur=p_blur)
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()  # (B,3,H,W)
    x = batch_crop_flip(x, size=size, scale=scale, ratio=ratio, p_flip=p_flip,
                        generator=generator)  # (B, 3, S, S)
    x = batch_color_jitter(x, jitter=jitter, p_jitter=p_jitter, generator=generator)
    x = batch_grayscale(x, p_gray=p_gray, generator=generator)
    x = batch_blur(x, p_blur=p_blur, sigma=blur_sigma, kernel_size=blur_kernel_size(size),
                   generator=generator)
    return normalize(x, mean=mean, std=std)  # (B, 3, S, S)


def two_views(images, *, generator=None, **augment_kwargs):
    """Two independent views (x, y) of every image: the positive pairs (x_i, y_i) of §3."""
    if images.dtype == torch.uint8:  # converted once for both views
        images = images.float().div_(255)  # (B, 3, H, W)
    return (augment(images, generator=generator, **augment_kwargs),
            augment(images, generator=generator, **augment_kwargs))


def _check_augment_args(images, size, scale, ratio, jitter, blur_sigma, mean, std,
                        **probabilities):
    """augment's arguments in full (the batch functions check only one line each)."""
    if images is not None and (images.ndim != 4 or images.shape[1] != 3 or not (
            images.dtype == torch.uint8 or images.is_floating_point())):
        raise ValueError(f'images must be (B, 3, H, W) uint8 or float in [0, 1], got '
                         f'{tuple(images.shape)} {images.dtype}')
    if not (isinstance(size, int) and size >= 1):
        raise ValueError(f'size must be an int >= 1, got {size!r}')
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f'scale must satisfy 0 < lo <= hi <= 1, got {scale}')
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f'ratio must satisfy 0 < lo <= hi, got {ratio}')
    if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
        raise ValueError(f'jitter = (brightness, contrast, saturation, hue) >= 0, hue <= 0.5, '
                         f'got {jitter}')
    if not 0 < blur_sigma[0] <= blur_sigma[1]:
        raise ValueError(f'blur_sigma must satisfy 0 < lo <= hi, got {blur_sigma}')
    for name, p in probabilities.items():
        if not 0 <= p <= 1:
            raise ValueError(f'{name} is a probability, got {p}')
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f'mean and std need 3 entries and std > 0, got {mean}, {std}')


# ---------------------------------------------------------------------------------------------
# Batches of one epoch

def batch_order(n, m, *, epoch, seed, fixed=False):
    """Instance indices of every batch of one epoch: (n // m, m) int64; the last n % m dropped.

    fixed=False (practice): a fresh permutation per epoch, seeded by (seed, epoch), so a run
    resumed at any epoch sees the same batches; the dropped remainder changes every epoch.
    fixed=True (theory, Thm 5.5): I_k = [m(k-1)+1 : mk] of one permutation drawn from seed alone,
    the same every epoch; the same n % m instances are then never trained on.
    """
    if not 2 <= m <= n:
        raise ValueError(f'batch_order needs 2 <= m <= n, got m={m}, n={n}')
    if seed < 0 or epoch < 0:
        raise ValueError(f'seed and epoch must be >= 0, got {seed}, {epoch}')
    key = [seed] if fixed else [seed, epoch]  # SeedSequence mixes the pair into a well-spread seed
    g = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
    b = n // m  # batches per epoch
    return torch.randperm(n, generator=g)[: b * m].view(b, m)  # (b, m)


# ---------------------------------------------------------------------------------------------
# ImageFolder trees (ImageNet-100, Tiny-ImageNet): PIL decoding and augmentation in workers

class ImageFolderPairs(torch.utils.data.Dataset):
    """(x1, x2, label, index): two independent draws of transform on one image of an
    ImageFolder tree (root/class_name/image.jpg). Use with a DataLoader and num_workers > 0."""

    def __init__(self, root, transform):
        if not Path(root).is_dir():
            raise FileNotFoundError(f'{root} is not a directory. Expected an ImageFolder tree '
                                    f'root/<class>/<image>; prepare it from the dataset archive.')
        self.folder = datasets.ImageFolder(root)
        self.transform = transform
        self.num_classes = len(self.folder.classes)

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        image, label = self.folder[index]  # PIL RGB image, int
        return self.transform(image), self.transform(image), label, index


def imagefolder_two_view_transform(*, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                   p_flip=0.5, jitter=(0.4, 0.4, 0.4, 0.1), p_jitter=0.8,
                                   p_gray=0.2, p_blur=0.0, blur_sigma=(0.1, 2.0), mean, std):
    """`augment` as a torchvision PIL pipeline, same keywords and defaults (pass
    **AUGMENT_PRESETS['imagenet']): one view, PIL image -> (3, S, S) float. ImageFolderPairs draws
    it twice. Unlike `augment`, it antialiases when downscaling and rounds colours to 8 bits
    after each operation (the module docstring says by how much)."""
    _check_augment_args(None, size, scale, ratio, jitter, blur_sigma, mean, std, p_flip=p_flip,
                        p_jitter=p_jitter, p_gray=p_gray, p_blur=p_blur)
    return T.Compose([
        T.RandomResizedCrop(size, scale=scale, ratio=ratio),
        T.RandomHorizontalFlip(p_flip),
        T.RandomApply([T.ColorJitter(*jitter)], p=p_jitter),
        T.RandomGrayscale(p_gray),
        T.RandomApply([T.GaussianBlur(blur_kernel_size(size), sigma=blur_sigma)], p=p_blur),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def imagefolder_images(folder, indices, size):
    """Decode images of a torchvision ImageFolder into memory: short side to size * 8/7, centre
    crop to size -> (k, 3, size, size) uint8 and (k,) labels. For the small subsets whose
    similarity statistics are logged; training itself streams through ImageFolderPairs."""
    crop = T.Compose([T.Resize(round(size * 8 / 7)), T.CenterCrop(size), T.PILToTensor()])
    pairs = [folder[int(i)] for i in indices]  # (PIL image, label)
    return torch.stack([crop(img) for img, _ in pairs]), torch.tensor([y for _, y in pairs])


def imagefolder_eval_transform(size, mean, std):
    """Evaluation: resize the short side to size * 8/7 (256 for 224), centre crop, normalise."""
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f'mean and std need 3 entries and std > 0, got {mean}, {std}')
    return T.Compose([T.Resize(round(size * 8 / 7)), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(mean, std)])
