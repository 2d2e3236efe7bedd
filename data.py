"""Data for contrastive learning: datasets as uint8 tensors, SimCLR augmentation as batched tensor
operations, and the batch schedule (reshuffled every epoch, or the fixed batches of Thm 5.5).

- `make_shapes` draws the offline default dataset: 10 shape classes from signed distance
  functions; colour, position, scale and pixel noise are nuisances, each destroyed by some
  augmentation, so the shape is the only thing two views share.
- `load_dataset` reads shapes, CIFAR-10/100 and STL-10 (torchvision's on-disk formats) into memory.
- `augment` / `two_views`: SimCLR's crop, flip, colour jitter, grayscale and blur on a whole batch
  with per-sample random parameters, on whatever device the images are on (App. D, PAPER.md §5).
  One CPU core: ~36,000 img/s at 32 px (cifar / shapes presets), ~3,000 img/s at 96 px (stl10);
  `python bench.py` times it against torchvision's per-image PIL pipeline.
- `batch_order`: the instance indices of every batch of one epoch.
- `ImageFolderPairs` and the two `imagefolder_*_transform`s: the PIL path for ImageNet-style trees.

Shapes: N images in a dataset, B images in a batch, C = 3 channels, H = W input side, S output
side, m pairs per batch, n training-set size.

Try it (CPU, about a second):
    python -c "import data; x, y = data.make_shapes(5000, seed=0); print(x.shape, y[:10])"
    python -c "import data; x, _ = data.make_shapes(256, seed=0); \
u, v = data.two_views(x, **data.AUGMENT_PRESETS['shapes'], **data.DATASET_STATS['shapes']); \
print(u.shape, v.shape)"
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
# ImageNet-100 and Tiny-ImageNet; shapes' are measured on make_shapes(50_000, seed=0).
DATASET_STATS = {
    'shapes': dict(mean=(0.499, 0.499, 0.500), std=(0.317, 0.309, 0.321)),
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
_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights exactly as torchvision's rgb_to_grayscale


def _colours(v, g):
    """Random RGB colours in [0, 1] with luminance exactly v (n, 1); random hue and saturation."""
    raw = torch.rand(len(v), 3, generator=g) * 2 - 1  # (n, 3)
    chroma = raw - raw @ torch.tensor(_LUMA)[:, None]  # (n, 3) luminance ~0 (weights sum to ~1)
    room = torch.where(chroma > 0, 1 - v, v) / chroma.abs().clamp_min(1e-6)  # (n, 3) to gamut edge
    return v + chroma * room.amin(1, keepdim=True) * torch.rand(len(v), 1, generator=g)  # (n, 3)


def make_shapes(n, *, seed, image_size=32):
    """n images (n, 3, H, W) uint8 and labels (n,) int64, deterministic in seed; classes balanced.

    Nuisances and the augmentation that destroys each: colours -> colour jitter (strong hue) and
    grayscale; position and scale (radius 8-14 px at 32 px) -> random resized crop; pixel noise
    (std 3% of the range) -> the crop resamples it at a new offset. Foreground and background
    luminance differ by 0.3-0.7 so the shape survives grayscale. Backgrounds are flat: with strong
    colour gradients an encoder learned the background instead of the shape. Raw pixels are a
    poor feature: a linear probe on them scores 14-23% (chance 10%).
    Cost: about 0.3 s for n = 5,000 on one CPU core.
    """
    if n < 1 or image_size < 8:
        raise ValueError(f'make_shapes needs n >= 1 and image_size >= 8, got {n}, {image_size}')
    g = torch.Generator().manual_seed(seed)
    H = image_size
    labels = (torch.arange(n) % len(SHAPE_CLASSES))[torch.randperm(n, generator=g)]  # (n,)
    r = (8 + 6 * torch.rand(n, generator=g)) * H / 32  # (n,) radius in pixels
    centre = 0.9 * r[:, None] + (H - 1.8 * r[:, None]) * torch.rand(n, 2, generator=g)  # (n, 2)
    v_bg = torch.rand(n, 1, generator=g)  # (n, 1) background luminance
    v_fg = (v_bg + 0.3 + 0.4 * torch.rand(n, 1, generator=g)) % 1  # (n, 1) >= 0.3 away
    bg, fg = _colours(v_bg, g), _colours(v_fg, g)  # (n, 3) each
    pix = torch.arange(H) + 0.5  # (H,) pixel centres
    images = torch.empty(n, 3, H, H, dtype=torch.uint8)
    for k, sdf in enumerate(_SDFS):  # one vectorised pass per class keeps the peak memory low
        i = (labels == k).nonzero().squeeze(1)  # (n_k,)
        rk = r[i, None, None]  # (n_k, 1, 1)
        x = (pix[None, None, :] - centre[i, 0, None, None]) / rk  # (n_k, 1, W)
        y = (pix[None, :, None] - centre[i, 1, None, None]) / rk  # (n_k, H, 1)
        alpha = (0.5 - sdf(x, y) * rk).clamp(0, 1)[:, None]  # (n_k, 1, H, W) 1-px antialiased
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
DATASETS = ('shapes', 'cifar10', 'cifar100', 'stl10', 'stl10_unlabeled')


def _require(folder, files):
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f'missing {", ".join(missing)} in {folder}. Pass download=True (--download) on a '
            f'machine with internet, or place the files there.')


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

    'shapes' is generated (n_shapes images, default 5,000 train / 1,000 test; train uses seed
    2*seed and test 2*seed+1, so the splits never share an image; data_dir is ignored).
    'stl10_unlabeled' is STL-10's 100,000 unlabeled images (2.8 GB; labels -1; train only).
    """
    if name == 'shapes':
        n = n_shapes if n_shapes is not None else (5000 if train else 1000)
        return (*make_shapes(n, seed=2 * seed + (0 if train else 1)), len(SHAPE_CLASSES))
    if name not in DATASETS:
        raise ValueError(f'unknown dataset {name!r}; choose from {DATASETS}')
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
PRESET_OF = {'shapes': 'shapes', 'cifar10': 'cifar', 'cifar100': 'cifar', 'stl10': 'stl10',
             'stl10_unlabeled': 'stl10', 'imagefolder': 'imagenet'}


def _check_augment_args(size, scale, ratio, jitter, blur_sigma, mean, std, **probabilities):
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
    _check_stats(mean, std)


def _check_stats(mean, std):
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f'mean and std need 3 entries and std > 0, got {mean}, {std}')


def _to_unit(images):
    """uint8 -> float in [0, 1]; float images are taken to be in [0, 1] already."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'images must be (B, 3, H, W), got {tuple(images.shape)}')
    if images.dtype == torch.uint8:
        return images.float() / 255
    if not images.is_floating_point():
        raise ValueError(f'images must be uint8 or float in [0, 1], got {images.dtype}')
    return images.float()


def normalize(images, *, mean, std):
    """Evaluation path, no augmentation: (B, 3, H, W) uint8 or [0, 1] float -> normalised float."""
    _check_stats(mean, std)
    x = _to_unit(images)  # (B, 3, H, W)
    return (x - x.new_tensor(mean)[:, None, None]) / x.new_tensor(std)[:, None, None]


def _gray(x):
    """Luma. The explicit weighted sum takes 0.2 ms per 512 images of 32 px on 2 cores,
    einsum('bchw,c->bhw') 0.7 ms."""
    r, g, b = x.unbind(1)  # (b, H, W) each
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b)[:, None]  # (b, 1, H, W)


def _blend(x, y, f):
    """torchvision's _blend: f * x + (1 - f) * y per sample, clamped to [0, 1]. One lerp
    instead of four elementwise ops: 2x faster."""
    return torch.lerp(y, x, f[:, None, None, None]).clamp_(0, 1)  # y + f (x - y)


def _hue(x, shift):
    """Rotate the hue by shift (fraction of the circle) through HSV, as torchvision's adjust_hue.

    HSV rather than a YIQ rotation: it matches torchvision (and SimCLR's TF code) to 1e-5 and
    never leaves the RGB gamut. Cost: ~4 ms per 512 images of 32 px on 2 CPU cores (was 7 ms:
    x.max(1) and x.min(1), which also find indices, took 2 ms each; amax and amin 0.1 ms)."""
    v = x.amax(1)  # (b, H, W) value
    delta = v - x.amin(1)  # (b, H, W) chroma = saturation x value
    r, g, b = x.unbind(1)  # (b, H, W) each
    h = torch.where(r == v, g - b, torch.where(g == v, b - r + 2 * delta, r - g + 4 * delta))
    h = h / delta.clamp_min(1e-8) + 6 * shift[:, None, None]  # (b, H, W) 6 x hue, rotated
    # HSV -> RGB: channel n in (R, G, B) = (5, 3, 1) is v - chroma * clamp(min(k, 4 - k), 0, 1),
    # k = (n + 6 hue) mod 6.
    k = (x.new_tensor([5.0, 3.0, 1.0])[:, None, None] + h[:, None]).remainder_(6)  # (b,3,H,W)
    return v[:, None] - delta[:, None] * torch.minimum(k, 4 - k).clamp_(0, 1)


_JITTER_OPS = (  # brightness, contrast, saturation, hue; each takes per-sample factors (b,)
    lambda x, f: (x * f[:, None, None, None]).clamp_(0, 1),  # _blend with black; 1.4x faster
    lambda x, f: _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), f),
    lambda x, f: _blend(x, _gray(x), f),
    _hue,
)


def blur_kernel_size(size):
    """SimCLR's Gaussian kernel: about 10% of the image side, odd (32 -> 3, 96 -> 9, 224 -> 23)."""
    return int(0.1 * size) // 2 * 2 + 1


def augment(images, *, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p_flip=0.5,
            jitter=(0.4, 0.4, 0.4, 0.1), p_jitter=0.8, p_gray=0.2, p_blur=0.0,
            blur_sigma=(0.1, 2.0), mean, std, generator=None):
    """One SimCLR view of every image: (B, 3, H, W) uint8 or [0, 1] float -> (B, 3, S, S) float.

    In torchvision's order and semantics: RandomResizedCrop(size, scale, ratio) with horizontal
    flip, ColorJitter(*jitter) with probability p_jitter, RandomGrayscale(p_gray), GaussianBlur
    (sigma ~ U(blur_sigma)) with probability p_blur, then normalisation. All randomness comes from
    generator (on the images' device; None = global RNG), so a seeded generator reproduces a batch.
    """
    _check_augment_args(size, scale, ratio, jitter, blur_sigma, mean, std, p_flip=p_flip,
                        p_jitter=p_jitter, p_gray=p_gray, p_blur=p_blur)
    x = _to_unit(images)  # (B, 3, H, W)
    B, _, H, W = x.shape

    def rand(*shape):  # U[0, 1) on the images' device
        return torch.rand(shape, generator=generator, device=x.device)

    # RandomResizedCrop as torchvision: 10 tries of (area, aspect); the first that fits wins; if
    # none fits, a centre crop with the aspect clamped into ratio. Boxes are continuous (no
    # rounding to whole pixels). Bilinear without antialiasing: downscaling (e.g. 96 -> 32) aliases.
    area = H * W * (scale[0] + (scale[1] - scale[0]) * rand(B, 10))  # (B, 10) in pixels^2
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * rand(B, 10))  # (B, 10) width / height
    w, h = (area * aspect).sqrt(), (area / aspect).sqrt()  # (B, 10) each
    fits = (w <= W) & (h <= H)  # (B, 10)
    first = fits.int().argmax(1, keepdim=True)  # (B, 1) first fitting try
    r = min(max(W / H, ratio[0]), ratio[1])
    w = torch.where(fits.any(1), w.gather(1, first)[:, 0], min(W, H * r))  # (B,)
    h = torch.where(fits.any(1), h.gather(1, first)[:, 0], min(W, H * r) / r)  # (B,)
    x0, y0 = (W - w) * rand(B), (H - h) * rand(B)  # (B,) each, top-left corner
    # The sampling grid puts output pixel centre k (of S) at c_k = (2k + 1) / S - 1 of the box,
    # in grid_sample's [-1, 1] input coordinates: x = (2 x0 + w) / W - 1 + c_k w / W, likewise
    # y. Separable, so built by broadcasting: F.affine_grid's batched matmul took 1.7 of the
    # 16 ms per 512 images on 2 cores. A negative x scale mirrors the box: the flip is free.
    flip = torch.where(rand(B) < p_flip, -1.0, 1.0)  # (B,)
    c = (2 * torch.arange(size, device=x.device) + 1) / size - 1  # (S,)
    gx = (2 * x0 + w)[:, None] / W - 1 + (flip * w / W)[:, None] * c  # (B, S)
    gy = (2 * y0 + h)[:, None] / H - 1 + (h / H)[:, None] * c  # (B, S)
    grid = torch.stack([gx[:, None, :].expand(B, size, size),
                        gy[:, :, None].expand(B, size, size)], 3)  # (B, S, S, 2)
    x = F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)

    # ColorJitter: per-sample factors and, as torchvision, a per-sample random order of the four
    # operations; step t applies to each sample the op order[:, t] names, on that subset only
    # (16 small indexed ops; on CUDA each nonzero() is a host sync, cheap next to the encoder).
    f_lo = x.new_tensor([max(0, 1 - j) for j in jitter[:3]] + [-jitter[3]])  # (4,)
    f_hi = x.new_tensor([1 + j for j in jitter[:3]] + [jitter[3]])  # (4,)
    f = f_lo + (f_hi - f_lo) * rand(B, 4)  # (B, 4)
    order = rand(B, 4).argsort(1)  # (B, 4) a permutation of the 4 ops per sample
    on = rand(B) < p_jitter  # (B,)
    for t in range(4):
        for k, op in enumerate(_JITTER_OPS):
            i = (on & (order[:, t] == k)).nonzero().squeeze(1)  # (b,) samples doing op k now
            x[i] = op(x[i], f[i, k])

    # only the ~p_gray B chosen samples are converted: 0.2 ms per 512 images on 2 cores, where a
    # torch.where over the whole batch took 1.1 ms
    i = (rand(B) < p_gray).nonzero().squeeze(1)  # (b,) samples turned gray
    x[i] = _gray(x[i]).expand(-1, 3, -1, -1)

    if p_blur > 0:  # separable Gaussian, one kernel per sample, via grouped convolution
        K = blur_kernel_size(size)
        sigma = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * rand(B)  # (B,)
        t = torch.arange(K, device=x.device) - K // 2  # (K,) taps
        kern = torch.exp(-t**2 / (2 * sigma[:, None] ** 2))  # (B, K)
        kern = kern / kern.sum(1, keepdim=True)
        kern = torch.where((rand(B) < p_blur)[:, None], kern, (t == 0).float())  # (B, K) off: delta
        kern = kern.repeat_interleave(3, 0)  # (3B, K) same kernel for the 3 channels
        y = F.pad(x.reshape(1, 3 * B, size, size), [K // 2] * 4, mode='reflect')  # (1, 3B, ., .)
        y = F.conv2d(y, kern[:, None, :, None], groups=3 * B)  # (1, 3B, S, S + K - 1) vertical
        y = F.conv2d(y, kern[:, None, None, :], groups=3 * B)  # (1, 3B, S, S) horizontal
        x = y.view(B, 3, size, size)
    return normalize(x.clamp(0, 1), mean=mean, std=std)  # (B, 3, S, S)


def two_views(images, *, generator=None, **augment_kwargs):
    """Two independent views (x, y) of every image: the positive pairs (x_i, y_i) of §3."""
    return (augment(images, generator=generator, **augment_kwargs),
            augment(images, generator=generator, **augment_kwargs))


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
    it twice. Unlike `augment`, crops are whole pixels and downscaling is antialiased."""
    _check_augment_args(size, scale, ratio, jitter, blur_sigma, mean, std, p_flip=p_flip,
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
    _check_stats(mean, std)
    return T.Compose([T.Resize(round(size * 8 / 7)), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(mean, std)])
