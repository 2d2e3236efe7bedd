"""Contrastive pre-training that logs the similarities the paper studies.

    python train.py                       # offline demo: generated shapes, 2 CPU cores (README)
    python train.py --dataset cifar100 --data-dir data --arch resnet18 --width 64 --stem cifar \\
        --optimizer sgd --lr 0.3 --warmup-epochs 10 --weight-decay 1e-4 --epochs 200 \\
        --temperature 0.2 --batch-size 256 --vrns-weight 30      # the paper's CIFAR recipe (GPU)
    torchrun --nproc_per_node=4 train.py ...                        # several GPUs
    python train.py --resume runs/RUN                               # continue after Ctrl-C

One step of the paper (contrastive_step, the first function below):

    x, y = two_views(images)               (m, 3, S, S) each; (x_i, y_i) is a positive pair
    h, z = encoder + projector of [x; y]   both views in one pass, so BatchNorm sees all 2m
    u, v = z[:m], z[m:]                    (m, d) each
    loss = L(u, v) + lam * L_VRNS(u, v)    a Def. 3.1 / 3.2 loss, plus the term of Def. 5.7
    backward, optimiser step
    E[s_pos], E[s_neg], Var[s_neg] of the batch (Def. 4.1), summed on the device

`train` is that step inside two loops (epochs, batches). After every epoch the exact statistics
of a fixed subset of training images go to OUT_DIR/metrics.jsonl beside the theory's
predictions for this n and m, and OUT_DIR/ckpt.pt is written; at the end the encoder is
evaluated (linear probes, kNN, Table 1, the random-init baseline) into OUT_DIR/summary.json.

Shape legend: m = pairs per (global) batch, d = embedding dim, n = training-set size,
B = images on this process (m / processes), S = crop side.
"""
import argparse
import functools
import json
import math
import os
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

# --loss -> (its function in losses.py, its negatives (c1 cross-view, c2 within-view))
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
    with torch.autocast(xy.device.type, torch.bfloat16, enabled=bf16):
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
        return functools.partial(fn, t=siglip_t, b=siglip_b, within_view=within_view)
    if name == "spectral":
        return functools.partial(fn, within_view=within_view)
    return functools.partial(fn, temperature=temperature)


def lr_at(step, *, total_steps, warmup_steps, peak_lr):
    """Linear warmup over warmup_steps (the first step already has peak_lr / warmup_steps),
    then a cosine from peak_lr to 0 at total_steps; set before every step."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(args, splits, resumed=None):
    """The run: contrastive_step over the batches of every epoch, the statistics after each
    epoch, evaluation at the end; `splits` from eval.load_splits, `resumed` a checkpoint."""
    # -- processes, device, precision
    launched = time.time()
    device, rank, world = start_processes(args)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda"
                                        and torch.cuda.is_bf16_supported())
    # -- data: the training images on the device (or a folder streamed from disk)
    source = splits["pretrain"]  # (n, 3, H, W) uint8, or ImageFolderPairs
    source = source.to(device) if isinstance(source, torch.Tensor) else source
    n, m, aug = len(source), args.batch_size, data.augment_kwargs(args.dataset, args.image_size)
    steps_per_epoch = n // m  # the last n % m images of each shuffled epoch are dropped
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = round(args.warmup_epochs * steps_per_epoch)
    # -- model, optimiser, the loss
    torch.manual_seed(args.seed)  # the initial weights
    model = models.ContrastiveModel(args.arch, width=args.width, stem=args.stem)
    if world > 1 and device.type == "cuda":  # BatchNorm over the global batch
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=models.memory_format(model, device))
    base_lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]  # per 256 images
    peak_lr = base_lr * (m / 256 if args.lr_scaling == "linear" else math.sqrt(m / 256))
    optimizer = (torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9,
                                 weight_decay=args.weight_decay) if args.optimizer == "sgd" else
                 torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=args.weight_decay))
    first_epoch, before = 0, 0.0  # epochs and seconds of training before a resume
    if resumed is not None:  # no random state: batches and views are seeded by (seed, epoch)
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        first_epoch, before = resumed["epoch"], resumed.get("train_wall_s", 0.0)
    net, gather = model, None
    if world > 1:  # the loss over the global batch; gradients averaged over processes
        gather = GatherWithGrad.apply
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    loss_fn = make_loss(args.loss, temperature=args.temperature, siglip_t=args.siglip_t,
                        siglip_b=args.siglip_b, within_view=args.within_view)
    predicted = dict(zip(("neg_optimum", "within_batch_neg", "var_low", "var_high"), (
        theory.negative_similarity_optimum(n), theory.within_batch_negative_similarity(m),
        *theory.minibatch_variance_bounds(n, m))))  # Thm 5.1, Thm 5.5, eq. (11)
    if rank == 0:
        print(f"n = {n} training images, m = {m} pairs per batch ({world} process(es)), "
              f"{steps_per_epoch} steps/epoch x {args.epochs} epochs on {device}, "
              f"{'bf16 autocast' if bf16 else 'fp32'}, {torch.get_num_threads()} CPU thread(s)"
              f"\nlr = {peak_lr:.4g} ({args.optimizer}, {base_lr:.4g} per 256 images, "
              f"{args.lr_scaling} scaling), warmup {warmup_steps} steps, out_dir {args.out_dir}"
              f"\ntheory: negatives -> {predicted['neg_optimum']:.4f} (full batch), "
              f"{predicted['within_batch_neg']:.4f} (in a batch); Var[s_neg] in "
              f"[{predicted['var_low']:.2e}, {predicted['var_high']:.2e}] (eq. 11)", flush=True)
    # -- the loop: epochs of steps
    views = torch.Generator(device=device)  # the augmentations' random numbers
    sums = torch.zeros(len(STEP_STATS), device=device)  # this epoch's sums of STEP_STATS
    lo, hi = rank * m // world, (rank + 1) * m // world  # this process's rows of each batch
    start = time.time()
    for epoch in range(first_epoch, args.epochs):
        batches = data.batch_order(n, m, epoch=epoch, seed=args.seed,
                                   fixed=args.fixed_batches)  # (n // m, m) image indices
        seed = int(np.random.SeedSequence([args.seed, epoch]).generate_state(1)[0])
        net.train()
        sums.zero_()
        for k, (x, y) in enumerate(epoch_views(source, batches, rows=(lo, hi), aug=aug,
                                               generator=views.manual_seed(seed), seed=seed,
                                               workers=args.workers, device=device)):
            step = epoch * steps_per_epoch + k
            lr = lr_at(step, total_steps=total_steps, warmup_steps=warmup_steps, peak_lr=peak_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            now = contrastive_step(net, optimizer, x, y, loss_fn=loss_fn,
                                   vrns_fn=losses.vrns_loss, n=n, lam=args.vrns_weight,
                                   bf16=bf16, gather=gather)  # (5,)
            sums += now
            if (step + 1) % args.log_every == 0:  # reading numbers waits for the GPU
                stop_if_non_finite(now, f"step {step + 1} (lr {lr:.3g})", args.out_dir)
                rate = (step + 1 - first_epoch * steps_per_epoch) * m / (time.time() - start)
                if rank == 0:
                    print(f"epoch {epoch + 1}/{args.epochs} step {step + 1}/{total_steps} | "
                          + " ".join(f"{k} {v:.4f}" for k, v in zip(STEP_STATS, now.tolist()))
                          + f" | lr {lr:.3g} | {rate:.0f} img/s | eta "
                          f"{(total_steps - step - 1) * m / rate / 60:.1f} min", flush=True)
        # -- end of an epoch: exact statistics of the tracked images, the kNN monitor, ckpt.pt
        stop_if_non_finite(sums, f"epoch {epoch + 1}", args.out_dir)
        if rank == 0:
            tracked = evaluation.table1_stats(model, splits["tracked"], augment_kwargs=aug,
                                              device=device, generator=torch.Generator(
                                                  device=device).manual_seed(args.seed + 1))
            record = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "lr": lr,
                      "elapsed_s": round(before + time.time() - start, 2),  # resumes included
                      "batch": dict(zip(STEP_STATS, (sums / steps_per_epoch).tolist())),
                      "tracked": tracked, "theory": predicted}
            if splits["monitor"] is not None:
                knn = evaluation.knn_monitor(model.encoder, *(t.to(device) for t in splits[
                    "monitor"]), num_classes=splits["classes"], mean=aug["mean"],
                    std=aug["std"], device=device)
                record["monitor"] = {"knn_acc": knn, "images": args.monitor_size}
            with open(os.path.join(args.out_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"epoch {epoch + 1}: tracked pos {tracked['pos_mean']:.3f} neg "
                  f"{tracked['neg_mean']:.4f} Var[neg] {tracked['neg_var']:.4f}" + (
                      f" | kNN monitor {knn:.1f}%" if "monitor" in record else ""), flush=True)
            save_checkpoint(args, model, optimizer, epoch + 1, record["elapsed_s"])
    # -- evaluation, on the main process; DDP is released before its process group
    train_wall, net = before + time.time() - start, None
    if world > 1:  # every process leaves together
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        finish(args, model, optimizer, splits, device=device, world=world, bf16=bf16,
               train_wall=train_wall, launched=launched - before)


def finish(args, model, optimizer, splits, *, device, world, bf16, train_wall, launched):
    """Evaluate the trained encoder and an untrained one of the same architecture, compare the
    Table 1 statistics with the theory, write summary.json and mark the checkpoint finished."""
    summary = evaluation.evaluate_run(model, splits, vars(args), probe_epochs=args.probe_epochs,
                                      device=device, workers=args.workers)
    summary.update({"args": vars(args), "seed": args.seed, "n_train": len(splits["pretrain"]),
                    "precision": "bf16" if bf16 else "fp32", "device": str(device),
                    "world_size": world, "threads": torch.get_num_threads(), "train_wall_s":
                    round(train_wall, 1), "total_wall_s": round(time.time() - launched, 1)})
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    save_checkpoint(args, model, optimizer, args.epochs, train_wall, finished=True)
    theory.print_rows(summary["theory_rows"])
    print(f"linear probe {summary['linear_acc']:.2f}% (random-init encoder "
          f"{summary['random_init']['linear_acc']:.2f}%; fitted to convergence "
          f"{summary['linear_lbfgs_acc']:.2f}%), kNN {summary['knn_acc']:.2f}%; pre-training "
          f"{train_wall:.0f} s, in all {summary['total_wall_s']:.0f} s; summary in "
          f"{args.out_dir}/summary.json")


# ---- Plumbing (skip on a first reading): flags, the data of an epoch, several processes ------

def checked(kind, ok, rule):
    """An argparse type: kind(text) that must satisfy ok, else a one-line error naming rule."""
    def parse(text):
        if not ok(value := kind(text)):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


POSITIVE = checked(float, lambda x: math.isfinite(x) and x > 0, "a finite number > 0")
NON_NEGATIVE = checked(float, lambda x: math.isfinite(x) and x >= 0, "a finite number >= 0")
COUNT = checked(int, lambda x: x >= 1, ">= 1")
SIZE = checked(int, lambda x: x >= 0, ">= 0 (0 = all / the default)")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], usage="python train.py "
                                "[--flag VALUE ...] (--help lists the flags)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    # the data
    a("--dataset", default="shapes", choices=data.DATASETS, help="shapes, shapes100 (shape x "
      "fill): generated offline; the rest from --data-dir; stl10_unlabeled: its 100,000 images")
    a("--data-dir", default="data", help="torchvision's layout; imagefolder: train/ and val/")
    a("--download", action="store_true", help="download CIFAR/STL-10 into --data-dir (internet)")
    a("--data-seed", type=SIZE, default=0, help="seed of the generated shapes (not --seed's)")
    a("--image-size", type=SIZE, default=0, help="crop side; 0 = 32, STL-10 96, ImageFolder 224")
    a("--train-size", type=SIZE, default=0, help="the first N training images (0 = all): n = N")
    a("--test-size", type=SIZE, default=0, help="the first N test images (0 = all)")
    # the model
    a("--arch", default="resnet18", choices=models.ARCHS, help="encoder (torchvision's blocks)")
    a("--width", type=COUNT, default=16, help="base width (64 = torchvision's; 16: CPU demo)")
    a("--stem", default="cifar_s2", choices=models.STEMS, help="cifar: 3x3 stride 1 (the "
      "paper's CIFAR encoder); cifar_s2: stride 2, ~4x fewer FLOPs; imagenet: 7x7 s2 + max-pool")
    # the loss
    a("--loss", default="simclr", choices=list(LOSSES), help="negatives (c1 cross-view, c2 "
      "within-view): " + "; ".join(f"{k} {c}" for k, (_, c) in LOSSES.items()))
    a("--within-view", action="store_true", help="siglip/spectral: add within-view negatives, "
      "the paper's fix for excessive separation (Thm 5.3)")
    a("--temperature", type=POSITIVE, default=0.2, help="tau (the paper: 0.1-2; 0.2 on CIFAR)")
    a("--siglip-t", type=POSITIVE, default=10.0, help="SigLIP scale t")
    a("--siglip-b", type=checked(float, math.isfinite, "finite"), default=10.0,
      help="SigLIP bias b in the paper's sign (the original SigLIP's is -b)")
    a("--vrns-weight", type=NON_NEGATIVE, default=0.0, help="lam of Def. 5.7 (L_VRNS is logged "
      "at 0 too); the paper: 30 on CIFAR and ImageNet-100; tune it per setup")
    # the optimisation
    a("--batch-size", type=checked(int, lambda x: x >= 2, ">= 2 (a batch needs negatives)"),
      default=128, help="global batch m (pairs); the paper: 32-512")
    a("--epochs", type=COUNT, default=20, help="the paper: 200")
    a("--optimizer", default="adamw", choices=tuple(DEFAULT_LR), help="sgd (momentum 0.9): the "
      "paper's; adamw learns the CPU demo in fewer epochs")
    a("--lr", type=POSITIVE, default=None, help="per 256 images (default 0.3 sgd, 8e-3 adamw)")
    a("--lr-scaling", default="linear", choices=("linear", "sqrt"), help="peak lr = --lr x m/256 "
      "(the paper's, for SGD) or x sqrt(m/256) (compares batch sizes under adamw)")
    a("--warmup-epochs", type=NON_NEGATIVE, default=2.0, help="then a cosine to 0 (paper: 10)")
    a("--weight-decay", type=NON_NEGATIVE, default=1e-4, help="L2 (sgd) or decoupled (adamw)")
    a("--fixed-batches", action="store_true", help="the same batches every epoch (Thm 5.5)")
    a("--seed", type=SIZE, default=0, help="weights, batch order and augmentation")
    # the run
    a("--device", default="auto", help="auto = cuda, then mps, then cpu")
    a("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="auto: bf16 autocast "
      "on GPUs that support it, else fp32 (TF32 off); bf16 on a CPU pays only with AMX/AVX512-BF16")
    a("--threads", type=SIZE, default=0, help="CPU threads; 0 = one per core that the load "
      "average leaves free")
    a("--compile", action="store_true", help="torch.compile the model (GPU; ~1 min warm-up)")
    a("--out-dir", default=None, help="default runs/<dataset>-<loss>-m<batch>-s<seed>-<time>")
    a("--resume", default=None, help="a run directory: continue from its last finished epoch")
    a("--log-every", type=COUNT, default=20, help="steps between progress lines (a GPU waits)")
    a("--monitor-size", type=SIZE, default=500, help="kNN accuracy of this many test images "
      "against as many training images after every epoch (0 = off; +-2 points at 80 %%)")
    a("--track-size", type=COUNT, default=1024, help="training images whose stats are logged")
    a("--probe-epochs", type=COUNT, default=200, help="SGD linear probe epochs (the paper: 200)")
    a("--workers", type=SIZE, default=8, help="DataLoader workers (imagefolder only)")
    return p


RUNTIME = {"resume", "device", "compile", "log_every", "workers"}  # may change on --resume


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.within_view and args.loss not in ("siglip", "spectral"):
        parser.error(f"--within-view is for siglip and spectral; {args.loss} fixes its own")
    resumed = None
    if args.resume:  # the run's own flags, but those that change no result
        given = {k for k, v in vars(args).items() if v != parser.get_default(k)} - RUNTIME
        if given:
            parser.error("--resume continues a run with its own flags; drop --" +
                         ", --".join(k.replace("_", "-") for k in sorted(given)))
        path = os.path.join(args.resume, "ckpt.pt")
        try:
            resumed = torch.load(path, map_location="cpu")
            args = argparse.Namespace(**{**resumed["args"], **{k: getattr(args, k)
                                                               for k in RUNTIME}})
        except Exception as e:  # missing, truncated, not a torch file, not train.py's
            parser.error(f"--resume {args.resume}: cannot read a checkpoint from {path} "
                         f"({type(e).__name__}); give a run directory of train.py")
        if resumed.get("finished") and os.path.exists(os.path.join(args.resume, "summary.json")):
            print(f"{args.resume} holds a finished run (summary.json); nothing to resume")
            return
        args.out_dir = args.resume
    if args.out_dir is None:
        args.out_dir = os.path.join("runs", f"{args.dataset}-{args.loss}-m{args.batch_size}-"
                                            f"s{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    if resumed is None and os.path.exists(os.path.join(args.out_dir, "ckpt.pt")):
        parser.error(f"--out-dir {args.out_dir} already holds a run (ckpt.pt); pass --resume "
                     f"{args.out_dir} to continue it, or pick another --out-dir")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size % world:
        parser.error(f"--batch-size {args.batch_size} is not divisible by {world} processes")
    try:
        models.pick_device(args.device)
        splits = evaluation.load_splits(vars(args), data_dir=args.data_dir,
                                        download=args.download)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    if args.batch_size > len(splits["pretrain"]):
        parser.error(f"--batch-size {args.batch_size} is larger than the training set (n = "
                     f"{len(splits['pretrain'])})")
    if int(os.environ.get("RANK", "0")) == 0:
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)
        metrics, lines = os.path.join(args.out_dir, "metrics.jsonl"), []
        if resumed is not None and os.path.exists(metrics):  # the epochs the checkpoint has
            with open(metrics) as f:
                lines = f.readlines()[:resumed["epoch"]]
        with open(metrics, "w") as f:
            f.writelines(lines)
    # 0: a thread per core that other programs leave free (their 1-minute load average), as
    # every parallel region of a small model waits for any of its threads that lost its core
    torch.set_num_threads(args.threads or max(1, os.cpu_count() - round(os.getloadavg()[0])))
    train(args, splits, resumed)


def epoch_views(source, batches, *, rows, aug, generator, seed, workers, device):
    """This process's two views of each batch of one epoch: (B, 3, S, S) each, on the device.
    Every process augments the whole global batch with the same random numbers and keeps its
    rows, so K processes train on the views of one. Folders: PIL in DataLoader workers."""
    lo, hi = rows
    if isinstance(source, torch.Tensor):
        for idx in batches.to(device):
            x, y = data.two_views(source[idx], generator=generator, **aug)  # (m, 3, S, S) each
            yield x[lo:hi], y[lo:hi]
        return
    loader = torch.utils.data.DataLoader(
        source, batch_sampler=batches[:, lo:hi].tolist(), num_workers=workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))
    for x, y, _, _ in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def save_checkpoint(args, model, optimizer, epoch, train_wall_s=0.0, finished=False):
    """OUT_DIR/ckpt.pt after `epoch` epochs; renamed over the old one once written whole."""
    path = os.path.join(args.out_dir, "ckpt.pt")
    torch.save({"args": vars(args), "model": model.state_dict(), "epoch": epoch, "finished":
                finished, "train_wall_s": train_wall_s, "optimizer": optimizer.state_dict()},
               path + ".tmp")
    os.replace(path + ".tmp", path)


def stop_if_non_finite(values, where, out_dir):
    """Exit with one line if a value is NaN or inf (all processes see the same, so all stop)."""
    if not torch.isfinite(values).all():
        sys.exit(f"train.py: non-finite loss at {where}. Likely causes: lr too high, temperature "
                 f"too small. The last finished epoch's checkpoint is in {out_dir}/ckpt.pt")


def start_processes(args):
    """The device, rank and number of processes (set by torchrun): NCCL on GPUs, else gloo."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = models.pick_device(args.device)
    if device.type == "cuda":
        if world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 (matmuls: torch's default)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


class GatherWithGrad(torch.autograd.Function):
    """all_gather that lets gradients through. Every process computes the same global loss on
    the gathered (m, d) embeddings, so each holds the full dL/dz; summing over processes and
    keeping our slice gives K * dL/dz_local, which DDP's average over K turns back into the
    single-process gradient."""

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


if __name__ == "__main__":
    main()
