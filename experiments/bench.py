"""Benchmarks: each fast path of this code base timed beside its floor or baseline (sections 1-4
below), against a target that experiments/performance.md explains. The final table says PASS or
FAIL per target (skip where a row cannot run here, "-" for a figure without one); the exit
status is 1 if any target fails.

    python -m experiments.bench                          # CPU: about 2 minutes on 2 idle cores
    python -m experiments.bench --device cuda --compile  # GPU: minutes, most of them compiling
    python -m experiments.bench --quick                  # tiny sizes: the smoke test

The contenders of a comparison run in interleaved rounds, each keeping its fastest (race): on a
shared machine compare ratios, not times, and rerun when the load average printed was high.

Shape legend: n embeddings, d embedding dim, m pairs per batch (m images, two views each).
"""
import argparse
import math
import os
import platform
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
from PIL import Image

import data
import losses
import models
import theory
import train

TAU = 0.5  # temperature of every loss and floor; no cost depends on it
N_VRNS = 50_000  # training-set size n in L_VRNS's target -1/(n - 1): CIFAR's
SMALL = dict(width=16, stem="cifar_s2", dataset="shapes")  # train.py's default model and data
BIG = dict(width=64, stem="cifar", dataset="cifar10")  # the paper's CIFAR ResNet-18
EPOCH_TARGET_S = {32: 12, 512: 6}  # GPU: a 50,000-image epoch, --compile, one H200
# n: CIFAR's training-set size; d: the paper's projector output; chunk: rows of one brute-force
# block (chunk x n x 8 bytes, 400 MB at n = 50,000); m: train.py's default batch
FULL = dict(n=50_000, d=128, chunk=1024, loss_m=(256, 1024), aug_batch=512, step_m=(32, 128, 512),
            rounds=10, step_rounds=3, m=128, small=SMALL)
QUICK = dict(n=800, d=32, chunk=256, loss_m=(64,), aug_batch=64, step_m=(8, 16), rounds=2,
             step_rounds=1, m=16, small=dict(SMALL, width=4))


def race(fns, *, device, rounds, reps=1):
    """Seconds per call of each zero-argument function of fns (name -> fn): the fastest of
    `rounds` interleaved rounds of `reps` calls each, after one untimed warm-up call each."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda device: None
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, math.inf)
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            sync(device)
            best[name] = min(best[name], (time.perf_counter() - start) / reps)
    return best


def embeddings(n, d, device, seed=0):
    """u, v (n, d), correlated like two views of the same images."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g)
    return u.to(device), (u + 0.5 * torch.randn(n, d, generator=g)).to(device)


def forward_backward(fn, u, v):
    """A zero-argument function: fn(u, v) forward and backward on fresh leaves u, v."""
    return lambda: fn(u.detach().requires_grad_(), v.detach().requires_grad_()).backward()


# ---- 1. Similarity statistics: O(n d^2) identities against the brute-force n x n sums -------

def brute_force_block(u, v, rows):
    """One block of the brute force on normalised float64 u, v (n, d): `rows` rows of U V^T,
    U U^T and V V^T, their sums and sums of squares (what similarity_stats needs)."""
    blocks = [a[:rows] @ b.T for a, b in [(u, v), (u, u), (v, v)]]  # (rows, n) each
    return [(s.sum(), (s * s).sum()) for s in blocks]


def bench_similarity_stats(args, device, table):
    n, d = args.n, args.d
    print(f"== 1. similarity statistics, n = {n:,}, d = {d}, on {device}")
    u, v = embeddings(n, d, device)
    u64, v64 = F.normalize(u.double(), dim=1), F.normalize(v.double(), dim=1)  # (n, d) each
    t = race({"exact": lambda: theory.similarity_stats(u, v),
              "block": lambda: brute_force_block(u64, v64, args.chunk)}, device=device, rounds=3)
    # every block costs the same; the normalisation, O(n d) once, is left out
    speedup = t["block"] * math.ceil(n / args.chunk) / t["exact"]
    table.append((f"similarity_stats speed-up over brute force, n={n:,} d={d}",
                  f"{speedup:,.0f}x", ">= 100x", speedup >= 100))


# ---- 2. Losses against floors: the same softmaxes written plainly (normalise, matmul(s), one
# F.cross_entropy per softmax; no masks, no log-sum-exp) ------------------------------------------

def infonce_floor(u, v):
    """InfoNCE's two softmaxes over U V^T / tau, over its rows and its columns, as CLIP."""
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)  # (m, d) each
    logits, labels = u @ v.T / TAU, torch.arange(len(u), device=u.device)  # (m, m), (m,)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def all_pairs_floor(u, v):
    """SimCLR's and DCL's 2m softmaxes over the rows of Z Z^T / tau, z = [u; v]."""
    z = F.normalize(torch.cat([u, v]), dim=1)  # (2m, d)
    labels = torch.arange(len(z), device=z.device).roll(len(u))  # (2m,)
    return F.cross_entropy(z @ z.T / TAU, labels)  # logits (2m, 2m)


def within_view_floor(u, v):
    """DHEL's 2m softmaxes over the rows of U U^T / tau and of V V^T / tau."""
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)  # (m, d) each
    labels = torch.arange(len(u), device=u.device)  # (m,)
    return (F.cross_entropy(u @ u.T / TAU, labels) + F.cross_entropy(v @ v.T / TAU, labels)) / 2


def vrns_floor(u, v):
    """The similarities L_VRNS squares: normalise, one (m, m) matmul, square."""
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)  # (m, d) each
    return (u @ v.T).square().mean()  # (m, m) -> ()


LOSS_CASES = {  # name -> (loss of (u, v), its floor, target: at most this many times the floor)
    "infonce": (lambda u, v: losses.infonce_loss(u, v, TAU), infonce_floor, 1.5),
    "simclr": (lambda u, v: losses.simclr_loss(u, v, TAU), all_pairs_floor, 1.5),
    "dcl": (lambda u, v: losses.dcl_loss(u, v, TAU), all_pairs_floor, 1.5),
    "dhel": (lambda u, v: losses.dhel_loss(u, v, TAU), within_view_floor, 1.5),
    "vrns_loss": (lambda u, v: losses.vrns_loss(u, v, N_VRNS), vrns_floor, 2.0),
}


def bench_losses(args, device, table):
    print(f"== 2. losses, d = {args.d}, float32, forward + backward, against their floors")
    for m in args.loss_m:
        u, v = embeddings(m, args.d, device, seed=1)
        fns = {}
        for name, (loss, floor, _) in LOSS_CASES.items():
            fns[name] = forward_backward(loss, u, v)
            fns[floor.__name__] = forward_backward(floor, u, v)
        # ~1 ms calls at m = 256 on 2 cores: repeated to dwarf timer and scheduler jitter
        t = race(fns, device=device, rounds=args.rounds, reps=max(1, 4096 // m))
        for name, (_, floor, target) in LOSS_CASES.items():
            ratio = t[name] / t[floor.__name__]
            table.append((f"{name} fwd+bwd / {floor.__name__}, m={m}", f"{ratio:.2f}x",
                          f"<= {target}x", ratio <= target))


# ---- 3. Augmentation: batched tensor ops against torchvision's per-image PIL pipeline -------

def bench_augment(args, device, table):
    figure = "two_views img/s / torchvision PIL img/s, 32 px"
    if device.type != "cpu":
        return table.append((figure, f"skipped (--device {device.type})", ">= 10x", None))
    print(f"== 3. augmentation, 'cifar' preset, B = {args.aug_batch}: data.two_views against "
          "PIL, one image at a time on 1 thread (as a DataLoader worker)")
    kw = data.augment_kwargs("cifar10")
    images = data.make_shapes(args.aug_batch, seed=0)[0]  # (B, 3, 32, 32) uint8
    gen = torch.Generator().manual_seed(0)
    view = data.imagefolder_two_view_transform(**kw)  # PIL image -> (3, 32, 32), one view
    pil = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]  # decoded already
    t = race({"two_views": lambda: data.two_views(images, generator=gen, **kw),
              "PIL": lambda: [(view(x), view(x)) for x in pil]}, device=device, rounds=args.rounds)
    speedup = t["PIL"] / t["two_views"]
    table.append((figure, f"{speedup:.1f}x", ">= 10x", speedup >= 10))


# ---- 4. The training step ------------------------------------------------------------------

def make_step(config, m, device, *, compile_model, bf16):
    """(step, augment): train.py's step on a fixed batch of m images (two views, then simclr with
    L_VRNS logged at lam = 0, backward, AdamW), and its two views alone."""
    model = models.ContrastiveModel("resnet18", width=config["width"], stem=config["stem"])
    model = model.to(device, memory_format=models.memory_format(model, device))  # as train.py
    net = torch.compile(model, dynamic=False) if compile_model else model  # one m per model
    # train.py's default optimiser; no cost depends on the learning rate or the decay
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    kw = data.augment_kwargs(config["dataset"])
    images = data.make_shapes(m, seed=0)[0].to(device)  # (m, 3, 32, 32) uint8
    gen = torch.Generator(device=device).manual_seed(0)
    augment = partial(data.two_views, images, generator=gen, **kw)  # () -> (m, 3, S, S) twice

    def step():
        return train.contrastive_step(net, optimizer, *augment(), loss_fn=LOSS_CASES["simclr"][0],
                                      vrns_fn=losses.vrns_loss, n=N_VRNS, lam=0.0, bf16=bf16)
    return step, augment


def bench_step_sizes(args, device, table):
    """4: the step at each m of args.step_m beside its augmentation alone and L_VRNS alone."""
    on_gpu = device.type == "cuda"
    config = BIG if on_gpu else args.small
    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {args.threads} thread(s)"
    print(f"== 4. training step, {name}, resnet18 w{config['width']} {config['stem']}, "
          f"{args.precision}, torch.compile {'on' if args.compile else 'off'}, m = {args.step_m}")
    epoch_s = {}
    for m in args.step_m:
        step, augment = make_step(config, m, device, compile_model=args.compile,
                                  bf16=args.precision == "bf16")
        for _ in range(3):  # compiles forward and backward, picks cuDNN's kernels, AdamW state
            step()
        t = race({"step": step, "augment": augment}, device=device, rounds=args.step_rounds)
        u, v = embeddings(m, args.d, device, seed=2)
        vrns = race({"vrns": forward_backward(LOSS_CASES["vrns_loss"][0], u, v)},
                    device=device, rounds=args.rounds, reps=max(1, 4096 // m))["vrns"]
        share, epoch_s[m] = vrns / t["step"], 50_000 / m * t["step"]
        table.append((f"vrns_loss fwd+bwd / train step, {name}, m={m}", f"{100 * share:.2f}%",
                      "<= 2%", share <= 0.02))
        if m == args.m:
            table.append((f"two_views alone / train step, {name}, m={m}",
                          f"{100 * t['augment'] / t['step']:.0f}%", "-", None))
    skipped = "skipped (no GPU)" if not torch.cuda.is_available() else "skipped (--device cpu)"
    for m, target in EPOCH_TARGET_S.items():
        figure = f"GPU epoch of 50k images, resnet18 w64 {args.precision}, m={m}"
        if not on_gpu:
            table.append((figure, skipped, f"<= {target} s", None))
        elif m in epoch_s:
            table.append((figure, f"{epoch_s[m]:.1f} s", f"<= {target} s", epoch_s[m] <= target))


# ---- Plumbing (skip on a first reading) ----

def print_table(table):
    """The final table; returns the exit status: 1 if a target failed, else 0."""
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    print(f"\n{'figure':<{widths[0]}}  {'measured':>{widths[1]}}  {'target':<{widths[2]}}  "
          "verdict")
    for figure, measured, target, passed in table:
        verdict = ("skip" if measured.startswith("skipped") else "-" if passed is None else
                   "PASS" if passed else "FAIL")
        print(f"{figure:<{widths[0]}}  {measured:>{widths[1]}}  {target:<{widths[2]}}  {verdict}")
    return int(any(passed is False for *_, passed in table))


def main(argv=None):
    p = argparse.ArgumentParser(description="Time the fast paths of this code base against "
                                "their floors and baselines; exit status 1 if a target fails.")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto (default) = cuda if visible, else cpu")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="of "
                   "the step (4): auto = bf16 autocast on CUDA, else fp32; a CPU's bf16 is fast "
                   "only on bf16 matrix units (AMX)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: runs, targets unjudged")
    p.add_argument("--compile", action="store_true", help="GPU: torch.compile the model (~1 "
                   "min per batch size); the epoch targets assume it")
    args = p.parse_args(argv)
    try:
        device = models.pick_device(args.device)
    except ValueError as e:  # its message names the flag
        p.error(str(e))
    torch.backends.cudnn.benchmark = True  # fixed shapes, as train.py sets it on CUDA
    vars(args).update(QUICK if args.quick else FULL)
    args.threads = torch.get_num_threads()  # torch's default: every core (or OMP_NUM_THREADS)
    if args.precision == "auto":
        args.precision = "bf16" if device.type == "cuda" else "fp32"
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"machine: {platform.processor() or platform.machine()} (torch's CPU capability: "
          f"{torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores{gpu}; "
          f"torch {torch.__version__}, {args.threads} threads")
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    start, table = time.perf_counter(), []  # rows (figure, measured, target, passed or None)
    bench_similarity_stats(args, device, table)
    bench_losses(args, device, table)
    bench_augment(args, device, table)
    bench_step_sizes(args, device, table)
    status = print_table(table)
    print(f"wall time {time.perf_counter() - start:.0f} s; load average (1 min) at end: "
          f"{os.getloadavg()[0]:.2f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
