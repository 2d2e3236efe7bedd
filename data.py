"""Data for contrastive learning: SimCLR's augmentation (App. D) as batched tensor operations, the
batches of an epoch, and the datasets as uint8 tensors.

- `augment` / `two_views`: SimCLR's augmentation of a whole batch on the images' device, with
  per-image random parameters from one torch.Generator: torchvision's distributions and, for the
  same parameters, its pixels (tests/test_data.py checks both). Its parts `batch_crop_flip`,
  `batch_color_jitter`, `batch_grayscale`, `batch_blur` and `normalize` each paste alone into
  other code, and none makes the CPU wait for a GPU. `augment_kwargs(dataset)`: its arguments.
- `batch_order`: the instance indices of every batch of one epoch (reshuffled, or Thm 5.5's).
- Plumbing: `make_shapes` (the offline default dataset), `load_dataset`, the ImageFolder path.

Shapes: N images in a dataset, B in a batch, C = 3 channels, H = W input side, S output side,
m pairs per batch, n training-set size.

Try it (CPU, about a second):
    python -c "import data; x, y = data.make_shapes(5000, seed=0); print(x.shape, y[:10])"
    python -c "import data; x, _ = data.make_shapes(256, seed=0); \
u, v = data.two_views(x, **data.augment_kwargs('shapes')); print(u.shape, v.shape)"
"""
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets, transforms as T

# augment's keyword arguments for every --dataset of train.py, with its training split's channel
# mean/std. cifar*: the paper's CIFAR preset. stl10* and imagefolder (ImageNet-style trees, e.g.
# ImageNet-100; ImageNet's mean/std): SimCLR's ImageNet preset. shapes* (statistics of
# make_shapes(50_000, seed=0)): scale (0.2, 1) often cut the shape out of the crop, and a weak
# hue jitter let the colours identify an image, so the hue covers the whole circle (0.5).
_CIFAR = dict(size=32, scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), p_jitter=0.8, p_gray=0.2,
              p_blur=0.0)
_IMAGENET = dict(scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), p_jitter=0.8, p_gray=0.2,
                 p_blur=0.5, blur_sigma=(0.1, 2.0))
_SHAPES = dict(_CIFAR, scale=(0.35, 1.0), jitter=(0.8, 0.8, 0.8, 0.5))
_STL10 = dict(_IMAGENET, size=96, mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713))
PRESETS = {
    'shapes': dict(_SHAPES, mean=(0.499, 0.499, 0.5), std=(0.317, 0.309, 0.321)),
    'shapes100': dict(_SHAPES, mean=(0.499, 0.499, 0.5), std=(0.314, 0.305, 0.317)),
    'cifar10': dict(_CIFAR, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    'cifar100': dict(_CIFAR, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    'stl10': _STL10,
    'stl10_unlabeled': _STL10,
    'imagefolder': dict(_IMAGENET, size=224, mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225)),
}
DATASETS = tuple(PRESETS)  # stl10_unlabeled: STL-10's 100,000 unlabeled images
GENERATED = ('shapes', 'shapes100')  # drawn by make_shapes, offline


def augment_kwargs(dataset, image_size=0):
    """augment's keyword arguments: PRESETS[dataset], with the output side image_size if > 0."""
    if dataset not in PRESETS or image_size < 0:
        raise ValueError(f'{dataset!r}, {image_size}: need one of {DATASETS}, image_size >= 0')
    return PRESETS[dataset] | (dict(size=image_size) if image_size else {})


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
    the aspect clamped into ratio. Then a bilinear resize, as resized_crop(antialias=False).
    """
    if size < 1 or not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f'need size >= 1, 0 < scale <= 1, 0 < ratio, got {size}, {scale}, {ratio}')
    B, _, H, W = x.shape
    area = H * W * torch.empty(B, 10, device=x.device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(B, 10, device=x.device).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)  # (B, 10)
    w = (area * log_ratio.exp()).sqrt().round()  # (B, 10) whole pixels, round half to even
    h = (area / log_ratio.exp()).sqrt().round()  # (B, 10) as Python's round in torchvision
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # (B, 10)
    first, found = fits.int().argmax(1, keepdim=True), fits.any(1)  # (B, 1) first fit, (B,) any
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
    1 + j), a hue shift ~ U(-j, j) of the circle, and an order of the four operations, per image.

    Brightness, contrast and saturation each blend f x + (1 - f) t, clamped to [0, 1], with t = 0,
    the image's mean luma, or each pixel's luma; f = 1 (not the image's turn) leaves x exactly. Six
    blend steps, three before the one hue rotation (the costly step) and three after, give each
    image its order: the hue's place (0-3) and an order of the other three.
    """
    if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
        raise ValueError(f"need 4 jitters >= 0, the hue's <= 0.5, got {jitter}")
    if p_jitter == 0 or max(jitter) == 0:
        return x
    B = x.shape[0]
    u = torch.rand(B, 6, generator=generator, device=x.device)  # (B, 6)
    f = torch.stack([max(0, 1 - j) + (1 + j - max(0, 1 - j)) * u[:, n]
                     for n, j in enumerate(jitter[:3])], 1)  # (B, 3) blend factors
    shift = jitter[3] * (2 * u[:, 3] - 1)  # (B,) hue shift, a fraction of the circle
    on = u[:, 4] < p_jitter  # (B,)
    hue_at = (4 * u[:, 5]).long()  # (B,) the hue's place; with order, uniform over the 24 orders
    order = torch.rand(B, 3, generator=generator, device=x.device).argsort(1)  # (B, 3)
    # Worked on in place: on a CPU a fresh buffer costs as much as its arithmetic (page faults)
    x, luma = x.clone(), torch.empty_like(x[:, 0])  # (B, 3, H, W), (B, H, W)
    for step in range(6):
        if step == 3 and jitter[3] > 0:  # hue rotation through HSV, as torchvision's adjust_hue
            r, g, b = x.unbind(1)  # (B, H, W) each
            v = x.amax(1)  # (B, H, W) value
            chroma = v - x.amin(1)  # (B, H, W) max - min
            # 6 hue x chroma: g - b where r is the max, else 2 chroma + b - r where g is, else
            # 4 chroma + r - g; lerp weights sign(v - r), sign(v - g) pick it (torch.where over a
            # bool mask is several times slower on a CPU)
            h = (b - r).add_(chroma, alpha=2).lerp_((r - g).add_(chroma, alpha=4), (v - g).sign_())
            h = (g - b).lerp_(h, (v - r).sign_()).div_(chroma.clamp_min(1e-8))  # (B, H, W) 6 hue
            h += 6 * shift[:, None, None]  # (B, H, W) in [-4, 8]
            # HSV -> RGB: channel n is v - chroma clamp(2 - d, 0, 1), d the distance from
            # k = 6 hue - (3, 5, 7)_n to the nearest multiple of 6: 3 - |||k| - 6| - 3| for
            # |k| <= 12. torchvision's piecewise-linear table, without a modulo.
            k = h[:, None] - torch.arange(3.0, 8.0, 2.0, device=x.device)[:, None, None]
            k = k.abs_().sub_(6).abs_().sub_(3).abs_().sub_(1).clamp_(0, 1)  # (B, 3, H, W)
            torch.addcmul(v[:, None], chroma[:, None], k, value=-1, out=k)  # (B, 3, H, W) RGB
            x.lerp_(k, on.float()[:, None, None, None])  # jitter off: x, exactly
        op = order[:, step % 3]  # (B,) 0 brightness, 1 contrast, 2 saturation
        turn = on & ((step % 3 < hue_at) if step < 3 else (step % 3 >= hue_at))  # (B,)
        w = torch.where(turn, 1 - f.gather(1, op[:, None])[:, 0], 0.0)[:, None, None, None]
        torch.mul(x[:, 0], 0.2989, out=luma).add_(x[:, 1], alpha=0.587).add_(x[:, 2], alpha=0.114)
        mean = luma.mean((1, 2), keepdim=True)  # (B, 1, 1)
        t = luma.mul_((op == 2)[:, None, None]).add_((op == 1)[:, None, None] * mean)  # (B, H, W)
        x.lerp_(t[:, None], w).clamp_(0, 1)  # (1 - w) x + w t = f x + (1 - f) t; x where w = 0
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
    if kernel_size < 1 or kernel_size % 2 == 0 or not 0 < sigma[0] <= sigma[1]:
        raise ValueError(f'need odd kernel_size, 0 < sigma[0] <= sigma[1]: {kernel_size}, {sigma}')
    if p_blur == 0:
        return x
    (B, C, H, W), K = x.shape, kernel_size
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
    """(B, 3, H, W) uint8 or [0, 1] float -> (x - mean) / std per channel, float (also for eval)."""
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f'mean and std need 3 entries and std > 0, got {mean}, {std}')
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()  # (B, 3, H, W)
    mean, std = [torch.stack([x.new_full((1, 1), a) for a in stat])
                 for stat in (mean, std)]  # (3, 1, 1) each, filled on x's device: no host copy
    return x.sub(mean).div_(std)  # (B, 3, H, W)


def augment(images, *, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p_flip=0.5,
            jitter=(0.4, 0.4, 0.4, 0.1), p_jitter=0.8, p_gray=0.2, p_blur=0.0,
            blur_sigma=(0.1, 2.0), mean, std, generator=None):
    """One SimCLR view of every image: (B, 3, H, W) uint8 or [0, 1] float -> (B, 3, S, S) float.

    torchvision's pipeline, in its order: RandomResizedCrop(size, scale, ratio), horizontal flip
    (p_flip), ColorJitter(*jitter) with probability p_jitter, RandomGrayscale(p_gray),
    GaussianBlur(blur_kernel_size(size), blur_sigma) with probability p_blur, normalisation. All
    randomness comes from generator (on the images' device; None = the global RNG). Unlike the
    PIL pipeline, no antialiasing when the crop is downscaled, no rounding to 8 bits per step.
    """
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
    images = images.float().div_(255) if images.dtype == torch.uint8 else images  # once for both
    return (augment(images, generator=generator, **augment_kwargs),
            augment(images, generator=generator, **augment_kwargs))


def batch_order(n, m, *, epoch, seed, fixed=False):
    """Instance indices of every batch of one epoch: (n // m, m) int64; the last n % m dropped.

    fixed=False (practice): a fresh permutation per epoch, seeded by (seed, epoch), so a run
    resumed at any epoch sees the same batches; the dropped remainder changes every epoch.
    fixed=True (theory, Thm 5.5): I_k = [m(k-1)+1 : mk] of one permutation drawn from seed alone,
    the same every epoch; the same n % m instances are then never trained on.
    """
    if not 2 <= m <= n or seed < 0 or epoch < 0:
        raise ValueError(f'need 2 <= m <= n, seed >= 0, epoch >= 0: {m=}, {n=}, {seed=}, {epoch=}')
    key = [seed] if fixed else [seed, epoch]  # SeedSequence mixes the pair into a well-spread seed
    g = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
    b = n // m  # batches per epoch
    return torch.randperm(n, generator=g)[: b * m].view(b, m)  # (b, m)


# ---- Plumbing (skip on a first reading) ----

# The offline dataset, shapes drawn from signed distance functions (SDF). Each SDF takes
# coordinates (x, y) in units of the shape's radius r (y points down, as in images) and returns the
# signed distance to the outline in the same units, < 0 inside. Orientation is fixed: no
# augmentation rotates, so a rotated copy would be a nuisance nothing removes.
SHAPE_CLASSES = ('disk', 'square', 'triangle', 'plus', 'ring', 'star', 'bar', 'crescent', 'L',
                 'half_disk')


def _box(x, y, hx, hy):
    """Exact SDF of the axis-aligned box |x| <= hx, |y| <= hy."""
    dx, dy = x.abs() - hx, y.abs() - hy
    return torch.hypot(dx.clamp_min(0), dy.clamp_min(0)) + torch.maximum(dx, dy).clamp_max(0)


_SDFS = (  # in SHAPE_CLASSES order; sizes chosen so the shapes cover similar areas
    lambda x, y: torch.hypot(x, y) - 0.85,
    lambda x, y: _box(x, y, 0.75, 0.75),
    lambda x, y: torch.maximum(y, 0.866 * x.abs() - 0.5 * y) - 0.55,  # edge normals 120 deg apart
    lambda x, y: torch.minimum(_box(x, y, 0.9, 0.3), _box(x, y, 0.3, 0.9)),
    lambda x, y: (torch.hypot(x, y) - 0.7).abs() - 0.22,
    lambda x, y: torch.hypot(x, y) - (  # star: 5 tips at radius 1, dents at 0.4, one tip up
        0.4 + 0.6 * (0.5 + 0.5 * torch.cos(5 * torch.atan2(x, -y))) ** 2),
    lambda x, y: _box(x, y, 1.0, 0.32),
    lambda x, y: torch.maximum(torch.hypot(x, y) - 0.9, 0.75 - torch.hypot(x - 0.4, y)),
    lambda x, y: torch.minimum(_box(x + 0.45, y, 0.3, 0.9), _box(x, y - 0.6, 0.75, 0.3)),
    lambda x, y: torch.maximum(torch.hypot(x, y - 0.35) - 1.0, y - 0.35),
)


def _stripes(t, period, half_width):
    """Signed distance to parallel lines t = period * (k + 1/2) of the given half width."""
    return ((t / period) % 1 - 0.5).abs() * period - half_width


def _checker(dx, dy):
    """Painted where both stripe distances have one sign; distance to the nearer edge."""
    return -torch.sign(dx * dy) * torch.minimum(dx.abs(), dy.abs())


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


def _colours(v, g):
    """(n, 3) RGB colours in [0, 1], random hue and saturation, ITU-R 601 luma exactly v (n, 1)."""
    raw = torch.rand(len(v), 3, generator=g) * 2 - 1  # (n, 3)
    chroma = raw - raw @ torch.tensor([[0.2989], [0.587], [0.114]])  # (n, 3) luminance ~0
    room = torch.where(chroma > 0, 1 - v, v) / chroma.abs().clamp_min(1e-6)  # (n, 3) to gamut edge
    return v + chroma * room.amin(1, keepdim=True) * torch.rand(len(v), 1, generator=g)  # (n, 3)


def shape_classes(fills=False):
    """Number of classes of make_shapes: 10 shapes, times 10 fill patterns with fills."""
    return len(SHAPE_CLASSES) * (len(FILL_PATTERNS) if fills else 1)


def make_shapes(n, *, seed, image_size=32, fills=False):
    """n images (n, 3, H, W) uint8 and labels (n,) int64, deterministic in seed; classes balanced.

    Nuisances and the augmentation that destroys each: colours -> colour jitter (strong hue) and
    grayscale; position and scale (radius 8-14 px at 32 px) -> random resized crop; pixel noise
    (std 3% of the range) -> the crop resamples it. Foreground and background luminance differ
    by 0.3-0.7, so the shape survives grayscale; flat backgrounds, as with colour gradients an
    encoder learned the background. A linear probe on raw pixels scores 14-23% (chance 10%).
    fills=True (shapes100): label = shape + 10 * fill pattern (FILL_PATTERNS), each shape outlined
    1.5 px wide and filled with its pattern; the random draws are those of fills=False.
    """
    if n < 1 or image_size < 8:
        raise ValueError(f'make_shapes needs n >= 1 and image_size >= 8, got {n}, {image_size}')
    g, H = torch.Generator().manual_seed(seed), image_size
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
        img = bg[i, :, None, None] + alpha[:, None] * (fg[i] - bg[i])[:, :, None, None]
        img = img + 0.03 * torch.randn(img.shape, generator=g)  # (n_k, 3, H, W) with pixel noise
        images[i] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels


def load_dataset(name, split, *, data_dir='data', download=False, seed=0, n_shapes=None):
    """A whole split in memory: images (N, 3, H, W) uint8 on the CPU, labels (N,) int64, and the
    number of classes. split: 'train', 'test', or stl10's 'unlabeled' (100,000 images, labels -1).

    shapes and shapes100 are generated, data_dir ignored: n_shapes images (default 5,000: the
    sampling noise of a test accuracy near 50 % is then +-0.7 points), train from seed 2*seed and
    test from 2*seed+1, so the splits never share an image. cifar10, cifar100 and stl10 are read by
    torchvision from data_dir (download=True fetches them), checking all their files' MD5 sums.
    """
    splits = ('train', 'test', 'unlabeled') if name == 'stl10' else ('train', 'test')
    if name not in (*GENERATED, 'cifar10', 'cifar100', 'stl10') or split not in splits:
        raise ValueError(f"load_dataset reads shapes, shapes100, cifar10, cifar100 or stl10, split "
                         f"train or test (or stl10's unlabeled), got {name!r}, {split!r}")
    if name in GENERATED:
        fills = name == 'shapes100'
        x, y = make_shapes(5000 if n_shapes is None else n_shapes,
                           seed=2 * seed + (0 if split == 'train' else 1), fills=fills)
        return x, y, shape_classes(fills)
    tv = dict(cifar10=datasets.CIFAR10, cifar100=datasets.CIFAR100, stl10=datasets.STL10)[name]
    where = dict(split=split) if name == 'stl10' else dict(train=split == 'train')
    try:
        ds = tv(data_dir, download=download, **where)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"{name}: missing or corrupted files in {Path(data_dir) / tv.base_folder}. Fetch them "
            "with download=True (train.py --download) on a machine with internet, or place "
            "torchvision's files there") from None
    # CIFAR's .data is (N, H, W, 3); STL-10's (N, 3, H, W), transposed when read (column-major)
    x, y = (ds.data, ds.labels) if name == 'stl10' else (ds.data.transpose(0, 3, 1, 2), ds.targets)
    images = torch.from_numpy(np.ascontiguousarray(x))  # (N, 3, H, W) uint8
    return images, torch.as_tensor(y, dtype=torch.int64), 100 if name == 'cifar100' else 10


class ImageFolderPairs(torch.utils.data.Dataset):
    """(x1, x2, label, index): two independent draws of transform on one image of an ImageFolder
    tree root/class_name/image.jpg (ImageNet-100, Tiny-ImageNet; torchvision raises
    FileNotFoundError if there is none). PIL decodes in the workers of a DataLoader."""

    def __init__(self, root, transform):
        self.folder = datasets.ImageFolder(root)
        self.transform = transform

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        image, label = self.folder[index]  # PIL RGB image, int
        return self.transform(image), self.transform(image), label, index


def imagefolder_two_view_transform(*, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                   p_flip=0.5, jitter=(0.4, 0.4, 0.4, 0.1), p_jitter=0.8,
                                   p_gray=0.2, p_blur=0.0, blur_sigma=(0.1, 2.0), mean, std):
    """`augment` as a torchvision PIL pipeline, same keywords and defaults (pass
    **augment_kwargs('imagefolder')): one view, PIL image -> (3, S, S) float; ImageFolderPairs
    draws it twice. It antialiases when downscaling and rounds colours to 8 bits per step."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=scale, ratio=ratio), T.RandomHorizontalFlip(p_flip),
        T.RandomApply([T.ColorJitter(*jitter)], p=p_jitter), T.RandomGrayscale(p_gray),
        T.RandomApply([T.GaussianBlur(blur_kernel_size(size), sigma=blur_sigma)], p=p_blur),
        T.ToTensor(), T.Normalize(mean, std)])


def imagefolder_images(folder, indices, size):
    """Decode images of a torchvision ImageFolder into memory: short side to size * 8/7, centre
    crop to size -> (k, 3, size, size) uint8 and (k,) labels. For the small subsets whose
    similarity statistics are logged; training itself streams through ImageFolderPairs."""
    crop = T.Compose([T.Resize(round(size * 8 / 7)), T.CenterCrop(size), T.PILToTensor()])
    pairs = [folder[int(i)] for i in indices]  # (PIL image, label)
    return torch.stack([crop(img) for img, _ in pairs]), torch.tensor([y for _, y in pairs])


def imagefolder_eval_transform(size, mean, std):
    """Evaluation: resize the short side to size * 8/7 (256 for 224), centre crop, normalise."""
    return T.Compose([T.Resize(round(size * 8 / 7)), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(mean, std)])
