"""Benchmarks: each fast path of this code base timed beside its floor or baseline, against its
target. The final table says PASS or FAIL per target (skip where a row cannot run here, "-" for
a figure without one); the exit status is 1 if any target fails, else 0.

    python bench.py                            # CPU: 2-3 minutes on 2 idle cores
    python bench.py --device cuda --compile    # GPU: minutes, most of them compiling
    python bench.py --quick                    # tiny sizes: the smoke test of tests/
    python bench.py --split RUN/summary.json   # where the time of a train.py run went

Sections: 1. theory.similarity_stats against the brute-force n x n sums; 2. each loss against a
floor that does its work plainly; 3. data.two_views against torchvision's per-image PIL
pipeline; 4. the training step of train.py: a. train.choose_speed's pick, quiet and beside a
busy-looping process, b. the share of L_VRNS at m = 32, 128, 512 (a GPU epoch on a GPU); 5. the
peak memory and time split of `python train.py`. docs/performance.md explains each target.

How it measures: the contenders of one comparison run in interleaved rounds and each keeps its
fastest round, so all see the same background load and the least disturbed round estimates the
cost. On a shared machine compare ratios, not times, across runs; the load average is printed
at start and end: rerun when it was high. GPU times are taken between torch.cuda.synchronize
calls, after warm-up steps that compile and pick cuDNN's kernels.

Shape legend: n embeddings, d embedding dim, m pairs per batch (m images, two views each).
"""
import argparse
import ctypes
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from PIL import Image

import data
import losses
import models
import theory
import train

ROOT = os.path.dirname(os.path.abspath(__file__))
TAU = 0.5  # temperature of every loss and floor; no cost depends on it
N_VRNS = 50_000  # training-set size n in L_VRNS's target -1/(n - 1): CIFAR's
SMALL = dict(width=16, stem="cifar_s2", dataset="shapes")  # train.py's default model and data
BIG = dict(width=64, stem="cifar", dataset="cifar10")  # the paper's CIFAR ResNet-18
EPOCH_TARGET_S = {32: 12, 512: 6}  # GPU: a 50,000-image epoch, --compile, one H200
# n: CIFAR's training-set size; d: the paper's projector output; chunk: rows of one brute-force
# block (chunk x n x 8 bytes, 400 MB at n = 50,000); window: steps per round; m: train.py's batch
FULL = dict(n=50_000, d=128, chunk=1024, loss_m=(256, 1024), aug_batch=512, step_m=(32, 128, 512),
            rounds=10, step_rounds=3, window=3, m=128, small=SMALL, train_flags=[])
QUICK = dict(n=800, d=32, chunk=256, loss_m=(64,), aug_batch=64, step_m=(8, 16), rounds=2,
             step_rounds=1, window=1, m=16, small=dict(SMALL, width=4),
             train_flags=["--epochs", "1", "--probe-epochs", "2", "--train-size", "256",
                          "--width", "4", "--batch-size", "32", "--track-size", "64"])


def keep_freed_memory():
    """Have glibc keep freed memory instead of unmapping each block over 128 KiB - 32 MiB, which
    faults large tensors in again 4 KiB at a time: on 2 cores, 42 SimCLR loss steps at m = 1024
    took 341,000 page faults (median 1.5x the fastest), 38,000 with freed memory kept (median
    within 3 %). Linux only; returns whether it applied. train.py keeps glibc's default."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from <malloc.h>
    return bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30) and libc.mallopt(M_MMAP_THRESHOLD, 2**30))


def race(fns, *, device, rounds, reps=1):
    """Seconds per call of each zero-argument function of fns (name -> fn): the fastest of
    `rounds` interleaved rounds of `reps` calls each, after one untimed warm-up call each."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, math.inf)
    for _ in range(rounds):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
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


def stats_memory(n, d):
    """Run in a fresh process: by how many bytes one similarity_stats call on (n, d) embeddings
    raises the peak resident set, after a warm-up call on 2 x 2. The peak is VmHWM of
    /proc/self/status (Linux): ru_maxrss would start from the parent's peak at the exec."""
    def peak():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    theory.similarity_stats(*embeddings(2, 2, torch.device("cpu")))
    u, v = embeddings(n, d, torch.device("cpu"))
    before = peak()
    theory.similarity_stats(u, v)
    return peak() - before


def bench_similarity_stats(args, device, table):
    n, d = args.n, args.d
    print(f"== 1. similarity statistics, n = {n:,}, d = {d}, on {device}")
    u, v = embeddings(n, d, device)
    u64, v64 = F.normalize(u.double(), dim=1), F.normalize(v.double(), dim=1)  # (n, d) each
    t = race({"exact": lambda: theory.similarity_stats(u, v),
              "block": lambda: brute_force_block(u64, v64, args.chunk)}, device=device, rounds=3)
    # every block costs the same; the normalisation, O(n d) once, is left out
    speedup = t["block"] * math.ceil(n / args.chunk) / t["exact"]
    code = f"import bench; print(bench.stats_memory({n}, {d}))"
    memory = int(subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout)
    # O(n d): the normalised float64 copies of u and v (2 n d x 8 bytes) and as much again;
    # an n x n float64 matrix would take 8 n^2 bytes, 20 GB at n = 50,000
    limit = 4 * n * d * 8
    table += [(f"similarity_stats speed-up over brute force, n={n:,} d={d}",
               f"{speedup:,.0f}x", ">= 100x", speedup >= 100),
              (f"similarity_stats peak memory (CPU), n={n:,} d={d}", f"{memory / 2**20:.0f} MiB",
               f"<= {limit / 2**20:.0f} MiB (4 n d x 8 B)", memory <= limit)]


# ---- 2. Losses against their floors: the same softmaxes of the same similarities, written
# plainly (normalise, matmul(s), one F.cross_entropy per softmax; no masks, no log-sum-exp) ----

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
    print(f"== 3. augmentation, 'cifar' preset, B = {args.aug_batch}: data.two_views "
          f"({torch.get_num_threads()} threads) against PIL, one image at a time on 1 thread "
          "(as a DataLoader worker)")
    kw = data.augment_kwargs("cifar10")
    images = data.make_shapes(args.aug_batch, seed=0)[0]  # (B, 3, 32, 32) uint8
    gen = torch.Generator().manual_seed(0)
    view = data.imagefolder_two_view_transform(**kw)  # PIL image -> (3, 32, 32), one view
    pil = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]  # decoded already
    t = race({"two_views": lambda: data.two_views(images, generator=gen, **kw),
              "PIL": lambda: [(view(x), view(x)) for x in pil]}, device=device,
             rounds=args.rounds)
    speedup = t["PIL"] / t["two_views"]
    table.append((figure, f"{speedup:.1f}x", ">= 10x", speedup >= 10))


# ---- 4. The training step ------------------------------------------------------------------

def make_step(config, m, device, compile_model=False):
    """The training step of train.py on a fixed batch of m uint8 images: two views, then
    train.contrastive_step (simclr, L_VRNS logged at lam = 0, backward, AdamW). Returns
    (model, step, augment): step(bf16) takes one step, augment() draws the two views alone."""
    model = models.ContrastiveModel("resnet18", width=config["width"], stem=config["stem"])
    model = model.to(device, memory_format=models.memory_format(model, device))  # as train.py
    net = torch.compile(model, dynamic=False) if compile_model else model  # one m per model
    # train.py's default optimiser; no cost depends on the learning rate or the decay
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = train.make_loss("simclr", temperature=TAU, siglip_t=10.0, siglip_b=10.0,
                              within_view=False)
    kw = data.augment_kwargs(config["dataset"])
    images = data.make_shapes(m, seed=0)[0].to(device)  # (m, 3, 32, 32) uint8
    gen = torch.Generator(device=device).manual_seed(0)

    def augment():
        return data.two_views(images, generator=gen, **kw)  # (m, 3, S, S) each

    def step(bf16):
        return train.contrastive_step(net, optimizer, *augment(), loss_fn=loss_fn,
                                      vrns_fn=losses.vrns_loss, n=N_VRNS, lam=0.0, bf16=bf16)
    return model, step, augment


def bench_choose_speed(args, device, table):
    """4a. Returns the quiet pick (threads, precision); on a GPU, choose_speed's answer."""
    m, cores = args.m, torch.get_num_threads()
    figures = [f"choose_speed's pick / fastest candidate, {k}, img/s" for k in ("quiet", "busy")]
    if device.type != "cpu":
        table += [(f, f"skipped (--device {device.type})", ">= 90%", None) for f in figures]
        return train.choose_speed(None, batch=m, size=32, threads=0, precision="auto",
                                  device=device)
    model, step, _ = make_step(args.small, m, device)
    candidates = [(t, p) for t in sorted({cores, max(cores - 1, 1), 1}, reverse=True)
                  for p in ("fp32", "bf16")]

    def candidate_step(threads, precision):
        torch.set_num_threads(threads)
        step(precision == "bf16")
    print(f"== 4a. train.choose_speed's pick against every candidate, default step at m = {m}, "
          "quiet and beside one busy-looping process")
    rate, pick = {}, {}
    for condition in ("quiet", "busy"):
        loop = None
        try:
            if condition == "busy":
                loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(0.5)  # its interpreter starts and spins
                print(f"busy-looping process {loop.pid} started")
            pick[condition] = train.choose_speed(model, batch=m, size=32, threads=0,
                                                 precision="auto", device=device)
            t = race({c: functools.partial(candidate_step, *c) for c in candidates},
                     device=device, rounds=args.step_rounds, reps=args.window)
            rate[condition] = {c: m / s for c, s in t.items()}
        finally:
            torch.set_num_threads(cores)
            if loop is not None:
                loop.kill()
                loop.wait()
                print(f"busy-looping process {loop.pid} stopped")
    # The pick against the fastest candidate measured here, whichever it is: picking the wrong
    # one of two near-equal candidates costs little, every core beside a busy process costs most
    for figure, k in zip(figures, rate):
        share = rate[k][pick[k]] / max(rate[k].values())
        measured = f"{100 * share:.0f}% ({pick[k][0]} thr {pick[k][1]})"
        table.append((figure, measured, ">= 90%", share >= 0.9))
    # Beside the busy process one core fewer is free: the ceiling is the speed of cores - 1
    # threads over every core's, quiet (one thread's over two threads' on 2 cores)
    quiet, busy = rate["quiet"][pick["quiet"]], rate["busy"][pick["busy"]]
    table.append(("default step at the picks, busy / quiet img/s",
                  f"{100 * busy / quiet:.0f}% ({busy:.0f} / {quiet:.0f})", ">= 50%",
                  busy >= 0.5 * quiet))
    return pick["quiet"]


def bench_step_sizes(args, device, table, threads, precision):
    """4b: the step at each m of args.step_m beside its augmentation alone and L_VRNS alone."""
    on_gpu, bf16 = device.type == "cuda", precision == "bf16"
    config = BIG if on_gpu else args.small
    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {threads} thread(s)"
    torch.set_num_threads(threads)
    print(f"== 4b. training step, {name}, resnet18 w{config['width']} {config['stem']}, "
          f"{precision}, torch.compile {'on' if args.compile else 'off'}, m = {args.step_m}")
    epoch_s = {}
    for m in args.step_m:
        _, step, augment = make_step(config, m, device, compile_model=args.compile)
        for _ in range(3):  # compiles forward and backward, picks cuDNN's kernels, AdamW state
            step(bf16)
        t = race({"step": lambda: step(bf16), "augment": augment}, device=device,
                 rounds=args.step_rounds)
        u, v = embeddings(m, args.d, device, seed=2)
        vrns = race({"vrns": forward_backward(LOSS_CASES["vrns_loss"][0], u, v)},
                    device=device, rounds=args.rounds, reps=max(1, 4096 // m))["vrns"]
        share, epoch_s[m] = vrns / t["step"], 50_000 / m * t["step"]
        table.append((f"vrns_loss fwd+bwd / train step, {name}, m={m}", f"{100 * share:.2f}%",
                      "<= 2%", share <= 0.02))
        if m == args.m:  # train.py's train_steps include it (section 5)
            table.append((f"two_views alone / train step, {name}, m={m}",
                          f"{100 * t['augment'] / t['step']:.0f}%", "-", None))
    skipped = "skipped (no GPU)" if not torch.cuda.is_available() else "skipped (--device cpu)"
    for m, target in EPOCH_TARGET_S.items():
        figure = f"GPU epoch of 50k images, resnet18 w64 bf16, m={m}"
        if not on_gpu:
            table.append((figure, skipped, f"<= {target} s", None))
        elif m in epoch_s:
            table.append((figure, f"{epoch_s[m]:.1f} s", f"<= {target} s", epoch_s[m] <= target))
    torch.set_num_threads(args.threads)


# ---- 5. The default run: peak memory and time split ----------------------------------------

def print_split(summary, source):
    """Print the time split a train.py run records in summary.json ("time_s": part ->
    seconds); returns whether it had one."""
    split = summary.get("time_s")
    if not split:
        print(f'{source} has no "time_s": the train.py that wrote it records no time split')
        return False
    total = split.get("total", sum(split.values()))
    for part, seconds in split.items():
        print(f"{part:>14} {seconds:>8.1f} s {100 * seconds / total:>5.1f}%")
    return True


def bench_default_run(args, device, table):
    figure = "peak RSS of the default train.py run"
    if device.type != "cpu":
        return table.append((figure, f"skipped (--device {device.type})", "<= 2 GB", None))
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = ["train.py", *args.train_flags, "--device", "cpu", "--out-dir", out_dir]
        # A child's ru_maxrss starts from its parent's peak at the exec, so train.py runs as
        # the only child of a bare Python wrapper, which prints its RUSAGE_CHILDREN ru_maxrss
        wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                   "sys.exit(r.returncode)")
        done = subprocess.run([sys.executable, "-c", wrapper, sys.executable, *cmd], cwd=ROOT,
                              capture_output=True, text=True)
        shown = " ".join(["python", *cmd]).replace(out_dir, "<tmp>")
        if done.returncode:
            print(f"== 5. `{shown}` failed:\n{done.stderr[-2000:]}")
            return table.append((figure, "run failed", "<= 2 GB", False))
        peak = int(done.stdout.split()[-1]) * 1024
        print(f"== 5. `{shown}`: peak resident set {peak / 1e9:.2f} GB; time split:")
        with open(os.path.join(out_dir, "summary.json")) as f:
            print_split(json.load(f), "its summary.json")
    table.append((figure, f"{peak / 1e9:.2f} GB", "<= 2 GB", peak <= 2e9))


# ---- main ----------------------------------------------------------------------------------

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
                   help="auto (default) = cuda if visible, else cpu; on cuda the CPU-only rows "
                   "(PIL, thread choice, train.py's memory) say skipped")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds): checks that the "
                   "script runs, not the targets")
    p.add_argument("--split", metavar="SUMMARY", help="only print the time split of a train.py "
                   "run from its summary.json")
    p.add_argument("--compile", action="store_true", help="GPU: torch.compile the model "
                   "(~1 min per batch size); the epoch targets assume it")
    args = p.parse_args(argv)
    if args.split:
        try:
            with open(args.split) as f:
                return int(not print_split(json.load(f), args.split))
        except (OSError, ValueError) as e:
            print(f"--split {args.split}: no readable summary.json ({e})")
            return 1
    try:
        device = models.pick_device(args.device)
    except ValueError as e:
        p.error(f"--device {args.device}: {e}")
    torch.backends.cudnn.benchmark = True  # fixed shapes, as train.py sets it on CUDA
    vars(args).update(QUICK if args.quick else FULL)
    args.threads = torch.get_num_threads()  # torch's default: every core (or OMP_NUM_THREADS)
    flags = ""
    if os.path.exists("/proc/cpuinfo"):  # Linux: which bf16 instructions the CPU has
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    bf16 = " ".join(sorted(x for x in flags.split() if "bf16" in x)) or "none"
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"machine: {train.cpu_name()} (bf16 instructions: {bf16}), "
          f"{os.cpu_count()} cores{gpu}; torch {torch.__version__}, {args.threads} threads")
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}; freed memory kept in "
          f"this process (keep_freed_memory): {keep_freed_memory()}")
    start, table = time.perf_counter(), []  # rows (figure, measured, target, passed or None)
    bench_similarity_stats(args, device, table)
    bench_losses(args, device, table)
    bench_augment(args, device, table)
    threads, precision = bench_choose_speed(args, device, table)
    bench_step_sizes(args, device, table, threads, precision)
    bench_default_run(args, device, table)
    status = print_table(table)
    print(f"wall time {time.perf_counter() - start:.0f} s; load average (1 min) at end: "
          f"{os.getloadavg()[0]:.2f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
