"""Benchmarks: each fast path of this code base timed side by side with its baseline in one run,
with the target it must meet, and a final table of PASS / FAIL.

    python bench.py                         # CPU figures: ~1.5 min on 2 idle cores
    python bench.py --device cuda --compile # GPU figures (one H200: a few minutes, most of it
                                            # compiling)
    python bench.py --quick                 # tiny sizes, ~15 s: the smoke test of tests/

  1. similarity statistics: eval.similarity_stats, O(n d^2), against the brute-force n x n sums
     done one block of rows at a time; time and peak memory for each n of --n-list
  2. losses: forward + backward of each loss against its floor, a bare step on the same logits
     (normalise, matmul, one F.cross_entropy); the VRNS term's extra cost
  3. augmentation: data.two_views (batched tensor ops) against torchvision's per-image PIL
     pipeline with the same parameters (CPU), or against the training step's images/s (GPU)
  4. training step: images/s of two views + forward + loss + backward + AdamW, fp32 against bf16
     autocast (CPU), or images/s, epoch time and model FLOP utilisation (GPU)
  5. memory: peak resident memory of the CPU default `python train.py` run (CPU), peak GPU
     memory of the batch-512 step (GPU)

How it measures. Every contender runs in every round, rounds interleaved, and the minimum over
rounds is kept: all contenders see the same background load, and the least disturbed round is
the best estimate of the cost. Other processes share the cores, so absolute times are noise
while ratios measured side by side are not; the load average is printed at start and end (a
second PyTorch process on the same 2 cores slows every op 10-100x: rerun when it is gone).
This process keeps freed memory for reuse (keep_freed_memory): with glibc's default, page faults
made repeated timings of one call differ by 1.5x. train.py runs with the default; measured on 2
cores that cost ResNet-18 at batch 512 a third of its images/s (bf16: 61 vs 98), the small CPU
default model a few %.
Memory on CPU is resident-set growth in a fresh process (ru_maxrss, which sees every
allocation, torch's included); on CUDA it is torch.cuda.max_memory_allocated.

Measured on 2 shared cores of an AMD EPYC (avx512_bf16), torch 2.14, in 86 s: every CPU target
passes but one. L_VRNS at m = 256 adds about 50% to a SimCLR loss step: at m = 2d both exact
forms, the (m, m) matrix and the two (d, d) Grams, take a quarter of the matmul FLOPs of
SimCLR's (2m, 2m) matrix before any elementwise work; at m = 1024 it adds 9%.

Shape legend: n embeddings, d embedding dim, m pairs per batch, B images per batch (each gives
two views).
"""
import argparse
import concurrent.futures
import ctypes
import math
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import data
import eval as evaluation
import losses
import models
import train

ROOT = os.path.dirname(os.path.abspath(__file__))
TAU = 0.5  # temperature of every temperature loss and floor (train.py's default)
# dense bf16 tensor-core peak, TFLOP/s, matched against torch.cuda.get_device_name (SXM parts;
# an H100 PCIe peaks at 756: pass --peak-tflops)
PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312}


# ------------------------------------------------------------------------------------------
# Timing and memory
# ------------------------------------------------------------------------------------------

def keep_freed_memory():
    """Have glibc keep freed memory for reuse instead of handing it back to the kernel.

    By default it unmaps freed blocks over 128 KiB - 32 MiB, so every large tensor is faulted in
    again 4 KiB at a time: on 2 cores, 42 SimCLR loss steps (forward + backward) at m = 1024
    took 341,000 page faults and their median was 1.5x the fastest; with freed memory kept,
    38,000 faults and the median within 3% of the fastest. Timings then measure the arithmetic,
    not the kernel. Linux (glibc) only; returns whether it applied."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from <malloc.h>
    return bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30) and libc.mallopt(M_MMAP_THRESHOLD, 2**30))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def race(fns, *, device, rounds, reps=1):
    """Seconds per call of each zero-argument function of fns (name -> fn): the minimum over
    `rounds` interleaved rounds of `reps` calls each, after one untimed warm-up call each
    (allocator, thread pool, oneDNN / cuDNN plans, torch.compile)."""
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


def in_fresh_processes(fn, arg_tuples, workers=2):
    """[fn(*args) for args in arg_tuples], each call in a newly spawned Python process, so that
    its peak memory is its own and not what this process allocated before."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                max_tasks_per_child=1) as pool:
        return [f.result() for f in [pool.submit(fn, *args) for args in arg_tuples]]


def peak_rss_bytes():
    """Peak resident set of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cuda_peak_growth(fn, device):
    """Bytes of GPU memory fn() allocated at its peak beyond what was allocated before it."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def mib(nbytes):
    return f"{nbytes / 2**20:,.0f} MiB"


# ------------------------------------------------------------------------------------------
# 1. Similarity statistics: O(n d^2) identities against the brute-force n x n sums
# ------------------------------------------------------------------------------------------

def embeddings(n, d, device, seed=0):
    """u, v (n, d): correlated like two views of the same images."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g)
    return u.to(device), (u + 0.5 * torch.randn(n, d, generator=g)).to(device)


def brute_force_stats(u, v, *, chunk, max_chunks=0):
    """What eval.similarity_stats returns, by summing every entry of U V^T, U U^T and V V^T:
    O(n^2 d) time, one (chunk, n) float64 block of rows at a time, never the n x n matrices.

    Every block costs the same, so max_chunks > 0 stops after that many blocks to time a
    fraction of the work. Returns (stats, or None when stopped early, blocks done, blocks).
    """
    u = F.normalize(u.double(), dim=1)  # (n, d)
    v = F.normalize(v.double(), dim=1)  # (n, d)
    n = len(u)
    blocks = math.ceil(n / chunk)
    done = min(blocks, max_chunks or blocks)
    sums = torch.zeros(3, 2, dtype=torch.float64, device=u.device)  # (uv, uu, vv) x (s, s^2)
    for k in range(done):
        rows = slice(k * chunk, (k + 1) * chunk)
        for j, (a, b) in enumerate([(u, v), (u, u), (v, v)]):
            s = a[rows] @ b.T  # (c, n)  s[r, i] = a_{k chunk + r}^T b_i
            diag = s.diagonal(k * chunk)  # (c,)  the pairs i == j, left out
            flat = s.view(-1)  # (c n,)
            sums[j, 0] += flat.sum() - diag.sum()
            sums[j, 1] += flat @ flat - diag @ diag  # sum of squares as a dot: no temporary
    if done < blocks:
        return None, done, blocks
    pos = (u * v).sum(1)  # (n,)
    pairs = n * (n - 1)
    neg_mean, within_mean = sums[0, 0] / pairs, (sums[1, 0] + sums[2, 0]) / (2 * pairs)
    stats = {"pos_mean": pos.mean().item(), "pos_var": pos.var(unbiased=False).item(),
             "neg_mean": neg_mean.item(),
             "neg_var": (sums[0, 1] / pairs - neg_mean ** 2).item(),
             "within_mean": within_mean.item(),
             "within_var": ((sums[1, 1] + sums[2, 1]) / (2 * pairs) - within_mean ** 2).item()}
    return stats, done, blocks


def stats_rss_growth(method, n, d, chunk):
    """Run in a fresh process: peak resident-set growth (bytes) of one call of `method` on
    (n, d) embeddings made before it, after a warm-up call on 2 x 2 embeddings (thread pool and
    BLAS buffers are not the method's). The brute force stops after one block: its peak is one
    block's, and every block is the same size."""
    def call(u, v):
        if method == "exact":
            return evaluation.similarity_stats(u, v)
        return brute_force_stats(u, v, chunk=chunk, max_chunks=1)
    call(*embeddings(2, 2, torch.device("cpu")))
    u, v = embeddings(n, d, torch.device("cpu"))
    before = peak_rss_bytes()
    call(u, v)
    return peak_rss_bytes() - before


def bench_similarity_stats(args, device, table):
    print(f"\n== 1. similarity statistics, d = {args.d}: eval.similarity_stats (float64, "
          f"O(n d^2)) vs brute force (float64, O(n^2 d), blocks of {args.chunk} rows)")
    grown = {}  # (method, n) -> bytes at the peak of one call
    if device.type == "cpu":
        jobs = [(method, n, args.d, args.chunk) for n in args.n_list
                for method in ("exact", "brute")]
        grown.update(zip([job[:2] for job in jobs], in_fresh_processes(stats_rss_growth, jobs)))
        memory_label = "peak RSS growth"
    else:
        memory_label = "peak torch.cuda allocation growth"
    print(f"{'n':>7} {'exact':>10} {'brute force':>12} {'speed-up':>9} {'exact mem':>11} "
          f"{'brute mem':>11} {'n x n f64':>10}  note")
    brute_force_stats(*embeddings(2, 2, device), chunk=args.chunk)  # warm-up: float64 BLAS
    for n in args.n_list:
        u, v = embeddings(n, args.d, device)
        exact_s = race({"exact": lambda: evaluation.similarity_stats(u, v)}, device=device,
                       rounds=args.rounds)["exact"]
        sync(device)
        start = time.perf_counter()
        brute, done, blocks = brute_force_stats(u, v, chunk=args.chunk,
                                                max_chunks=args.brute_chunks)
        sync(device)
        brute_s = (time.perf_counter() - start) * blocks / done
        if brute is None:
            note = f"brute force extrapolated from {done} of {blocks} equal blocks"
        else:
            exact = evaluation.similarity_stats(u, v)
            worst = max(abs(brute[k] - exact[k]) / max(abs(exact[k]), 1e-12) for k in brute)
            note = f"all {blocks} blocks; largest relative difference {worst:.1e}"
        if device.type == "cuda":
            grown["exact", n] = cuda_peak_growth(lambda: evaluation.similarity_stats(u, v),
                                                 device)
            grown["brute", n] = cuda_peak_growth(
                lambda: brute_force_stats(u, v, chunk=args.chunk, max_chunks=1), device)
        print(f"{n:>7,} {exact_s * 1e3:>8.1f}ms {brute_s:>11.2f}s {brute_s / exact_s:>8.0f}x "
              f"{mib(grown['exact', n]):>11} {mib(grown['brute', n]):>11} "
              f"{mib(8 * n * n):>10}  {note}")
    print(f"memory: {memory_label} of one call; brute force: one block, {args.chunk} x n "
          "float64 (plus the normalised float64 copies of u and v that both make)")
    n = args.n_list[-1]
    table.append((f"similarity_stats speed-up over brute force, n={n:,} d={args.d}",
                  f"{brute_s / exact_s:,.0f}x", ">= 100x", brute_s / exact_s >= 100))
    # Both methods normalise float64 copies of u and v (2 n d x 8 bytes); O(n d) memory allows
    # that and a few (n,) vectors. An n x n float64 matrix at n = 50,000 would be 20 GB.
    limit = 4 * n * args.d * 8
    table.append((f"similarity_stats peak memory, n={n:,} ({memory_label})",
                  mib(grown["exact", n]), f"<= 4 n d x 8 B = {mib(limit)}, no n^2",
                  grown["exact", n] <= limit))


# ------------------------------------------------------------------------------------------
# 2. Losses against the floor: normalise + matmul + one cross-entropy on the same logits
# ------------------------------------------------------------------------------------------

# The floor of a loss is the cheapest step that touches the same similarities: the (m, m)
# blocks the loss needs, one F.cross_entropy over all of them. SimCLR and DCL need every
# similarity of the 2m embeddings z = [u; v]; InfoNCE and SigLIP the cross-view U V^T; DHEL the
# within-view U U^T and V V^T (it has no cross-view negatives); the +within variants all three.
def all_pairs(u, v):
    z = torch.cat([u, v])  # (2m, d)
    return z @ z.T  # (2m, 2m)


FLOORS = {  # logits from the normalised u, v (m, d)
    "(m, m)": lambda u, v: u @ v.T,
    "(2m, m)": lambda u, v: torch.cat([u @ u.T, v @ v.T]),
    "(3m, m)": lambda u, v: torch.cat([u @ v.T, u @ u.T, v @ v.T]),
    "(2m, 2m)": all_pairs,
}
LOSS_CASES = {  # name -> (loss of (u, v), its floor)
    "infonce": (lambda u, v: losses.infonce_loss(u, v, TAU), "(m, m)"),
    "simclr": (lambda u, v: losses.simclr_loss(u, v, TAU), "(2m, 2m)"),
    "dcl": (lambda u, v: losses.dcl_loss(u, v, TAU), "(2m, 2m)"),
    "dhel": (lambda u, v: losses.dhel_loss(u, v, TAU), "(2m, m)"),
    "siglip": (lambda u, v: losses.siglip_loss(u, v, 10.0, 10.0), "(m, m)"),
    "siglip+within": (lambda u, v: losses.siglip_loss(u, v, 10.0, 10.0, within_view=True),
                      "(3m, m)"),
    "spectral": (lambda u, v: losses.spectral_loss(u, v), "(m, m)"),
    "spectral+within": (lambda u, v: losses.spectral_loss(u, v, within_view=True), "(3m, m)"),
}
DEF_3_1 = ("infonce", "simclr", "dcl", "dhel")  # the targeted ones: <= 1.5x their floor
N_VRNS = 50_000  # training-set size n in L_VRNS's target -1/(n - 1): CIFAR's


def floor_loss(u, v, logits_fn):
    """The floor: normalise, the similarities of FLOORS, one F.cross_entropy over their rows."""
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)
    logits = logits_fn(u, v) / TAU  # (rows, columns)
    labels = torch.arange(len(logits), device=u.device) % logits.shape[1]  # (rows,)
    return F.cross_entropy(logits, labels)


def forward_backward(fn, u, v):
    """A zero-argument function: fn(u, v) forward and backward on fresh leaves u, v."""
    def step():
        a, b = u.detach().requires_grad_(), v.detach().requires_grad_()
        fn(a, b).backward()
    return step


def bench_losses(args, device, table):
    print(f"\n== 2. losses, d = {args.d}, float32, forward + backward, each against its floor "
          "(normalise + matmul + one F.cross_entropy on the same logits)")
    for m in args.m_list:
        u, v = embeddings(m, args.d, device, seed=1)
        fns = {name: forward_backward(fn, u, v) for name, (fn, _) in LOSS_CASES.items()}
        fns["simclr+vrns"] = forward_backward(
            lambda a, b: losses.simclr_loss(a, b, TAU) + 30 * losses.vrns_loss(a, b, N_VRNS),
            u, v)
        for shape, logits_fn in FLOORS.items():
            fns[shape] = forward_backward(
                lambda a, b, logits_fn=logits_fn: floor_loss(a, b, logits_fn), u, v)
        # calls of ~1 ms at m = 256 on 2 cores: repeated to dwarf timer and scheduler jitter
        t = race(fns, device=device, rounds=args.rounds, reps=max(1, 4096 // m))
        print(f"m = {m}: {'loss':>16} {'time':>9}   {'floor':<9} {'time':>9} {'ratio':>6}")
        for name, (_, shape) in LOSS_CASES.items():
            ratio = t[name] / t[shape]
            print(f"{'':7}{name:>16} {t[name] * 1e3:>7.2f}ms   {shape:<9} {t[shape] * 1e3:>7.2f}ms "
                  f"{ratio:>5.2f}x")
            if name in DEF_3_1:
                table.append((f"{name} fwd+bwd / {shape} floor, m={m}", f"{ratio:.2f}x",
                              "<= 1.5x", ratio <= 1.5))
        extra = t["simclr+vrns"] / t["simclr"] - 1
        print(f"{'':7}{'simclr+vrns':>16} {t['simclr+vrns'] * 1e3:>7.2f}ms: L_VRNS adds "
              f"{100 * extra:.0f}% to simclr's step\n{'':7}dhel / the (m, m) floor: "
              f"{t['dhel'] / t['(m, m)']:.2f}x (its negatives fill two (m, m) blocks)")
        table.append((f"vrns_loss extra cost on a simclr step, m={m}", f"{100 * extra:+.0f}%",
                      "<= +10%", extra <= 0.10))


# ------------------------------------------------------------------------------------------
# 3. Augmentation: batched tensor ops against torchvision's per-image PIL pipeline
# ------------------------------------------------------------------------------------------

def bench_augment(args, device, table):
    """Images/s (each image gives two views) of data.two_views on `device`; on CPU also of
    torchvision's PIL pipeline, one image at a time on one thread, as a DataLoader worker runs
    it. Returns the two_views images/s."""
    kw = dict(data.AUGMENT_PRESETS["cifar"], **data.DATASET_STATS["cifar10"])
    images = data.make_shapes(args.aug_batch, seed=0)[0]  # (B, 3, 32, 32) uint8, CIFAR-sized
    on_device = images.to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    fns = {"two_views": lambda: data.two_views(on_device, generator=gen, **kw)}
    if device.type == "cpu":
        view = data.imagefolder_two_view_transform(**kw)  # PIL image -> (3, 32, 32), one view
        pil = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]  # decoded already
        fns["PIL"] = lambda: [(view(x), view(x)) for x in pil]
    t = race(fns, device=device, rounds=args.rounds)
    rate = {name: args.aug_batch / s for name, s in t.items()}
    print(f"\n== 3. augmentation, 'cifar' preset, 32 px, B = {args.aug_batch}: images/s, two "
          f"views each\n{'data.two_views':>30}: {rate['two_views']:>9,.0f} img/s on {device} "
          f"({torch.get_num_threads()} torch threads)")
    if device.type == "cpu":
        speedup = rate["two_views"] / rate["PIL"]
        print(f"{'torchvision PIL, per image':>30}: {rate['PIL']:>9,.0f} img/s on 1 thread; "
              f"batched / PIL = {speedup:.1f}x")
        table.append(("two_views img/s / torchvision PIL img/s, 32 px", f"{speedup:.1f}x",
                      ">= 10x", speedup >= 10))
    return rate["two_views"]


# ------------------------------------------------------------------------------------------
# 4 and 5. Training step and memory
# ------------------------------------------------------------------------------------------

def model_flops_per_image(model, device, size=32):
    """Model FLOPs of one training image: forward + backward of its two views, counted by
    FlopCounterMode (convolutions and matmuls) on a batch of 16 views."""
    x = torch.randn(16, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)[1].sum().backward()
    model.zero_grad(set_to_none=True)
    return 2 * counter.get_total_flops() / 16


def make_step(config, *, bf16, compile_model, device):
    """One SimCLR training step as train.py takes it, on a fixed batch of B = m images:
    two views, forward, loss, backward, AdamW. Returns (step function, the model)."""
    model = models.ContrastiveModel("resnet18", width=config["width"],
                                    stem=config["stem"]).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_model else model
    m = config["batch"]
    optimizer = train.make_optimizer("adamw", model, lr=train.DEFAULT_LR["adamw"] * m / 256,
                                     weight_decay=1e-4)
    loss_fn = train.make_loss("simclr", temperature=TAU, siglip_t=10.0, siglip_b=10.0,
                              within_view=False)
    kw = dict(data.AUGMENT_PRESETS["cifar"], **data.DATASET_STATS["cifar10"])
    images = data.make_shapes(m, seed=0)[0].to(device)  # (m, 3, 32, 32) uint8
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        x, y = data.two_views(images, generator=gen, **kw)  # (m, 3, 32, 32) each
        loss = train.embed_and_loss(net, x, y, loss_fn=loss_fn, n=50_000, vrns_weight=0.0,
                                    bf16=bf16)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step, model


def describe(config):
    return f"resnet18 w{config['width']} {config['stem']} m={config['batch']}"


def bench_train_cpu(args, device, table):
    print("\n== 4. training step on CPU (two views, forward, simclr loss, backward, AdamW): "
          "images/s")
    print(f"{'model':>34} {'fp32':>9} {'bf16':>9} {'bf16/fp32':>9} {'GFLOP/img':>9}  "
          "50k-image epoch (best)")
    for config, steps in [(args.small, args.steps), (args.big, args.big_steps)]:
        fns = {}
        for precision in ("fp32", "bf16"):
            fns[precision], model = make_step(config, bf16=precision == "bf16",
                                              compile_model=False, device=device)
        flops = model_flops_per_image(model, device)
        t = race(fns, device=device, rounds=steps)
        rate = {p: config["batch"] / s for p, s in t.items()}
        best = max(rate.values())
        print(f"{describe(config):>34} {rate['fp32']:>9.1f} {rate['bf16']:>9.1f} "
              f"{rate['bf16'] / rate['fp32']:>8.2f}x {flops / 1e9:>9.2f}  "
              f"{50_000 / best / 60:.1f} min ({steps} timed steps each)")
        for p in ("fp32", "bf16"):
            table.append((f"train step {describe(config)}, {p}", f"{rate[p]:.1f} img/s", "-",
                          None))
    print(f"train.use_bf16('auto', cpu) = {train.use_bf16('auto', device)}: what train.py "
          "picks on this CPU")


def bench_train_cuda(args, device, table, augment_rate):
    name = torch.cuda.get_device_name(device)
    print(f"\n== 4. training step on {name}: bf16 autocast, channels_last, torch.compile "
          f"{'on' if args.compile else 'off (--compile)'}; 5. peak GPU memory of a step")
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    print(f"{'model':>34} {'img/s':>9} {'epoch 50k':>10} {'GFLOP/img':>9} {'MFU':>6} "
          f"{'peak mem':>9}")
    for config in (args.small, args.big):
        step, model = make_step(config, bf16=True, compile_model=args.compile, device=device)
        flops = model_flops_per_image(model, device)
        rate = config["batch"] / race({"step": step}, device=device, rounds=3,
                                      reps=args.steps)["step"]
        torch.cuda.reset_peak_memory_stats(device)
        step()
        memory = torch.cuda.max_memory_allocated(device)  # weights, AdamW state, activations
        mfu = f"{100 * flops * rate / (peak * 1e12):.1f}%" if peak else "n/a"
        print(f"{describe(config):>34} {rate:>9,.0f} {50_000 / rate:>9.1f}s "
              f"{flops / 1e9:>9.2f} {mfu:>6} {memory / 2**30:>7.2f}GiB")
        table.append((f"train step {describe(config)}, bf16", f"{rate:,.0f} img/s", "-", None))
        table.append((f"model FLOP utilisation, {describe(config)}", mfu,
                      f"of {peak} TFLOP/s" if peak else "needs --peak-tflops", None))
    # the last config is the paper's CIFAR ResNet-18 at batch 512
    table.append((f"epoch of 50k images (2 views), {describe(config)}",
                  f"{50_000 / rate:.1f} s", "<= 6 s (--compile)", 50_000 / rate <= 6))
    table.append((f"peak GPU memory, {describe(config)} step", f"{memory / 2**30:.2f} GiB", "-",
                  None))
    ratio = augment_rate / rate
    table.append((f"two_views img/s / training img/s, {describe(config)}", f"{ratio:.1f}x",
                  ">= 5x", ratio >= 5))


def bench_train_memory(args, table):
    """Section 5 on CPU: peak RSS of the CPU default training run in a subprocess."""
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = [sys.executable, "train.py", *args.train_flags, "--device", "cpu", "--out-dir",
               out_dir]
        # A bare Python wrapper runs train.py as its only child, so the wrapper's
        # RUSAGE_CHILDREN ru_maxrss (KiB on Linux) is train.py's own peak, not that of
        # another child of this process.
        wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                   "sys.exit(r.returncode)")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=ROOT,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
    shown = " ".join(["python", *cmd[1:]]).replace(out_dir, "<tmp>")
    if done.returncode:
        print(f"\n== 5. memory: `{shown}` failed:\n{done.stderr[-2000:]}")
        table.append(("peak RSS of the CPU default train.py run", "run failed", "<= 2 GB", False))
        return
    peak = int(done.stdout.split()[-1]) * 1024
    print(f"\n== 5. memory: `{shown}` took {wall:.0f} s; its peak resident set (ru_maxrss) was "
          f"{peak / 1e9:.2f} GB")
    table.append(("peak RSS of the CPU default train.py run", f"{peak / 1e9:.2f} GB", "<= 2 GB",
                  peak <= 2e9))


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

def machine(device):
    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}; Python {platform.python_version()}")


def main(argv=None):
    p = argparse.ArgumentParser(description="Time the fast paths of this code base against "
                                "their baselines; a final table says PASS or FAIL per target.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = cuda if visible, else cpu. CPU runs the CPU figures (PIL "
                   "baseline, fp32 vs bf16, train.py's RSS); cuda the GPU ones (MFU, epoch time)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (~15 s): checks that the "
                   "script runs, not the targets")
    p.add_argument("--n-list", default="5000,10000,20000,50000",
                   help="embedding counts n for section 1, comma-separated; the last is judged")
    p.add_argument("--d", type=int, default=128, help="embedding dimension of sections 1 and 2 "
                   "(the paper's projector output)")
    p.add_argument("--chunk", type=int, default=1024, help="rows per brute-force block: memory "
                   "chunk x n x 8 bytes (400 MB at n = 50,000)")
    p.add_argument("--brute-chunks", type=int, default=None, help="brute-force blocks timed "
                   "per n, the rest extrapolated (all blocks cost the same); 0 = all, ~20 s at "
                   "n = 50,000 on 2 cores. Default 10 on CPU, 0 on GPU")
    p.add_argument("--m-list", default="256,1024", help="batch sizes m of section 2, "
                   "comma-separated")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds of sections "
                   "1-3; more beats more noise")
    p.add_argument("--aug-batch", type=int, default=512, help="images B per two_views call; "
                   "smaller batches pay more per-call overhead (B = 128: ~20%% fewer img/s)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps: CPU, of the "
                   "small model (default 5); GPU, per round of 3, of both (default 20)")
    p.add_argument("--big-steps", type=int, default=1, help="CPU: timed steps of ResNet-18 at "
                   "batch 512, 5-15 s each on 2 cores")
    p.add_argument("--compile", action="store_true", help="GPU: torch.compile the model "
                   "(~1 min per model); the 6 s epoch target assumes it")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak "
                   "for MFU; default from a table (H100 SXM, H200: 989, A100: 312)")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "cuda" or args.device == "auto" and
                          torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA GPU is visible; use --device cpu")
    args.n_list = [int(s) for s in args.n_list.split(",")]
    args.m_list = [int(s) for s in args.m_list.split(",")]
    if args.brute_chunks is None:
        args.brute_chunks = 10 if device.type == "cpu" else 0
    args.steps = args.steps or (5 if device.type == "cpu" else 20)
    args.small = dict(width=16, stem="cifar_s2", batch=128)  # train.py's CPU default
    args.big = dict(width=64, stem="cifar", batch=512)  # the paper's CIFAR ResNet-18
    args.train_flags = ["--epochs", "1", "--probe-epochs", "5"]  # the default run, 1 epoch
    if args.quick:
        args.n_list, args.d, args.chunk, args.brute_chunks = [400, 800], 32, 256, 2
        args.m_list, args.rounds, args.aug_batch, args.steps = [64], 2, 64, 2
        args.small = dict(width=4, stem="cifar_s2", batch=16)
        args.big = dict(width=8, stem="cifar", batch=16)
        args.train_flags = ["--epochs", "1", "--probe-epochs", "2", "--train-size", "256",
                            "--width", "4", "--batch-size", "32", "--probe-size", "64"]
    print(f"machine: {machine(device)}")
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"freed memory kept in this process (keep_freed_memory): {keep_freed_memory()}")
    print(f"sizes: n {args.n_list}, d {args.d}, m {args.m_list}, B {args.aug_batch}; "
          f"{args.rounds} rounds; train steps {args.steps} small, {args.big_steps} big")
    start = time.perf_counter()
    table = []  # (figure, measured, target, passed: True / False / None = no target)
    bench_similarity_stats(args, device, table)
    bench_losses(args, device, table)
    augment_rate = bench_augment(args, device, table)
    if device.type == "cpu":
        bench_train_cpu(args, device, table)
        bench_train_memory(args, table)
        print("\nGPU figures (MFU, epoch time, augmentation vs training, GPU memory): "
              f"{'skipped (no GPU)' if not torch.cuda.is_available() else 'use --device cuda'}")
    else:
        bench_train_cuda(args, device, table, augment_rate)
        print("\nCPU figures (PIL baseline, fp32 vs bf16, train.py's RSS): use --device cpu")

    widths = [max(len(row[i]) for row in table) for i in range(3)]
    print(f"\n{'figure':<{widths[0]}}  {'measured':>{widths[1]}}  {'target':<{widths[2]}}  "
          "verdict")
    for figure, measured, target, passed in table:
        verdict = "-" if passed is None else "PASS" if passed else "FAIL"
        print(f"{figure:<{widths[0]}}  {measured:>{widths[1]}}  {target:<{widths[2]}}  {verdict}")
    print(f"wall time {time.perf_counter() - start:.0f} s; load average (1 min) at end: "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
