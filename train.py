"""Contrastive pre-training that logs the similarities the paper studies.

    python train.py                       # offline demo: generated shapes, 2 CPU cores (README)
    python train.py --loss dcl --vrns-weight 1 --batch-size 32      # any loss, + Def. 5.7 term
    python train.py --dataset cifar100 --data-dir data --arch resnet18 --width 64 --stem cifar \\
        --optimizer sgd --lr 0.3 --warmup-epochs 10 --weight-decay 1e-4 --epochs 200 \\
        --temperature 0.2 --batch-size 256 --vrns-weight 30      # the paper's CIFAR recipe (GPU)
    torchrun --nproc_per_node=4 train.py ...                        # several GPUs (or CPU: gloo)

One step of the paper (contrastive_step, the first function below):

    x, y = two_views(images)               (m, 3, S, S) each; (x_i, y_i) is a positive pair
    h, z = encoder + projector of [x; y]   both views in one pass, so BatchNorm sees all 2m
    u, v = z[:m], z[m:]                    (m, d) each
    loss = L(u, v) + lam * L_VRNS(u, v)    a Def. 3.1 / 3.2 loss, plus the term of Def. 5.7
    backward, optimiser step
    E[s_pos], E[s_neg], Var[s_neg] of the batch (Def. 4.1), summed on the device

`train` is that step inside two loops (epochs, batches). Every epoch the exact statistics of a
fixed tracked subset of training images go to OUT_DIR/metrics.jsonl beside the theory's
predictions for this n and m; at the end the encoder is evaluated (linear probe, kNN, the
random-init baseline) and OUT_DIR/summary.json is written. Below the line "Plumbing" sit the
parts a reader can skip: processes, checkpoints, signals.

Shape legend: m = pairs per (global) batch, d = embedding dim, n = training-set size,
B = images on this process (m / processes), S = crop side.
"""
import argparse
import copy
import json
import math
import os
import platform
import signal
import subprocess
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

# --loss -> (its function in losses.py, the negatives (c1, c2) it contrasts: cross-view c1,
# within-view c2)
LOSSES = {"infonce": (losses.infonce_loss, "(1, 0)"), "simclr": (losses.simclr_loss, "(1, 1)"),
          "dcl": (losses.dcl_loss, "(1, 1)"), "dhel": (losses.dhel_loss, "(0, 1)"),
          "siglip": (losses.siglip_loss, "(1, 0), (1, 1) with --within-view"),
          "spectral": (losses.spectral_loss, "(1, 0), (1, 1) with --within-view")}
DEFAULT_LR = {"sgd": 0.3, "adamw": 8e-3}  # per 256 images (the paper: SGD 0.3 on CIFAR)
STEP_STATS = ("loss", "vrns", "pos_mean", "neg_mean", "neg_var")  # summed every step


def contrastive_step(net, optimizer, x, y, *, loss_fn, vrns_fn, n, lam, bf16=False,
                     gather=None):
    """One training step of the paper on this process's views x, y (B, 3, S, S), row i of each
    the two views of image i. Pastes alone into another project:

      net        a module returning (h, z): encoder features and projector output (B, d)
      loss_fn    (u, v) -> scalar loss of the (m, d) projector outputs, e.g. a loss of
                 losses.py with its temperature bound
      vrns_fn    (u, v, n) -> L_VRNS of Def. 5.7 (losses.vrns_loss), logged even at lam = 0
      n, lam     training-set size (the -1/(n-1) target of L_VRNS) and the weight of L_VRNS
      bf16       bf16 autocast for the network; the losses run in float32
      gather     (B, d) -> (m, d) with gradients when several processes share the batch

    Returns a (5,) tensor on the device: loss, L_VRNS, and E[s_pos], E[s_neg], Var[s_neg] of
    the global batch's m positive and m(m-1) cross-view negative pairs (Def. 4.1). Nothing here
    reads a value back, so on a GPU the CPU never waits for it."""
    xy = torch.cat([x, y])  # (2B, 3, S, S); the first conv's weights set the layout from here
    # a disabled CPU autocast when bf16 is off: it does nothing on any device (even meta)
    with torch.autocast(xy.device.type if bf16 else "cpu", torch.bfloat16, enabled=bf16):
        _, z = net(xy)  # (2B, d)
    u, v = z.float().chunk(2)  # (B, d) each
    if gather is not None:
        u, v = gather(u), gather(v)  # (m, d) each: the global batch
    loss = loss_fn(u, v)
    vrns = vrns_fn(u, v, n)
    optimizer.zero_grad(set_to_none=True)
    (loss + lam * vrns).backward()
    optimizer.step()
    with torch.no_grad():  # Def. 4.1 over the batch: s_ij = u_i^T v_j of the normalised u, v
        S = F.normalize(u, dim=1) @ F.normalize(v, dim=1).T  # (m, m)
        pairs = len(S) * (len(S) - 1)  # ordered negatives i != j
        pos = S.diagonal()  # (m,) s_ii
        neg_mean = (S.sum() - pos.sum()) / pairs
        neg_var = ((S ** 2).sum() - (pos ** 2).sum()) / pairs - neg_mean ** 2
    return torch.stack([loss.detach(), vrns.detach(), pos.mean(), neg_mean, neg_var])


def make_loss(name, *, temperature, siglip_t, siglip_b, within_view):
    """The --loss flag -> a function of (u, v) alone, from losses.py."""
    fn = LOSSES[name][0]
    if name == "siglip":
        return lambda u, v: fn(u, v, siglip_t, siglip_b, within_view=within_view)
    if name == "spectral":
        return lambda u, v: fn(u, v, within_view=within_view)
    return lambda u, v: fn(u, v, temperature)


def lr_at(step, *, total_steps, warmup_steps, peak_lr):
    """Linear warmup over warmup_steps (the first step already has peak_lr / warmup_steps),
    then a cosine from peak_lr to 0 at total_steps; set before every step."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(args, stop, resumed=None):
    """The run: data, model, then the loop of contrastive_step; evaluation at the end.
    `stop` is set by the signal handler of main(); `resumed` is the checkpoint to continue."""
    launched = time.time()
    device, rank, world = start_processes(args, resumed)
    source, n = training_images(args, device)  # (n, 3, H, W) uint8 on device, or a folder
    m, aug = args.batch_size, data.augment_kwargs(args.dataset, args.image_size)
    tracked = tracked_images(source, n, args.track_size, seed=args.seed, size=aug["size"])
    monitor = monitor_images(args, aug, device) if args.monitor_size and rank == 0 else None

    torch.manual_seed(args.seed)  # the initial weights
    model = models.ContrastiveModel(args.arch, width=args.width, stem=args.stem)
    model = model.to(device, memory_format=models.memory_format(model, device))
    args.threads, args.precision = choose_speed(model, batch=m // world, size=aug["size"],
                                                threads=args.threads,
                                                precision=args.precision, device=device)
    bf16 = args.precision == "bf16"
    torch.set_num_threads(args.threads)
    base_lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]  # per 256 images
    peak_lr = base_lr * (m / 256 if args.lr_scaling == "linear" else math.sqrt(m / 256))
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9,
                                    weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr,
                                      weight_decay=args.weight_decay)
    steps_per_epoch, step = n // m, 0
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = round(args.warmup_epochs * steps_per_epoch)
    sums = torch.zeros(len(STEP_STATS), device=device)  # this epoch's sums of STEP_STATS
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        step, sums = resumed["step"], resumed["sums"].to(device)
    net, gather = model, None
    if world > 1:  # BatchNorm and the loss over the global batch; gradients averaged
        gather = GatherWithGrad.apply
        net = torch.nn.parallel.DistributedDataParallel(
            global_batchnorm(model), device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    loss_fn = make_loss(args.loss, temperature=args.temperature, siglip_t=args.siglip_t,
                        siglip_b=args.siglip_b, within_view=args.within_view)
    var_low, var_high = theory.minibatch_variance_bounds(n, m)
    predicted = {"neg_optimum": theory.negative_similarity_optimum(n),
                 "within_batch_neg": theory.within_batch_negative_similarity(m),
                 "var_low": var_low, "var_high": var_high}
    log = RunLog(args, rank == 0, resumed)
    log.header(n=n, m=m, world=world, device=device, bf16=bf16, steps=steps_per_epoch,
               lr=peak_lr, warmup=warmup_steps, predicted=predicted)

    def schedule(s):  # the learning rate of step s
        return lr_at(s, total_steps=total_steps, warmup_steps=warmup_steps, peak_lr=peak_lr)

    first_bad = torch.full((), -1, device=device)  # first step with a non-finite loss, or -1
    augment_gen = torch.Generator(device=device)
    lo, hi = rank * m // world, (rank + 1) * m // world  # this process's rows of each batch
    start_time, start_step = time.time(), step
    seconds = {"setup": start_time - launched, "tracked_stats": 0.0, "monitor": 0.0,
               "checkpoints": 0.0}  # where the run's time goes (summary.json "time_s")
    while step < total_steps:
        epoch = step // steps_per_epoch
        batches = data.batch_order(n, m, epoch=epoch, seed=args.seed,
                                   fixed=args.fixed_batches)  # (n // m, m) image indices
        net.train()
        for x, y in epoch_views(source, batches[step % steps_per_epoch:], rows=(lo, hi),
                                aug=aug, generator=augment_gen, seed=args.seed, first_step=step,
                                workers=args.workers, device=device):  # (B, 3, S, S) each
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            now = contrastive_step(net, optimizer, x, y, loss_fn=loss_fn,
                                   vrns_fn=losses.vrns_loss, n=n, lam=args.vrns_weight,
                                   bf16=bf16, gather=gather)  # (5,)
            first_bad = torch.where((first_bad < 0) & ~now.isfinite().all(), step, first_bad)
            sums += now
            step += 1
            end_of_epoch = step % steps_per_epoch == 0
            log_step = step % args.log_every == 0 or end_of_epoch
            if log_step:  # reading numbers waits for the GPU
                log.stop_if_non_finite(first_bad, lr_of=schedule)
                rate = (step - start_step) * m / (time.time() - start_time)
                log.progress(epoch, step, total_steps, dict(zip(STEP_STATS, now.tolist())), lr,
                             rate)
            stopping = stop_requested(stop, world, device, synced=log_step)
            if (stopping or args.ckpt_every and step % args.ckpt_every == 0) and \
                    not end_of_epoch:  # mid-epoch: the epoch's sums go into the checkpoint
                log.stop_if_non_finite(first_bad, lr_of=schedule)
                log.checkpoint(step, epoch, sums, model, optimizer, device)
            if stopping and not end_of_epoch:
                leave_on_signal(step, args.out_dir, rank == 0)
        # ---- end of an epoch: exact statistics of the tracked images, the accuracy monitor,
        # then a checkpoint
        if rank == 0:
            stats, knn = epoch_statistics(model, tracked, monitor, aug=aug, seed=args.seed,
                                          device=device, seconds=seconds)
            log.epoch(epoch, step, lr, time.time() - start_time,
                      {k: v / steps_per_epoch for k, v in zip(STEP_STATS, sums.tolist())},
                      stats, predicted, knn)
        sums.zero_()
        t0 = time.time()
        log.checkpoint(step, epoch + 1, sums, model, optimizer, device)
        seconds["checkpoints"] += time.time() - t0
        if stopping:
            leave_on_signal(step, args.out_dir, rank == 0)

    leave_processes()  # the other processes exit here: nobody waits while rank 0 evaluates
    if rank == 0:
        train_wall = time.time() - start_time
        seconds["train_steps"] = train_wall - sum(seconds[k] for k in
                                                  ("tracked_stats", "monitor", "checkpoints"))
        finish(args, model, n=n, m=m, device=device, world=world, train_wall=train_wall,
               launched=launched, seconds=seconds)


def finish(args, model, *, n, m, device, world, train_wall, launched, seconds):
    """Evaluate the trained encoder and an untrained one of the same architecture on the
    training device, compare the Table 1 statistics with the theory, write summary.json and
    mark the checkpoint finished (--resume refuses to rerun it)."""
    run, evaluation_start = vars(args), time.time()
    summary = evaluation.evaluate_run(model, run, data_dir=args.data_dir,
                                      probe_epochs=args.probe_epochs, seed=args.seed,
                                      device=device, workers=args.workers)
    untrained = evaluation.model_of({"args": run}, random_init=True)  # the baseline
    untrained = untrained.to(device, memory_format=models.memory_format(untrained, device))
    baseline = evaluation.evaluate_run(untrained, run, data_dir=args.data_dir,
                                       probe_epochs=args.probe_epochs, seed=args.seed,
                                       device=device, workers=args.workers)
    seconds["evaluation"] = time.time() - evaluation_start
    seconds["total"] = time.time() - launched
    summary.update({
        "random_init": baseline, "args": run, "seed": args.seed, "n_train": n,
        "commit": code_version(), "precision": args.precision,
        "time_s": {k: round(v, 1) for k, v in seconds.items()},
        "train_wall_s": round(train_wall, 1), "total_wall_s": round(time.time() - launched, 1),
        "device": str(device), "world_size": world, "threads": args.threads,
        "cpu": cpu_name(), "versions": {"python": platform.python_version(),
                                        "torch": torch.__version__},
        "theory_rows": theory.compare_with_theory(summary["table1_stats"], n, m)})
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    ckpt = evaluation.read_checkpoint(args.out_dir)
    ckpt["finished"] = True
    evaluation.atomic_save(ckpt, os.path.join(args.out_dir, "ckpt.pt"))
    print(theory.format_table(summary["theory_rows"]))
    print(f"linear probe {summary['linear_acc']:.2f}% (random-init encoder "
          f"{baseline['linear_acc']:.2f}%; fitted to convergence {summary['linear_lbfgs_acc']:.2f}"
          f"%), kNN {summary['knn_acc']:.2f}%; pre-training "
          f"{train_wall:.0f} s, in all {summary['total_wall_s']:.0f} s; summary in "
          f"{args.out_dir}/summary.json")


# ---- Flags -----------------------------------------------------------------------------------

def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--dataset", default="shapes", choices=data.DATASETS,
      help="'shapes' (10 classes) and 'shapes100' (100 classes: shape x fill pattern) are "
      "generated in code (offline); the others load from --data-dir. "
      "stl10_unlabeled pre-trains on STL-10's 100,000 unlabeled images and is evaluated "
      "(linear probe, kNN, monitor) on its labelled train and test splits")
    a("--data-dir", default="data", help="where real datasets live (torchvision's layout; for "
      "imagefolder a folder with train/ and val/)")
    a("--download", action="store_true", help="download CIFAR/STL-10 into --data-dir (internet)")
    a("--data-seed", type=int, default=0, help="seed of the generated shapes dataset, fixed "
      "across --seed so that seeds vary the training only")
    a("--arch", default="resnet18", choices=models.ARCHS, help="encoder (torchvision's blocks)")
    a("--width", type=int, default=16, help="base width of the ResNet (64 = torchvision's); "
      "16 keeps the CPU demo fast")
    a("--stem", default="cifar_s2", choices=models.STEMS,
      help="'cifar' = 3x3 stride 1, no max-pool (the paper's CIFAR encoder); 'cifar_s2' = stride "
      "2, about 4x fewer FLOPs (CPU demo); 'imagenet' = 7x7 stride 2 + max-pool")
    a("--loss", default="simclr", choices=list(LOSSES), help="negatives (c1 cross-view, c2 "
      "within-view) of each: " + "; ".join(f"{k} {c}" for k, (_, c) in LOSSES.items()))
    a("--within-view", action="store_true", help="siglip/spectral only: add within-view "
      "negatives (c2 = 1), the paper's fix for excessive separation (Thm 5.3)")
    a("--temperature", type=float, default=0.2, help="tau of infonce/simclr/dcl/dhel; the paper "
      "sweeps 0.1-2 and trains SimCLR on CIFAR-100 at 0.2")
    a("--siglip-t", type=float, default=10.0, help="SigLIP scale t")
    a("--siglip-b", type=float, default=10.0, help="SigLIP bias b in the paper's sign (the "
      "original SigLIP's bias is -b)")
    a("--vrns-weight", type=float, default=0.0, help="lam of Def. 5.7 (0 = off; L_VRNS is "
      "logged either way); the paper uses 30 on CIFAR and ImageNet-100, tune it per setup")
    a("--batch-size", type=int, default=128, help="global batch m (pairs); the paper: 32-512")
    a("--epochs", type=int, default=20, help="passes over the training set (the paper: 200)")
    a("--optimizer", default="adamw", choices=tuple(DEFAULT_LR), help="sgd (momentum 0.9) = "
      "the paper's; adamw learns the CPU demo in fewer epochs")
    a("--lr", type=float, default=None, help="learning rate per 256 images, scaled to the "
      "batch by --lr-scaling; default 0.3 for sgd, 8e-3 for adamw")
    a("--lr-scaling", default="linear", choices=("linear", "sqrt"), help="peak lr = --lr x "
      "m/256 (linear: the paper's rule, for SGD) or x sqrt(m/256) (sqrt: keeps Adam's "
      "dynamics comparable across batch sizes; use it to compare batch sizes with adamw)")
    a("--warmup-epochs", type=float, default=2.0, help="linear warmup, then per-step cosine to 0 "
      "(the paper: 10)")
    a("--weight-decay", type=float, default=1e-4, help="L2 (sgd) or decoupled (adamw) weight "
      "decay; the paper: 1e-4 (CIFAR)")
    a("--fixed-batches", action="store_true", help="the same partition into batches every epoch "
      "(Thm 5.5's setting) instead of reshuffling")
    a("--seed", type=int, default=0, help="weights, batch order and augmentation (not the "
      "dataset: --data-seed)")
    a("--device", default="auto", help="auto = cuda, then mps, then cpu")
    a("--precision", default="auto", choices=("auto", "fp32", "bf16"),
      help="bf16 autocast for the encoder; auto = bf16 on GPUs that support it, and on a CPU "
      "whichever a short timing finds faster (printed, kept in args.json and on --resume). "
      "fp32 is true fp32: TF32 is turned off")
    a("--threads", type=int, default=0, help="CPU threads for the run; 0 = time a few passes "
      "with each count and keep the fastest (a busy machine gets 1). Printed at start, fixed "
      "for the run and kept on --resume: the last digits of a run depend on it")
    a("--compile", action="store_true", help="torch.compile the model (GPU; ~1 min warm-up)")
    a("--out-dir", default=None, help="default runs/<dataset>-<loss>-m<batch>-s<seed>-<time>")
    a("--resume", default=None, help="a run directory or its ckpt.pt: continue it exactly")
    a("--overwrite", action="store_true", help="allow writing into a directory holding a run")
    a("--ckpt-every", type=int, default=0, help="also checkpoint every this many steps (0: "
      "epoch ends only)")
    a("--log-every", type=int, default=20, help="steps between progress lines; on a GPU only "
      "these steps wait for it")
    a("--image-size", type=int, default=0, help="crop size of the views (0 = the preset's: 32 "
      "CIFAR/shapes, 96 STL-10, 224 ImageFolder; e.g. 64 for Tiny-ImageNet)")
    a("--train-size", type=int, default=0, help="use only the first N training images (0 = "
      "all): quick experiments; the theory's n is then N")
    a("--test-size", type=int, default=0, help="evaluate on only the first N test images (0 = "
      "all): quick experiments")
    a("--monitor-size", type=int, default=500, help="accuracy monitor: every epoch, weighted "
      "kNN of this many held-out test images against as many training images, logged in "
      "metrics.jsonl (about 3 %% of the default run; +-2 points of sampling noise at 80 %%); "
      "0 = off")
    a("--track-size", type=int, default=1024, help="training images whose exact similarity "
      "statistics are logged every epoch")
    a("--probe-epochs", type=int, default=200, help="epochs of the final linear probe (the "
      "paper: 200; on precomputed features, ~3 s for 5,000 images)")
    a("--workers", type=int, default=8, help="DataLoader workers (imagefolder only)")
    return p


# flags that may differ between a run and its resumption (nothing that changes the result)
RESUME_FREE = {"resume", "out_dir", "device", "compile", "log_every", "ckpt_every", "workers",
               "overwrite", "probe_epochs"}


def parse_flags(argv):
    """Flags -> (args, checkpoint to resume or None); exits with one line on bad input."""
    parser = get_parser()
    args = parser.parse_args(argv)
    for flags, ok, rule in [  # finite first, so that nan and inf are named as such
            ("temperature siglip_t siglip_b warmup_epochs weight_decay vrns_weight lr",
             math.isfinite, "a finite number"),
            ("temperature siglip_t epochs probe_epochs track_size width log_every lr",
             lambda x: x > 0, "> 0"),
            ("vrns_weight warmup_epochs weight_decay ckpt_every workers train_size image_size "
             "threads data_seed seed monitor_size test_size", lambda x: x >= 0, ">= 0")]:
        for flag in flags.split():
            if getattr(args, flag) is not None and not ok(getattr(args, flag)):
                fail(f"--{flag.replace('_', '-')} must be {rule}, got {getattr(args, flag)}")
    if args.batch_size < 2:
        fail(f"--batch-size must be >= 2 (a batch needs negatives), got {args.batch_size}")
    if args.within_view and args.loss not in ("siglip", "spectral"):
        fail(f"--within-view applies to siglip and spectral; {args.loss} already fixes its "
             "negatives")
    if not args.resume:
        return args, None
    try:
        ckpt = evaluation.read_checkpoint(args.resume)
    except ValueError as e:
        fail(f"--resume {args.resume}: {e}")
    given = {k: v for k, v in vars(args).items() if v != parser.get_default(k)}
    saved = ckpt["args"]
    conflicts = [f"--{k.replace('_', '-')} {v} (run used {saved.get(k)})"
                 for k, v in given.items() if k not in RESUME_FREE and saved.get(k) != v]
    if conflicts:
        fail(f"--resume {args.resume}: flags conflict with the checkpoint: "
             f"{'; '.join(conflicts)}. Drop them to resume exactly.")
    args = argparse.Namespace(**{**vars(parser.parse_args([])), **saved,
                                 **{k: v for k, v in given.items() if k in RESUME_FREE}})
    path = args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume)
    args.out_dir = os.path.abspath(path)
    return args, ckpt


def choose_speed(model, *, batch, size, threads, precision, device):
    """--threads 0 and --precision auto -> (threads, "fp32" | "bf16") for the run. On a CPU,
    time a few training passes of a copy of the model for each candidate and keep the fastest
    (a second or two): bf16 is fast only on bf16 matrix units (AMX, AVX512-BF16), and one
    thread can beat every core when another program holds one (each op of a small model is a
    parallel region whose threads must all arrive); python bench.py measures both. On a GPU:
    every thread, and bf16 where the GPU supports it."""
    cores = torch.get_num_threads()
    if device.type != "cpu":
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return threads or cores, (precision if precision != "auto"
                                  else "bf16" if bf16_ok else "fp32")
    counts = [threads] if threads else sorted({cores, max(cores - 1, 1), 1})
    candidates = [(t, p) for t in counts
                  for p in ([precision] if precision != "auto" else ["fp32", "bf16"])]
    if len(candidates) == 1:
        return candidates[0]
    trial = copy.deepcopy(model)
    x = torch.rand(2 * batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=models.memory_format(trial, device))  # (2B, 3, S, S)
    best = {}
    for rnd in range(3):  # round 0 warms up; the rest keep each candidate's fastest pass
        for t, p in candidates:
            torch.set_num_threads(t)
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p == "bf16"):
                trial(x)[1].float().square().mean().backward()
            if rnd:
                best[t, p] = min(best.get((t, p), math.inf), time.perf_counter() - start)
    torch.set_num_threads(cores)
    return min(best, key=best.get)


def code_version():
    """The git commit of the code that ran (with '+dirty' when tracked files differ from it),
    or 'unknown' outside a git checkout: summary.json records it, so results name their code."""
    def git(*argv):
        return subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), *argv],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "-uno")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + "+dirty" * bool(dirty)) if commit else "unknown"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


# ---- Data for the loop -----------------------------------------------------------------------

def training_images(args, device):
    """The training set: (n, 3, H, W) uint8 on the device (generated, CIFAR, STL-10; 3 KB an
    image at 32 px) or an ImageFolderPairs streamed from disk; and n."""
    aug = data.augment_kwargs(args.dataset, args.image_size)
    try:
        if args.dataset == "imagefolder":
            source = data.ImageFolderPairs(os.path.join(args.data_dir, "train"),
                                           data.imagefolder_two_view_transform(**aug))
        else:
            if args.dataset == "stl10_unlabeled" and not args.download:
                # it has no labels: evaluated on STL-10's labelled splits, so those must be
                # there too. Checked before reading 2.8 GB (--download fetches all five files)
                folder = os.path.join(args.data_dir, "stl10_binary")
                missing = [f for f in ("unlabeled_X.bin", "train_X.bin", "train_y.bin",
                                       "test_X.bin", "test_y.bin")
                           if not os.path.isfile(os.path.join(folder, f))]
                if missing:
                    raise FileNotFoundError(
                        f"missing {', '.join(missing)} in {folder} (it trains on the unlabeled "
                        "images and is evaluated on the labelled train and test splits). Pass "
                        "--download on a machine with internet, or place the files there.")
            source = data.load_dataset(args.dataset, data_dir=args.data_dir, train=True,
                                       download=args.download, seed=args.data_seed)[0]
            if args.dataset not in (*data.GENERATED, "stl10_unlabeled"):  # no test
                data.load_dataset(args.dataset, data_dir=args.data_dir, train=False,
                                  download=args.download, seed=args.data_seed)  # fail now
    except (FileNotFoundError, ValueError) as e:
        fail(f"--dataset {args.dataset} --data-dir {args.data_dir}: {e}")
    if args.train_size > len(source):
        fail(f"--train-size {args.train_size} exceeds the {len(source)} training images; use "
             "at most that (0 = all)")
    n = args.train_size or len(source)
    if args.batch_size > n:
        fail(f"--batch-size {args.batch_size} is larger than the training set (n = {n}); use "
             f"at most {n}")
    if isinstance(source, torch.Tensor):
        source = source[:n].to(device)
    return source, n


def tracked_images(source, n, count, *, seed, size):
    """A fixed random subset of the training images, (k, 3, H, W) uint8, whose exact
    similarity statistics are logged every epoch."""
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(count, n)]
    if isinstance(source, torch.Tensor):
        return source[idx.to(source.device)]
    return data.imagefolder_images(source.folder, idx, size)[0]


def monitor_images(args, aug, device):
    """The accuracy monitor's labelled images on the device: (bank, labels, queries, labels,
    number of classes)."""
    *images, classes = evaluation.monitor_images(args.dataset, data_dir=args.data_dir,
                                                 count=args.monitor_size, seed=args.seed,
                                                 size=aug["size"], data_seed=args.data_seed)
    return [t.to(device) for t in images] + [classes]


def epoch_statistics(model, tracked, monitor, *, aug, seed, device, seconds):
    """End of an epoch: the exact Table 1 statistics of the tracked images and the kNN monitor
    (None when off); their times are added to seconds["tracked_stats"] and ["monitor"]."""
    start = time.time()
    stats = evaluation.table1_stats(model, tracked, augment_kwargs=aug, device=device,
                                    generator=torch.Generator(device=device).manual_seed(seed + 1))
    middle = time.time()
    knn = None if monitor is None else evaluation.knn_monitor(
        model.encoder, *monitor[:4], num_classes=monitor[4], mean=aug["mean"], std=aug["std"],
        device=device)
    seconds["tracked_stats"] += middle - start
    seconds["monitor"] += time.time() - middle
    return stats, knn


def epoch_views(source, batches, *, rows, aug, generator, seed, first_step, workers, device):
    """This process's two views of each batch of one epoch: (B, 3, S, S) each, on the device.

    In memory: every process augments the whole global batch with the same random numbers and
    keeps its rows, so K processes train on exactly the views one process would. The generator
    is re-seeded from (seed, step) before every batch: a resumed run draws the same views
    without any stored generator state, on any device. Streamed folders are augmented by PIL
    in worker processes seeded from (seed, epoch's first step): reproducible, not bit-exact."""
    lo, hi = rows
    if isinstance(source, torch.Tensor):
        for k, idx in enumerate(batches.to(device)):
            generator.manual_seed(step_seed(seed, first_step + k))
            x, y = data.two_views(source[idx], generator=generator, **aug)  # (m, 3, S, S) each
            yield x[lo:hi], y[lo:hi]
        return
    loader = torch.utils.data.DataLoader(
        source, batch_sampler=batches[:, lo:hi].tolist(), num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(step_seed(seed, first_step)))
    for x, y, _, _ in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def step_seed(seed, step):
    """A well-mixed 32-bit seed for (run seed, step)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


# ---- Plumbing: the run directory and its logs, checkpoints, signals, several processes -------

class RunLog:
    """What train() writes while it runs: progress lines, OUT_DIR/args.json, metrics.jsonl (one
    line an epoch) and ckpt.pt. Only the main process writes; the others no-op."""

    def __init__(self, args, is_main, resumed):
        self.args, self.is_main = args, is_main
        self.metrics = os.path.join(args.out_dir, "metrics.jsonl")
        self.ckpt = os.path.join(args.out_dir, "ckpt.pt")
        if not is_main:
            return
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)
        lines = []
        if resumed is not None and os.path.exists(self.metrics):  # drop lines after the ckpt
            with open(self.metrics) as f:
                lines = f.readlines()[:resumed["epochs_logged"]]
        with open(self.metrics, "w") as f:
            f.writelines(lines)

    def header(self, *, n, m, world, device, bf16, steps, lr, warmup, predicted):
        if not self.is_main:
            return
        a = self.args
        precision = "bf16 autocast" if bf16 else "fp32 (TF32 off)"
        print(f"n = {n} training images, m = {m} pairs per batch ({world} process(es)), "
              f"{steps} steps/epoch x {a.epochs} epochs on {device}, {precision}, "
              f"{a.threads} CPU thread(s)")
        per_256 = lr * 256 / m if a.lr_scaling == "linear" else lr / math.sqrt(m / 256)
        print(f"lr = {lr:.4g} ({a.optimizer}, {per_256:.4g} per 256 images, {a.lr_scaling} "
              f"scaling), warmup {warmup} steps, out_dir {a.out_dir}")
        print(f"theory at this n, m: negatives -> {predicted['neg_optimum']:.4f} (full batch), "
              f"{predicted['within_batch_neg']:.4f} (within batch); Var[s_neg] in "
              f"[{predicted['var_low']:.2e}, {predicted['var_high']:.2e}] (eq. 11)", flush=True)

    def progress(self, epoch, step, total, now, lr, rate):
        if self.is_main:
            print(f"epoch {epoch + 1}/{self.args.epochs} step {step}/{total} | loss "
                  f"{now['loss']:.4f} vrns {now['vrns']:.4f} | lr {lr:.3g} | pos "
                  f"{now['pos_mean']:.3f} neg {now['neg_mean']:.3f} var {now['neg_var']:.4f} | "
                  f"{rate:.0f} img/s | eta {(total - step) * self.args.batch_size / rate / 60:.1f}"
                  " min", flush=True)

    def epoch(self, epoch, step, lr, elapsed, batch, tracked, predicted, knn):
        record = {"epoch": epoch + 1, "step": step, "lr": lr, "elapsed_s": round(elapsed, 2),
                  "batch": batch, "tracked": tracked, "theory": predicted}
        if knn is not None:
            record["monitor"] = {"knn_acc": knn, "images": self.args.monitor_size}
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"epoch {epoch + 1}: {tracked['count']} tracked images: pos "
              f"{tracked['pos_mean']:.3f}, neg {tracked['neg_mean']:.4f} (theory "
              f"{predicted['neg_optimum']:.4f}), Var[neg] {tracked['neg_var']:.4f}"
              + ("" if knn is None else f" | kNN monitor {knn:.1f}%"), flush=True)

    def checkpoint(self, step, epochs_logged, sums, model, optimizer, device):
        if self.is_main:
            evaluation.write_checkpoint(self.ckpt, args=vars(self.args), step=step,
                                        epochs_logged=epochs_logged, sums=sums.cpu(),
                                        device=device.type, model=model.state_dict(),
                                        optimizer=optimizer.state_dict())

    def stop_if_non_finite(self, first_bad, lr_of):
        """Reads the device-side flag (a sync); exits 1, keeping the last good checkpoint."""
        bad = int(first_bad)
        if bad < 0:
            return
        if self.is_main:
            kept = (f"The last good checkpoint is kept: {self.ckpt}"
                    if os.path.exists(self.ckpt) else "No checkpoint was written yet.")
            print(f"non-finite loss at step {bad} (lr {lr_of(bad):.3g}). Likely causes: lr too "
                  f"high, temperature too small, fp16 overflow. {kept}", file=sys.stderr)
        leave_processes()
        sys.exit(1)


def fail(message):
    """Bad input: one line naming the flag, the value and the fix; exit status 2."""
    print(f"train.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def stop_requested(stop, world, device, *, synced):
    """Ctrl-C / SIGTERM seen? One process reads its flag every step; several agree on it with
    an all-reduce (a sync), so only on logging steps."""
    if world == 1:
        return stop["signal"] is not None
    if not synced:
        return False
    flag = torch.full((), float(stop["signal"] is not None), device=device)
    dist.all_reduce(flag)
    return flag.item() > 0


def leave_on_signal(step, out_dir, is_main):
    if is_main:
        print(f"stopped by signal at step {step}; checkpoint saved. Continue with: "
              f"python train.py --resume {out_dir}", file=sys.stderr)
    leave_processes()
    sys.exit(130)


def leave_processes():
    """Every process leaves together (gloo aborts a process whose peer tears down mid-talk)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def start_processes(args, resumed):
    """The device, this process's rank and the number of processes (torchrun sets the
    environment; a plain `python train.py` is one process). Refuses an unusable setup."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.batch_size % world:
        fail(f"--batch-size {args.batch_size} is not divisible by the {world} processes; "
             f"use a multiple of {world}")
    try:
        device = models.pick_device(args.device)
    except ValueError as e:
        fail(f"--device {args.device}: {e}")
    if device.type == "cuda":
        if world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if resumed is not None and resumed.get("device", device.type) != device.type and rank == 0:
        print(f"resuming a {resumed['device']} run on {device.type}: the views are drawn by "
              "another type of generator, so the rest of the run is reproducible but not "
              "bit-identical to an uninterrupted one", file=sys.stderr)
    return device, rank, world


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
    """BatchNorm over the global batch, on any backend: two all-reduces of C numbers per layer
    (the mean, then the centred squares, for float32 accuracy), and no host sync. Used on NCCL
    too: torch's SyncBatchNorm is CUDA-only and is reported to break torch.compile graphs."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected a (B, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]  # every axis but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = x.numel() / x.shape[1] * dist.get_world_size()  # equal batches on every process
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


def main(argv=None):
    args, resumed = parse_flags(argv)
    if resumed is not None and resumed["finished"]:
        print(f"{args.out_dir} holds a finished run (summary.json); nothing to resume")
        return
    if args.out_dir is None:
        args.out_dir = os.path.join("runs", f"{args.dataset}-{args.loss}-m{args.batch_size}-"
                                            f"s{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    if resumed is None and not args.overwrite:
        for name in ("summary.json", "ckpt.pt", "metrics.jsonl"):
            if os.path.exists(os.path.join(args.out_dir, name)):
                fail(f"--out-dir {args.out_dir} already holds a run ({name}); pass --resume "
                     f"{args.out_dir} to continue it, --overwrite to replace it, or pick "
                     "another --out-dir")
    stop = {"signal": None}  # Ctrl-C / SIGTERM: finish the step, checkpoint, exit

    def on_signal(signum, frame):
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    try:
        train(args, stop, resumed)
    finally:
        torch.set_num_threads(threads)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
