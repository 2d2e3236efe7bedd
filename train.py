"""Contrastive pre-training that logs the similarities the paper studies.

    python train.py                       # offline demo: generated shapes, ~75 s on 2 CPU cores
    python train.py --loss dcl --vrns-weight 1 --batch-size 32      # any loss, + Def. 5.7 term
    python train.py --dataset cifar100 --data-dir data --arch resnet18 --width 64 --stem cifar \\
        --optimizer sgd --lr 0.3 --warmup-epochs 10 --weight-decay 1e-4 --epochs 200 \\
        --temperature 0.2 --batch-size 256 --vrns-weight 30      # the paper's CIFAR recipe (GPU)
    torchrun --nproc_per_node=4 train.py ...                        # several GPUs (or CPU: gloo)

Each step: two augmented views x, y of m images -> encoder + projector -> u, v (m, d) ->
loss(u, v) + lam * L_VRNS(u, v) (Def. 5.7). Every epoch, exact similarity statistics of a fixed
probe subset go to OUT_DIR/metrics.jsonl next to the theory's predictions for this n and m; at the
end the encoder is evaluated (linear probe, kNN, random-init baseline) and OUT_DIR/summary.json
is written. Checkpoints are atomic and resumable bit for bit (--resume OUT_DIR).

Shape legend: m = pairs per (global) batch, d = embedding dim, n = training-set size,
B = images on this process, D_h = encoder feature dim.
"""
import argparse
import json
import math
import os
import platform
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import eval as evaluation
import losses
import models
import theory

LOSSES = ("infonce", "simclr", "dcl", "dhel", "siglip", "spectral")
DATASETS = ("shapes", "cifar10", "cifar100", "stl10", "imagefolder")
DEFAULT_LR = {"sgd": 0.3, "lars": 0.3, "adamw": 4e-3}  # per 256 images (paper: SGD 0.3, CIFAR)
CKPT_FORMAT = "embedding-similarity-ckpt/1"
# flags that may differ between a run and its resumption (nothing that changes the result)
RESUME_FREE = {"resume", "out_dir", "device", "compile", "log_every", "ckpt_every", "workers",
               "overwrite", "probe_epochs"}


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--dataset", default="shapes", choices=DATASETS,
      help="'shapes' is generated in code (offline); the others load from --data-dir")
    a("--data-dir", default="data", help="where real datasets live (torchvision's layout; for "
      "imagefolder a folder with train/ and val/)")
    a("--download", action="store_true", help="download CIFAR/STL-10 into --data-dir (internet)")
    a("--arch", default="resnet18", choices=models.ARCHS)
    a("--width", type=int, default=16, help="base width of the ResNet (64 = torchvision's); "
      "16 keeps the CPU demo fast")
    a("--stem", default="cifar_s2", choices=("cifar", "cifar_s2", "imagenet"),
      help="'cifar' = 3x3 stride 1, no max-pool (the paper's CIFAR encoder); 'cifar_s2' = stride "
      "2, about 4x fewer FLOPs (CPU demo); 'imagenet' = 7x7 stride 2 + max-pool")
    a("--loss", default="simclr", choices=LOSSES)
    a("--within-view", action="store_true", help="siglip/spectral only: add within-view "
      "negatives (c2 = 1), the paper's fix for excessive separation (Thm 5.1)")
    a("--temperature", type=float, default=0.5, help="tau of infonce/simclr/dcl/dhel; the paper "
      "sweeps 0.1-0.5 (0.2 for CIFAR-100 SimCLR)")
    a("--siglip-t", type=float, default=10.0, help="SigLIP scale t")
    a("--siglip-b", type=float, default=10.0, help="SigLIP bias b in the paper's sign (the "
      "original SigLIP's bias is -b)")
    a("--vrns-weight", type=float, default=0.0, help="lam of Def. 5.7 (0 = off); the paper "
      "uses 30 on CIFAR and ImageNet-100")
    a("--batch-size", type=int, default=128, help="global batch m (pairs); the paper: 32-512")
    a("--epochs", type=int, default=25)
    a("--optimizer", default="adamw", choices=("sgd", "lars", "adamw"), help="sgd = the paper's; "
      "adamw learns the CPU demo in fewer epochs")
    a("--lr", type=float, default=None, help="learning rate per 256 images, scaled by "
      "batch/256; default 0.3 for sgd/lars, 4e-3 for adamw")
    a("--warmup-epochs", type=float, default=2.0, help="linear warmup, then per-step cosine to 0 "
      "(the paper: 10)")
    a("--weight-decay", type=float, default=1e-4)
    a("--fixed-batches", action="store_true", help="the same partition into batches every epoch "
      "(Thm 5.5's setting) instead of reshuffling")
    a("--device", default="auto", help="auto = cuda, then mps, then cpu")
    a("--precision", default="auto", choices=("auto", "fp32", "bf16"),
      help="bf16 autocast for the encoder; auto = bf16 on CUDA and on CPUs with native bf16")
    a("--compile", action="store_true", help="torch.compile the model (GPU; ~1 min warm-up)")
    a("--seed", type=int, default=0)
    a("--out-dir", default=None, help="default runs/<dataset>-<loss>-m<batch>-s<seed>-<time>")
    a("--resume", default=None, help="a run directory or its ckpt.pt: continue it exactly")
    a("--overwrite", action="store_true", help="allow writing into a directory holding a run")
    a("--ckpt-every", type=int, default=0, help="also checkpoint every this many steps (0: "
      "epoch ends only)")
    a("--log-every", type=int, default=20, help="steps between progress lines")
    a("--image-size", type=int, default=0, help="crop size of the views (0 = the preset's: 32 "
      "CIFAR/shapes, 96 STL-10, 224 ImageFolder; e.g. 64 for Tiny-ImageNet)")
    a("--train-size", type=int, default=0, help="use only the first N training images (0 = "
      "all): quick experiments; the theory's n is then N")
    a("--probe-size", type=int, default=1024, help="training images whose exact similarity "
      "statistics are logged every epoch")
    a("--probe-epochs", type=int, default=200, help="epochs of the final linear probe (the "
      "paper: 200; on precomputed features, ~3 s for 5,000 images)")
    a("--workers", type=int, default=8, help="DataLoader workers (imagefolder only)")
    return p


def fail(message):
    """Bad input: one line naming the flag, the value and the fix; exit status 2."""
    print(f"train.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args):
    """Cheap checks, before any data is touched."""
    for flag in ("temperature", "siglip_t", "epochs", "batch_size", "warmup_epochs",
                 "weight_decay", "vrns_weight", "siglip_b", "lr", "probe_size", "probe_epochs"):
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            fail(f"--{flag.replace('_', '-')} {value} is not a finite number")
    positive = {"temperature": args.temperature, "siglip_t": args.siglip_t, "epochs": args.epochs,
                "probe_epochs": args.probe_epochs, "probe_size": args.probe_size,
                "width": args.width, "log_every": args.log_every}
    if args.lr is not None:
        positive["lr"] = args.lr
    for flag, value in positive.items():
        if value <= 0:
            fail(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    if args.batch_size < 2:
        fail(f"--batch-size must be >= 2 (a batch needs negatives), got {args.batch_size}")
    for flag in ("vrns_weight", "warmup_epochs", "weight_decay", "ckpt_every", "workers",
                 "train_size", "image_size"):
        if getattr(args, flag) < 0:
            fail(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if args.within_view and args.loss not in ("siglip", "spectral"):
        fail(f"--within-view applies to siglip and spectral; {args.loss} already fixes its "
             "negatives (Table 2)")


def use_bf16(precision, device):
    """bf16 autocast: on CUDA always worth it; on a CPU only with native bf16 instructions
    (measured on a 2-core AMD EPYC with avx512_bf16: 1.25x the images/s of fp32 for the
    default model, 2.3x for ResNet-18 at width 64; bench.py)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:  # Linux; elsewhere stay in fp32
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ------------------------------------------------------------------------------------------
# Loss, schedule, optimiser
# ------------------------------------------------------------------------------------------

def make_loss(name, *, temperature, siglip_t, siglip_b, within_view):
    """The flag -> pure loss function of losses.py, as a function of (u, v) only."""
    if name == "siglip":
        return lambda u, v: losses.siglip_loss(u, v, siglip_t, siglip_b, within_view=within_view)
    if name == "spectral":
        return lambda u, v: losses.spectral_loss(u, v, within_view=within_view)
    fn = {"infonce": losses.infonce_loss, "simclr": losses.simclr_loss, "dcl": losses.dcl_loss,
          "dhel": losses.dhel_loss}[name]
    return lambda u, v: fn(u, v, temperature)


def lr_at(step, *, total_steps, warmup_steps, peak_lr):
    """Linear warmup from 0 to peak_lr over warmup_steps, then cosine to 0 (per step)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio eta * ||w|| / ||g + wd w|| (You et al.
    2017), skipped for biases and BatchNorm parameters (1-D tensors), as in SimCLR."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                if w.ndim > 1:
                    g = g.add(w, alpha=group["weight_decay"])
                    w_norm, g_norm = w.norm(), g.norm()
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    g = g * trust
                buf = self.state[w].setdefault("momentum_buffer", torch.zeros_like(w))
                buf.mul_(group["momentum"]).add_(g)
                w.add_(buf, alpha=-group["lr"])


def make_optimizer(name, model, *, lr, weight_decay):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "lars":
        return LARS(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


# ------------------------------------------------------------------------------------------
# Several processes: gather embeddings with their gradients
# ------------------------------------------------------------------------------------------

class GatherWithGrad(torch.autograd.Function):
    """all_gather that lets gradients through. Every process computes the same global loss on
    the gathered (m, d) embeddings, so each holds the full dL/dz; summing over processes and
    keeping our slice gives K * dL/dz_local, which DDP's average over K processes turns back
    into exactly the single-process gradient."""

    @staticmethod
    def forward(ctx, z):  # z: (B, d) -> (m, d) with m = K * B
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):  # (m, d) -> (B, d)
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def embed_and_loss(net, x, y, *, loss_fn, n, vrns_weight, bf16):
    """One forward pass: views (B, 3, S, S) each -> (loss, L_VRNS, u, v) on the GLOBAL batch.

    Both views go through the network together, so BatchNorm normalises over all 2B images (as
    one process would over 2m). Under several processes u and v are gathered with gradients, so
    the pure losses see the global (m, d) batch and n, m mean what the paper means.
    """
    xy = torch.cat([x, y])  # (2B, 3, S, S)
    if xy.is_cuda:
        xy = xy.contiguous(memory_format=torch.channels_last)
    with torch.autocast(xy.device.type, dtype=torch.bfloat16, enabled=bf16):
        _, z = net(xy)  # (2B, d)
    u, v = z.float().chunk(2)  # (B, d) each; the losses run in float32, outside autocast
    if dist.is_initialized() and dist.get_world_size() > 1:
        u, v = GatherWithGrad.apply(u), GatherWithGrad.apply(v)  # (m, d) each
    vrns = losses.vrns_loss(u, v, n) if vrns_weight > 0 else torch.zeros((), device=u.device)
    return loss_fn(u, v), vrns, u, v


STEP_STATS = ("loss", "vrns", "pos_mean", "neg_mean", "neg_var")  # logged every step


@torch.no_grad()
def batch_similarities(u, v):
    """In-batch mean positive, mean negative and negative variance, as device tensors (no
    boolean indexing, which would make the CPU wait for the GPU every step)."""
    s = F.normalize(u, dim=1) @ F.normalize(v, dim=1).T  # (m, m), 2 m^2 d FLOPs: noise next
    pos = s.diagonal()  # (m,)                                  to the encoder's
    pairs = s.numel() - len(pos)  # m (m - 1) ordered negatives
    neg_mean = (s.sum() - pos.sum()) / pairs
    neg_sq = ((s * s).sum() - (pos * pos).sum()) / pairs
    return pos.mean(), neg_mean, neg_sq - neg_mean ** 2


class AllReduceSum(torch.autograd.Function):
    """Sum over processes, with the gradient summed back (each process's statistics feed every
    process's outputs)."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch, on any backend (torch's SyncBatchNorm needs CUDA):
    two all-reduces per layer (the mean, then the centred squares, for float32 accuracy)."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected a (B, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]  # every axis but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = AllReduceSum.apply(xf.new_tensor([x.numel() / x.shape[1]]))  # (1,) global
        mean = AllReduceSum.apply(xf.sum(dims)) / count  # (C,)
        var = AllReduceSum.apply(((xf - mean.view(shape)) ** 2).sum(dims)) / count  # (C,)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)  # unbiased
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return (y * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)


def global_batchnorm(module):
    """Every BatchNorm of module normalises over all processes' images (in place)."""
    if torch.cuda.is_available() and next(module.parameters()).is_cuda:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            new = GlobalBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum)
            new.weight, new.bias = child.weight, child.bias  # the same Parameters: an optimiser
            new.running_mean, new.running_var = child.running_mean, child.running_var  # built
            new.num_batches_tracked = child.num_batches_tracked  # before still updates them
            setattr(module, name, new)
        else:
            global_batchnorm(child)
    return module


# ------------------------------------------------------------------------------------------
# Checkpoints: atomic, loaded with weights_only=True, carrying every RNG state
# ------------------------------------------------------------------------------------------

def atomic_save(obj, path):
    """Write to a temporary file, fsync, then rename: a crash mid-save keeps the old file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_states(aug_generator):
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "augment": aug_generator.get_state()}


def set_rng_states(states, aug_generator):
    torch.set_rng_state(states["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in states["python"]))
    np_state = states["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    aug_generator.set_state(states["augment"])


def load_checkpoint(path):
    """A checkpoint of this script, or a clear error (exit 2) saying what is wrong with it."""
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        fail(f"--resume {path}: no such checkpoint; give a run directory holding ckpt.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt or not a torch file at all
        fail(f"--resume {path}: cannot be read as a checkpoint ({type(e).__name__}: "
             f"{str(e).splitlines()[0][:120]}); it may be truncated, use an intact copy")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        fail(f"--resume {path}: not a checkpoint written by this train.py (no "
             f"'{CKPT_FORMAT}' marker)")
    return path, ckpt


def exit_on_signal(step, out_dir, is_main):
    if is_main:
        print(f"stopped by signal at step {step}; checkpoint saved. Continue with: "
              f"python train.py --resume {out_dir}", file=sys.stderr)
    leave(130)


def leave(status):
    """Every process exits together: gloo aborts a process whose peer tears down mid-talk."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if status:
        sys.exit(status)


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    check_args(args)
    stop = {"signal": None}  # Ctrl-C / SIGTERM: finish the step, checkpoint, exit

    def on_signal(signum, frame):
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        train(args, parser, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train(args, parser, stop):
    """Everything after parsing; `stop` is set by the signal handler installed in main()."""
    launched = time.time()

    # ---- resume: the checkpoint's arguments win; conflicting flags are an error -------------
    ckpt = None
    if args.resume:
        ckpt_path, ckpt = load_checkpoint(args.resume)
        given = {k: v for k, v in vars(args).items() if v != parser.get_default(k)}
        saved = ckpt["args"]
        conflicts = [f"--{k.replace('_', '-')} {v} (run used {saved.get(k)})"
                     for k, v in given.items() if k not in RESUME_FREE and saved.get(k) != v]
        if conflicts:
            fail(f"--resume {ckpt_path}: flags conflict with the checkpoint: "
                 f"{'; '.join(conflicts)}. Drop them to resume exactly.")
        args = argparse.Namespace(**{**saved, **{k: v for k, v in given.items()
                                                 if k in RESUME_FREE}})
        args.out_dir = os.path.dirname(os.path.abspath(ckpt_path))
        if ckpt["finished"]:
            print(f"{args.out_dir} holds a finished run (summary.json); nothing to resume")
            return

    # ---- processes and device ---------------------------------------------------------------
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.batch_size % world:
        fail(f"--batch-size {args.batch_size} is not divisible by the {world} processes; "
             f"use a multiple of {world}")
    try:
        device = evaluation.pick_device(args.device)
    except ValueError as e:
        fail(f"--device {args.device}: {e}")
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    is_main = rank == 0
    bf16 = use_bf16(args.precision, device)

    # ---- output directory: never clobber a run ------------------------------------------------
    if args.out_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out_dir = os.path.join("runs", f"{args.dataset}-{args.loss}-m{args.batch_size}-"
                                            f"s{args.seed}-{stamp}")
    if ckpt is None and not args.overwrite:
        for name in ("summary.json", "ckpt.pt", "metrics.jsonl"):
            if os.path.exists(os.path.join(args.out_dir, name)):
                fail(f"--out-dir {args.out_dir} already holds a run ({name}); pass --resume "
                     f"{args.out_dir} to continue it, --overwrite to replace it, or pick "
                     "another --out-dir")

    # ---- data: in memory as uint8 (generated, CIFAR, STL-10) or streamed (ImageFolder) -------
    aug = evaluation.augment_kwargs_for(vars(args))
    folder = None  # ImageFolderPairs when streaming
    try:
        if args.dataset == "imagefolder":
            folder = data.ImageFolderPairs(os.path.join(args.data_dir, "train"),
                                           data.imagefolder_two_view_transform(**aug))
            n_available = len(folder)
        else:
            train_images = data.load_dataset(args.dataset, data_dir=args.data_dir, train=True,
                                             download=args.download, seed=args.seed)[0]
            data.load_dataset(args.dataset, data_dir=args.data_dir, train=False,
                              download=args.download, seed=args.seed)  # fail now, not at the end
            n_available = len(train_images)
    except (FileNotFoundError, ValueError) as e:
        fail(f"--dataset {args.dataset} --data-dir {args.data_dir}: {e}")
    if args.train_size > n_available:
        fail(f"--train-size {args.train_size} exceeds the {n_available} training images; use "
             "at most that (0 = all)")
    n = args.train_size or n_available
    m = args.batch_size
    if m > n:
        fail(f"--batch-size {m} is larger than the training set (n = {n}); use at most {n}")
    probe_idx = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    probe_idx = probe_idx[:min(args.probe_size, n)]
    if folder is None:
        train_images = train_images[:n].to(device)  # uint8 on the training device: 3 KB/image
        probe_images = train_images[probe_idx.to(device)]  # (P, 3, H, W)
    else:
        probe_images = data.imagefolder_images(folder.folder, probe_idx, aug["size"])[0]

    # ---- model and optimiser ------------------------------------------------------------------
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    model = models.ContrastiveModel(args.arch, width=args.width, stem=args.stem).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    lr = (args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]) * m / 256
    optimizer = make_optimizer(args.optimizer, model, lr=lr, weight_decay=args.weight_decay)
    aug_gen = torch.Generator(device=device).manual_seed(args.seed)
    steps_per_epoch = n // m
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = round(args.warmup_epochs * steps_per_epoch)
    step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_states(ckpt["rng"], aug_gen)
        step = ckpt["step"]
    net = model
    if world > 1:
        net = global_batchnorm(model)
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    loss_fn = make_loss(args.loss, temperature=args.temperature, siglip_t=args.siglip_t,
                        siglip_b=args.siglip_b, within_view=args.within_view)
    var_low, var_high = theory.minibatch_variance_bounds(n, m)
    predicted = {"neg_optimum": theory.negative_similarity_optimum(n),
                 "within_batch_neg": theory.within_batch_negative_similarity(m),
                 "var_low": var_low, "var_high": var_high}

    metrics_path = os.path.join(args.out_dir, "metrics.jsonl")
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    if is_main:
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)
        if ckpt is not None:  # drop metric lines written after the checkpoint
            lines = open(metrics_path).readlines() if os.path.exists(metrics_path) else []
            with open(metrics_path, "w") as f:
                f.writelines(lines[:ckpt["epochs_logged"]])
        elif os.path.exists(metrics_path):
            os.remove(metrics_path)
        print(f"n = {n} training images, m = {m} pairs per batch ({world} process(es)), "
              f"{steps_per_epoch} steps/epoch x {args.epochs} epochs on {device}"
              f"{' with bf16 autocast' if bf16 else ''}")
        print(f"lr = {lr:.4g} ({args.optimizer}, {lr * 256 / m:.4g} per 256 images), "
              f"warmup {warmup_steps} steps, out_dir {args.out_dir}")
        print(f"theory at this n, m: negatives -> {predicted['neg_optimum']:.4f} (full batch), "
              f"{predicted['within_batch_neg']:.4f} (within batch); Var[s_neg] in "
              f"[{predicted['var_low']:.2e}, {predicted['var_high']:.2e}] (eq. 11)")

    def save(finished=False, epochs_logged=None, sums=None):
        if is_main:
            atomic_save({"format": CKPT_FORMAT, "args": vars(args), "step": step,
                         "sums": sums if sums is not None else torch.zeros(len(STEP_STATS)),
                         "epochs_logged": epochs_logged if epochs_logged is not None
                         else step // steps_per_epoch,
                         "finished": finished, "n_train": n,
                         "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "rng": rng_states(aug_gen)}, ckpt_path)

    stop_now = False

    # ---- the loop -----------------------------------------------------------------------------
    lo, hi = rank * m // world, (rank + 1) * m // world  # this process's rows of each batch

    def epoch_views(batches):
        """This process's two views of each batch: (B, 3, S, S) each, on the device."""
        if folder is None:
            for idx in batches.to(device):
                # every process augments the whole global batch (the random numbers one process
                # would draw) and keeps its rows: K processes see exactly the images of one,
                # at K x the augmentation cost, small next to the encoder's (bench.py)
                x, y = data.two_views(train_images[idx], generator=aug_gen, **aug)  # (m, ...)
                yield x[lo:hi], y[lo:hi]
        else:  # PIL transforms in worker processes; reproducible, but not bit-exact on resume
            loader = torch.utils.data.DataLoader(
                folder, batch_sampler=batches[:, lo:hi].tolist(), num_workers=args.workers,
                pin_memory=device.type == "cuda", persistent_workers=False)
            for x, y, _, _ in loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    start_time, start_step = time.time(), step
    while step < total_steps:
        epoch = step // steps_per_epoch
        batches = data.batch_order(n, m, epoch=epoch, seed=args.seed,
                                   fixed=args.fixed_batches)  # (n // m, m)
        sums = torch.zeros(len(STEP_STATS), device=device)  # this epoch's sums of STEP_STATS
        if ckpt is not None and ckpt["step"] == step and step % steps_per_epoch:  # mid-epoch
            sums = ckpt["sums"].to(device)
        net.train()
        for x, y in epoch_views(batches[step % steps_per_epoch:]):  # (B, 3, S, S) each
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps=total_steps, warmup_steps=warmup_steps,
                                    peak_lr=lr)
            base, vrns, u, v = embed_and_loss(net, x, y, loss_fn=loss_fn, n=n,
                                              vrns_weight=args.vrns_weight, bf16=bf16)
            loss = base + args.vrns_weight * vrns
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not torch.isfinite(loss):
                if is_main:
                    print(f"non-finite loss at step {step} (epoch {epoch}): loss {base.item()}, "
                          f"vrns {vrns.item()}, lr {optimizer.param_groups[0]['lr']:.3g}. Likely "
                          "causes: lr too high, temperature too small, fp16 overflow. "
                          + (f"The last good checkpoint is kept: {ckpt_path}"
                             if os.path.exists(ckpt_path) else "No checkpoint was written yet."),
                          file=sys.stderr)
                leave(1)
            optimizer.step()
            step += 1
            now = torch.stack([base.detach(), vrns.detach(), *batch_similarities(u, v)])
            sums += now  # stays on the device: no synchronisation
            if (step % args.log_every == 0 or step % steps_per_epoch == 0) and is_main:
                now = dict(zip(STEP_STATS, now.tolist()))
                rate = (step - start_step) * m / (time.time() - start_time)
                eta = (total_steps - step) * m / rate
                print(f"epoch {epoch + 1}/{args.epochs} step {step}/{total_steps} | loss "
                      f"{now['loss']:.4f} vrns {now['vrns']:.4f} | lr "
                      f"{optimizer.param_groups[0]['lr']:.3g} | pos {now['pos_mean']:.3f} neg "
                      f"{now['neg_mean']:.3f} var {now['neg_var']:.4f} | {rate:.0f} img/s | eta "
                      f"{eta / 60:.1f} min", flush=True)
            stop_now = stop["signal"] is not None
            if world > 1:  # every process stops at the same step
                flag = torch.tensor(float(stop_now), device=device)
                dist.all_reduce(flag)
                stop_now = flag.item() > 0
            if stop_now and step % steps_per_epoch:  # at an epoch's end: after its record
                save(epochs_logged=epoch, sums=sums)
                exit_on_signal(step, args.out_dir, is_main)
            if args.ckpt_every and step % args.ckpt_every == 0 and step % steps_per_epoch:
                save(epochs_logged=epoch, sums=sums)
        # ---- end of epoch: exact statistics of the probe subset, theory, checkpoint ----------
        if is_main:
            probe = evaluation.positive_pair_stats(
                model, probe_images, augment_kwargs=aug, device=device,
                generator=torch.Generator(device=device).manual_seed(args.seed + 1))
            record = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                      "elapsed_s": round(time.time() - start_time, 2),
                      **{f"batch_{k}": v / steps_per_epoch
                         for k, v in zip(STEP_STATS, sums.tolist())},
                      "probe": probe, "theory": predicted}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
            print(f"epoch {epoch + 1}: probe of {len(probe_idx)} images: pos "
                  f"{probe['pos_mean']:.3f}, neg {probe['neg_mean']:.4f} (theory "
                  f"{predicted['neg_optimum']:.4f}), Var[neg] {probe['neg_var']:.4f}")
        save(epochs_logged=epoch + 1)
        if stop_now:
            exit_on_signal(step, args.out_dir, is_main)

    if world > 1:
        dist.barrier()
    if is_main:
        wall = time.time() - start_time
        summary = evaluation.evaluate_run(model, vars(args), data_dir=args.data_dir,
                                          probe_epochs=args.probe_epochs, seed=args.seed,
                                          device=device, workers=args.workers)
        torch.manual_seed(args.seed + 1)  # the baseline: same architecture, untrained
        baseline = models.ContrastiveModel(args.arch, width=args.width, stem=args.stem)
        base_eval = evaluation.evaluate_run(baseline.to(device), vars(args),
                                            data_dir=args.data_dir,
                                            probe_epochs=args.probe_epochs, seed=args.seed,
                                            device=device, workers=args.workers)
        summary.update({"random_init_linear_acc": base_eval["linear_acc"],
                        "random_init_knn_acc": base_eval["knn_acc"],
                        "random_init_table1_stats": base_eval["table1_stats"],
                        "args": vars(args), "seed": args.seed, "n_train": n,
                        "train_wall_s": round(wall, 1), "device": str(device),
                        "total_wall_s": round(time.time() - launched, 1),
                        "world_size": world, "versions": {
                            "python": platform.python_version(), "torch": torch.__version__}})
        with open(metrics_path) as f:
            last_epoch = json.loads(f.readlines()[-1])
        summary["final"] = {"probe_stats": summary["table1_stats"], "last_epoch": last_epoch}
        summary["theory_rows"] = theory.compare_with_theory(summary["table1_stats"], n, m)
        with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        save(finished=True, epochs_logged=args.epochs)
        print(theory.format_table(summary["theory_rows"]))
        print(f"linear probe {summary['linear_acc']:.2f}% (random-init encoder "
              f"{summary['random_init_linear_acc']:.2f}%), kNN {summary['knn_acc']:.2f}%; "
              f"pre-training {wall:.0f} s, in all {summary['total_wall_s']:.0f} s; summary in "
              f"{args.out_dir}/summary.json")
    leave(0)


if __name__ == "__main__":
    main()
