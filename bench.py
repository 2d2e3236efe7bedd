"""Benchmarks: each fast path of this code base timed side by side with its baseline or its floor
in one run, with the target it must meet, and a final table of PASS / FAIL. The exit status is 0
when every target passes and 1 otherwise; a row that cannot run here (the GPU rows without a
GPU) says "skipped" and does not count.

    python bench.py                         # CPU figures: a few minutes on 2 idle cores
    python bench.py --device cuda --compile # GPU figures (a few minutes, most of it compiling)
    python bench.py --quick                 # tiny sizes, ~30 s: the smoke test of tests/

  1. similarity statistics: eval.similarity_stats, O(n d^2), against the brute-force n x n sums
     done one block of rows at a time; time and peak memory for each n of --n-list
  2. losses: forward + backward of each loss against its floor, a bare step on the same logits
     (normalise, matmul, one F.cross_entropy); L_VRNS (Def. 5.7) against its own floor
     (normalise, one (m, m) matmul, the elementwise square) and against a training step at m
     (train.py's default model on CPU, the paper's ResNet-18 on a GPU; eager)
  3. augmentation: data.two_views (batched tensor ops) against torchvision's per-image PIL
     pipeline with the same parameters (CPU)
  4. training step, as train.py takes it (two views of a uint8 batch, then
     train.contrastive_step: encoder + projector, simclr + L_VRNS, backward, AdamW). CPU:
     images/s in fp32 and bf16 of train.py's default model and of the paper's CIFAR ResNet-18.
     GPU: the paper's ResNet-18 in bf16 at m = 32, 128, 512: images/s, the time of a
     50,000-image epoch, model FLOP utilisation (MFU), the augmentation's share of the step and
     the peak memory
  5. memory: peak resident memory of the CPU default `python train.py` run (CPU)
  6. a busy CPU: the default model's training step, images/s on a quiet machine and beside one
     busy-looping process that this script starts and stops, for three thread policies:
     train.choose_threads (train.py's default, decided again in each condition as a new run
     would), one thread, and every core (torch's default); every core with
     OMP_WAIT_POLICY=PASSIVE in a subprocess for comparison

How it measures. Every contender runs in every round, rounds interleaved, and the minimum over
rounds is kept: all contenders see the same background load, and the least disturbed round is
the best estimate of the cost. Other processes share the cores, so absolute times are noise
while ratios measured side by side are not; the load average is printed at start and end (a
second PyTorch process on the same cores slows every op many times over: rerun when it is
gone). Section 6 is the exception: it measures that slow-down on purpose, with a load it makes.
This process keeps freed memory for reuse (keep_freed_memory) so that repeated timings of one
call agree; train.py runs with glibc's default, so its own images/s can be lower than section
4's, most for large batches of the big model. GPU times are taken between
torch.cuda.synchronize calls, after warm-up steps that compile the model and choose cuDNN's
kernels. Memory on CPU is resident-set growth in a fresh process (ru_maxrss, which sees every
allocation, torch's included); on CUDA it is torch.cuda.max_memory_allocated.

Shape legend: n embeddings, d embedding dim, m pairs per batch (m images, two views each).
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
N_VRNS = 50_000  # training-set size n in L_VRNS's target -1/(n - 1): CIFAR's
# dense bf16 tensor-core peak, TFLOP/s: the first key found in torch.cuda.get_device_name
PEAK_TFLOPS = {"H100 PCIe": 756, "H100": 989, "H200": 989, "A100": 312}
GPU_M = (32, 128, 512)  # the paper's small, middle and large batches
EPOCH_TARGET_S = {32: 12, 512: 6}  # one 50,000-image epoch (two views each), bf16, --compile


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
            worst = max(abs(brute[k] - float(exact[k])) / max(abs(float(exact[k])), 1e-12)
                        for k in brute)
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


def floor_loss(u, v, logits_fn):
    """The floor: normalise, the similarities of FLOORS, one F.cross_entropy over their rows."""
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)
    logits = logits_fn(u, v) / TAU  # (rows, columns)
    labels = torch.arange(len(logits), device=u.device) % logits.shape[1]  # (rows,)
    return F.cross_entropy(logits, labels)


def vrns_floor(u, v):
    """The floor of L_VRNS: the similarities it squares, u_i^T v_j of the normalised
    embeddings (as every floor above, from the normalised u, v), one (m, m) matmul, squared."""
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)
    return (u @ v.T).square().mean()  # (m, m) -> ()


def bare_matmul_square(u, v):
    """The arithmetic alone, printed beside the floor: one (m, m) matmul, squared. At small m
    the two normalisations of u and v cost more than this on a CPU."""
    return (u @ v.T).square().mean()  # (m, m) -> ()


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
        print(f"{'':7}dhel / the (m, m) floor: {t['dhel'] / t['(m, m)']:.2f}x (its negatives "
              "fill two (m, m) blocks)")


def bench_vrns(args, device, table, config):
    """L_VRNS forward + backward against its floor, against the bare matmul and square, and
    against a training step at the same m. The training step already contains one L_VRNS
    (train.contrastive_step logs it at lam = 0)."""
    bf16 = train.use_bf16("auto", device)
    print(f"\n== 2b. L_VRNS (Def. 5.7), d = {args.d}, n = {N_VRNS:,}, float32, forward + "
          "backward, against its floor (normalise, one (m, m) matmul, square), the bare "
          f"matmul + square, and a training step at batch m ({describe(config)}, "
          f"{'bf16' if bf16 else 'fp32'}, eager, {torch.get_num_threads()} thread(s))")
    print(f"{'m':>6} {'vrns_loss':>10} {'floor':>9} {'ratio':>6} {'bare':>9} {'ratio':>6} "
          f"{'train step':>11} {'share':>7}")
    for m in args.vrns_m:
        u, v = embeddings(m, args.d, device, seed=2)
        t = race({"vrns": forward_backward(lambda a, b: losses.vrns_loss(a, b, N_VRNS), u, v),
                  "floor": forward_backward(vrns_floor, u, v),
                  "bare": forward_backward(bare_matmul_square, u, v)},
                 device=device, rounds=args.rounds, reps=max(1, 4096 // m))
        step = make_step(config, m, bf16=bf16, device=device)[0]
        step_s = race({"step": step}, device=device, rounds=args.step_rounds)["step"]
        ratio, share = t["vrns"] / t["floor"], t["vrns"] / step_s
        print(f"{m:>6} {t['vrns'] * 1e3:>8.3f}ms {t['floor'] * 1e3:>7.3f}ms {ratio:>5.2f}x "
              f"{t['bare'] * 1e3:>7.3f}ms {t['vrns'] / t['bare']:>5.2f}x {step_s * 1e3:>9.1f}ms "
              f"{100 * share:>6.2f}%")
        table.append((f"vrns_loss fwd+bwd / its floor, m={m}", f"{ratio:.2f}x", "<= 2x",
                      ratio <= 2))
        table.append((f"vrns_loss fwd+bwd / train step {describe(config)}, m={m}",
                      f"{100 * share:.2f}%", "<= 2%", share <= 0.02))


# ------------------------------------------------------------------------------------------
# 3. Augmentation: batched tensor ops against torchvision's per-image PIL pipeline
# ------------------------------------------------------------------------------------------

def bench_augment(args, device, table):
    """Images/s (each image gives two views) of data.two_views on `device`; on CPU also of
    torchvision's PIL pipeline, one image at a time on one thread, as a DataLoader worker runs
    it."""
    kw = data.augment_kwargs("cifar10")
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
          f"({torch.get_num_threads()} torch thread(s))")
    figure = "two_views img/s / torchvision PIL img/s, 32 px"
    if device.type != "cpu":
        table.append((figure, f"skipped (--device {device.type})", ">= 10x", None))
        return
    speedup = rate["two_views"] / rate["PIL"]
    print(f"{'torchvision PIL, per image':>30}: {rate['PIL']:>9,.0f} img/s on 1 thread; "
          f"batched / PIL = {speedup:.1f}x")
    table.append((figure, f"{speedup:.1f}x", ">= 10x", speedup >= 10))


# ------------------------------------------------------------------------------------------
# 4 and 5. Training step and memory
# ------------------------------------------------------------------------------------------

def describe(config):
    return f"resnet18 w{config['width']} {config['stem']}"


def make_step(config, m, *, bf16, device, compile_model=False):
    """One training step as train.py takes it, on a fixed batch of m uint8 images: two views,
    then train.contrastive_step (simclr + L_VRNS at lam = 0, backward, AdamW at train.py's
    defaults). Returns (step, augment, model): the step, its augmentation alone (both
    zero-argument functions) and the model, uncompiled."""
    memory_format = torch.channels_last if device.type == "cuda" else torch.preserve_format
    model = models.ContrastiveModel("resnet18", width=config["width"], stem=config["stem"])
    model = model.to(device, memory_format=memory_format)  # as train.py: channels_last on CUDA
    # dynamic=False: one batch size per model, as in a train.py run, and no recompilation with
    # a symbolic batch dimension when the next model of another m reuses the compiled code
    net = torch.compile(model, dynamic=False) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.DEFAULT_LR["adamw"] * m / 256,
                                  weight_decay=1e-4)
    loss_fn = train.make_loss("simclr", temperature=TAU, siglip_t=10.0, siglip_b=10.0,
                              within_view=False)
    kw = data.augment_kwargs(config["dataset"])  # as train.py
    images = data.make_shapes(m, seed=0)[0].to(device)  # (m, 3, 32, 32) uint8
    gen = torch.Generator(device=device).manual_seed(0)

    def augment():
        return data.two_views(images, generator=gen, **kw)  # (m, 3, S, S) each

    def step():
        x, y = augment()
        return train.contrastive_step(net, optimizer, x, y, loss_fn=loss_fn, n=N_VRNS, lam=0.0,
                                      bf16=bf16)  # (5,) statistics, left on the device
    return step, augment, model


def model_flops_per_image(config, size=32):
    """Model FLOPs of one training image: forward + backward of its two views, counted by
    FlopCounterMode (convolutions and matmuls; not BatchNorm, activations or the optimiser) on
    4 views on the CPU. The count is linear in the batch and the same on every device."""
    model = models.ContrastiveModel("resnet18", width=config["width"], stem=config["stem"])
    x = torch.randn(4, 3, size, size)  # (4, 3, S, S)
    with FlopCounterMode(display=False) as counter:
        model(x)[1].sum().backward()
    return 2 * counter.get_total_flops() / 4


def bench_train_cpu(args, device, table):
    print("\n== 4. training step on CPU (two views, forward, simclr + L_VRNS, backward, AdamW): "
          f"images/s, {torch.get_num_threads()} thread(s)")
    print(f"{'model':>30} {'m':>5} {'fp32':>9} {'bf16':>9} {'bf16/fp32':>9} {'GFLOP/img':>9}  "
          "50k-image epoch (best)")
    for config, rounds in [(args.small, args.steps), (args.big, args.big_steps)]:
        m = config["batch"]
        fns = {p: make_step(config, m, bf16=p == "bf16", device=device)[0]
               for p in ("fp32", "bf16")}
        rate = {p: m / s for p, s in race(fns, device=device, rounds=rounds).items()}
        print(f"{describe(config):>30} {m:>5} {rate['fp32']:>9.1f} {rate['bf16']:>9.1f} "
              f"{rate['bf16'] / rate['fp32']:>8.2f}x {model_flops_per_image(config) / 1e9:>9.2f}"
              f"  {50_000 / max(rate.values()) / 60:.1f} min ({rounds} timed steps each)")
        for p in ("fp32", "bf16"):
            table.append((f"train step {describe(config)} m={m}, {p}", f"{rate[p]:.1f} img/s",
                          "-", None))
    print(f"train.use_bf16('auto', cpu) = {train.use_bf16('auto', device)}: what train.py "
          "picks on this CPU")


def gpu_step_figures(config, m, *, device, compile_model, rounds, reps):
    """Seconds per training step and per augmentation alone of `config` at batch m on `device`
    in bf16 where it has it, and the peak memory of one step (bytes; None off CUDA). Runs on
    any device: the tests run it on the CPU at a tiny size."""
    step, augment, _ = make_step(config, m, bf16=train.use_bf16("auto", device), device=device,
                                 compile_model=compile_model)
    for _ in range(3):  # compiles forward and backward, picks cuDNN's kernels, AdamW's state
        step()
    t = race({"step": step, "augment": augment}, device=device, rounds=rounds, reps=reps)
    memory = None
    if device.type == "cuda":  # weights, AdamW's state, activations and the augmentation's
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        memory = torch.cuda.max_memory_allocated(device)
    return {"step_s": t["step"], "augment_s": t["augment"], "memory": memory}


def bench_train_gpu(args, device, table):
    """Section 4 on a GPU, or its rows marked skipped."""
    config = args.big
    on_gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if on_gpu else "a GPU"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    flops = model_flops_per_image(config)  # per image, two views, forward + backward
    print(f"\n== 4. training step on {name}: {describe(config)}, bf16 autocast, channels_last, "
          f"torch.compile {'on' if args.compile else 'off (--compile)'}; {flops / 1e9:.2f} model "
          f"GFLOP/img, MFU against {peak or '?'} TFLOP/s; augmentation = data.two_views alone / "
          "the whole step")
    print(f"{'m':>5} {'img/s':>9} {'epoch 50k':>10} {'MFU':>6} {'augmentation':>12} "
          f"{'peak mem':>9}")
    skipped = None if on_gpu else ("skipped (no GPU)" if not torch.cuda.is_available() else
                                   f"skipped (--device {device.type})")
    for m in GPU_M:
        target = EPOCH_TARGET_S.get(m)
        figure = f"GPU epoch of 50k images (2 views), {describe(config)} bf16, m={m}"
        target_text = f"<= {target} s" if target else "-"
        if skipped:
            print(f"{m:>5} {skipped}")
            table.append((figure, skipped, target_text, None))
            continue
        f = gpu_step_figures(config, m, device=device, compile_model=args.compile, rounds=3,
                             reps=args.steps)
        epoch = 50_000 / m * f["step_s"]
        mfu = f"{100 * flops * m / f['step_s'] / (peak * 1e12):.1f}%" if peak else "n/a"
        print(f"{m:>5} {m / f['step_s']:>9,.0f} {epoch:>9.1f}s {mfu:>6} "
              f"{100 * f['augment_s'] / f['step_s']:>11.0f}% {f['memory'] / 2**30:>7.2f}GiB")
        table.append((figure, f"{epoch:.1f} s", target_text, epoch <= target if target else None))
        torch.cuda.empty_cache()


def bench_train_memory(args, table):
    """Section 5 on CPU: peak RSS of the CPU default training run in a subprocess."""
    figure = "peak RSS of the CPU default train.py run"
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
        table.append((figure, "run failed", "<= 2 GB", False))
        return
    peak = int(done.stdout.split()[-1]) * 1024
    print(f"\n== 5. memory: `{shown}` took {wall:.0f} s; its peak resident set (ru_maxrss) was "
          f"{peak / 1e9:.2f} GB")
    table.append((figure, f"{peak / 1e9:.2f} GB", "<= 2 GB", peak <= 2e9))


# ------------------------------------------------------------------------------------------
# 6. A busy CPU: the default step beside one busy-looping process, per thread policy
# ------------------------------------------------------------------------------------------

def window_rate(step, m, *, max_steps, max_seconds):
    """Images/s over one timing window: max_steps steps, or fewer once max_seconds have passed
    (a step on a busy machine can take seconds), at least one."""
    start, done = time.perf_counter(), 0
    while done < max_steps and (done == 0 or time.perf_counter() - start < max_seconds):
        step()
        done += 1
    return m * done / (time.perf_counter() - start)


def rates_per_thread_count(step, m, counts, *, windows, max_steps, max_seconds):
    """{threads: best images/s over `windows` windows}, the counts interleaved in every round."""
    for threads in counts:  # warm-up: the thread pool at this size
        torch.set_num_threads(threads)
        step()
    best = dict.fromkeys(counts, 0.0)
    for _ in range(windows):
        for threads in counts:
            torch.set_num_threads(threads)
            best[threads] = max(best[threads], window_rate(step, m, max_steps=max_steps,
                                                           max_seconds=max_seconds))
    return best


def subprocess_rate(config, *, windows, max_steps, max_seconds):
    """Run in a subprocess (environment variables such as OMP_WAIT_POLICY are read once, when
    the OpenMP runtime starts): the best images/s of the default step at torch's thread count."""
    device = torch.device("cpu")
    keep_freed_memory()  # as in the parent process
    step = make_step(config, config["batch"], bf16=train.use_bf16("auto", device),
                     device=device)[0]
    return rates_per_thread_count(step, config["batch"], [torch.get_num_threads()],
                                  windows=windows, max_steps=max_steps,
                                  max_seconds=max_seconds)[torch.get_num_threads()]


def bench_busy_cpu(args, device, table):
    """Section 6: quiet, then with one busy loop started here, for each thread policy."""
    figures = ("busy CPU: default threads, busy / quiet img/s",
               "busy CPU: default threads quiet / all cores quiet")
    if device.type != "cpu":
        for figure, target in zip(figures, (">= 50%", ">= 90%")):
            table.append((figure, f"skipped (--device {device.type})", target, None))
        return
    config, m, cores = args.small, args.small["batch"], args.threads
    bf16 = train.use_bf16("auto", device)
    step, _, model = make_step(config, m, bf16=bf16, device=device)
    timing = dict(windows=args.busy_windows, max_steps=10, max_seconds=args.busy_seconds)
    passive = (f"import bench; print(bench.subprocess_rate({config!r}, windows="
               f"{args.busy_windows}, max_steps=10, max_seconds={args.busy_seconds}))")
    print(f"\n== 6. a busy CPU: {describe(config)} m={m}, {'bf16' if bf16 else 'fp32'}, two "
          f"views + contrastive_step, images/s (best of {args.busy_windows} windows of up to 10 "
          f"steps or {args.busy_seconds} s), quiet, then beside one process running `while True: "
          f"pass`; every core = torch's default, {cores} thread(s)")
    chosen, rate, rate_passive = {}, {}, {}
    for condition in ("quiet", "busy"):
        loop = None
        try:
            if condition == "busy":
                loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                print(f"busy-looping process {loop.pid} started")
                time.sleep(0.5)  # its interpreter starts and spins
            print(f"{condition}: load average (1 min) {os.getloadavg()[0]:.2f}")
            torch.set_num_threads(cores)  # choose_threads tries every core, one fewer, one
            chosen[condition] = train.choose_threads(model, batch=m, size=32, bf16=bf16,
                                                     device=device)
            counts = sorted({1, cores, chosen[condition]})
            rate[condition] = rates_per_thread_count(step, m, counts, **timing)
            done = subprocess.run([sys.executable, "-c", passive], cwd=ROOT, capture_output=True,
                                  text=True, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
            rate_passive[condition] = math.nan if done.returncode else float(done.stdout)
            if done.returncode:
                print(f"the OMP_WAIT_POLICY=PASSIVE subprocess failed:\n{done.stderr[-2000:]}")
        finally:
            torch.set_num_threads(cores)
            if loop is not None:
                loop.kill()
                loop.wait()
                print(f"busy-looping process {loop.pid} stopped")
    policies = {"default (train.choose_threads)": [rate[c][chosen[c]] for c in rate],
                "1 thread": [rate[c][1] for c in rate],
                f"all cores ({cores}, torch's default)": [rate[c][cores] for c in rate],
                f"all cores ({cores}), OMP_WAIT_POLICY=PASSIVE": list(rate_passive.values())}
    print(f"{'thread policy':>40} {'quiet':>9} {'busy':>9} {'busy/quiet':>10}")
    for policy, (quiet, busy) in policies.items():
        print(f"{policy:>40} {quiet:>9.1f} {busy:>9.1f} {100 * busy / quiet:>9.0f}%")
    print(f"train.choose_threads chose {chosen['quiet']} thread(s) quiet, {chosen['busy']} busy")
    (quiet, busy), all_quiet = policies["default (train.choose_threads)"], rate["quiet"][cores]
    table.append((figures[0], f"{100 * busy / quiet:.0f}% ({busy:.0f} / {quiet:.0f})", ">= 50%",
                  busy >= 0.5 * quiet))
    table.append((figures[1], f"{100 * quiet / all_quiet:.0f}% ({quiet:.0f} / {all_quiet:.0f})",
                  ">= 90%", quiet >= 0.9 * all_quiet))
    for policy, (quiet, busy) in list(policies.items())[1:]:
        table.append((f"busy CPU: {policy}, busy / quiet img/s",
                      f"{100 * busy / quiet:.0f}% ({busy:.0f} / {quiet:.0f})", "-", None))


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
            f"{torch.get_num_threads()} thread(s), CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}; Python {platform.python_version()}")


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
                                "their baselines; a final table says PASS or FAIL per target, "
                                "and the exit status is 1 if any target fails.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto = cuda if visible, else cpu. cpu runs the CPU figures (PIL "
                   "baseline, fp32 vs bf16, train.py's RSS, a busy CPU); cuda the GPU ones "
                   "(epoch time, MFU, peak memory)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (~30 s): checks that the "
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
    p.add_argument("--m-list", default="256,1024", help="batch sizes m of the Def. 3.1 losses "
                   "in section 2, comma-separated")
    p.add_argument("--vrns-m", default="32,128,256,512,1024", help="batch sizes m of L_VRNS "
                   "in section 2, comma-separated; each also times a training step at m")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds of sections "
                   "1-3; more beats more noise")
    p.add_argument("--aug-batch", type=int, default=512, help="images B per two_views call; "
                   "smaller batches pay more per-call overhead")
    p.add_argument("--steps", type=int, default=None, help="timed training steps: CPU, of the "
                   "default model (default 5); GPU, per round of 3 (default 20)")
    p.add_argument("--big-steps", type=int, default=1, help="CPU: timed steps of the paper's "
                   "ResNet-18 at batch 128, seconds each on 2 cores")
    p.add_argument("--busy-seconds", type=float, default=1.5, help="section 6: longest timing "
                   "window; more steadies the busy figures and costs 3x as many seconds per "
                   "condition and thread count")
    p.add_argument("--compile", action="store_true", help="GPU: torch.compile the model "
                   "(~1 min per batch size); the epoch targets assume it")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak "
                   "for MFU; default from a table (H100 SXM, H200: 989, A100: 312)")
    args = p.parse_args(argv)

    try:
        device = models.pick_device(args.device)
    except ValueError as e:
        p.error(f"--device {args.device}: {e}")
    if device.type not in ("cpu", "cuda"):  # MPS: the CPU figures
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes, as train.py sets it
    args.threads = torch.get_num_threads()  # torch's default: every core (or OMP_NUM_THREADS)
    args.n_list = [int(s) for s in args.n_list.split(",")]
    args.m_list = [int(s) for s in args.m_list.split(",")]
    args.vrns_m = [int(s) for s in args.vrns_m.split(",")]
    if args.brute_chunks is None:
        args.brute_chunks = 10 if device.type == "cpu" else 0
    args.steps = args.steps or (5 if device.type == "cpu" else 20)
    args.step_rounds, args.busy_windows = 2, 3  # timed training steps per m of section 2
    # train.py's CPU default, and the paper's CIFAR ResNet-18 (batch of section 4 on CPU)
    args.small = dict(width=16, stem="cifar_s2", dataset="shapes", batch=128)
    args.big = dict(width=64, stem="cifar", dataset="cifar10", batch=128)
    args.train_flags = ["--epochs", "1", "--probe-epochs", "5"]  # the default run, 1 epoch
    if args.quick:
        args.n_list, args.d, args.chunk, args.brute_chunks = [800], 32, 256, 2
        args.m_list, args.vrns_m, args.rounds, args.aug_batch = [64], [16, 32], 2, 64
        args.steps, args.step_rounds, args.busy_windows, args.busy_seconds = 2, 1, 2, 0.3
        args.small = dict(args.small, width=4, batch=16)
        args.big = dict(args.big, width=8, batch=16)
        args.train_flags = ["--epochs", "1", "--probe-epochs", "2", "--train-size", "256",
                            "--width", "4", "--batch-size", "32", "--track-size", "64"]
    print(f"machine: {machine(device)}")
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"freed memory kept in this process (keep_freed_memory): {keep_freed_memory()}")
    print(f"sizes: n {args.n_list}, d {args.d}, m {args.m_list}, L_VRNS m {args.vrns_m}, "
          f"B {args.aug_batch}; {args.rounds} rounds; train steps {args.steps} small, "
          f"{args.big_steps} big")
    start = time.perf_counter()
    table = []  # (figure, measured, target, passed: True / False / None = no target)
    bench_similarity_stats(args, device, table)
    bench_losses(args, device, table)
    bench_vrns(args, device, table, args.small if device.type == "cpu" else args.big)
    bench_augment(args, device, table)
    if device.type == "cpu":
        bench_train_cpu(args, device, table)
    bench_train_gpu(args, device, table)
    if device.type == "cpu":
        bench_train_memory(args, table)
    bench_busy_cpu(args, device, table)
    status = print_table(table)
    print(f"wall time {time.perf_counter() - start:.0f} s; load average (1 min) at end: "
          f"{os.getloadavg()[0]:.2f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
