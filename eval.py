"""Evaluation of a pre-trained encoder: what the paper measures on it (§4, §6, App. D).

    python eval.py --ckpt runs/RUN     # RUN/eval.json; train.py runs the same at its end

`class_split_stats` splits the negatives of Def. 4.1 by class; `linear_probe` (the paper's SGD
protocol), `linear_probe_lbfgs` (the same classifier fitted to convergence) and `knn_accuracy`
score frozen encoder features h; `table1_stats` is Table 1's protocol; `evaluate` runs them all
on the splits that `load_splits` reads once per run. The first four are pure and paste alone.

Shape legend, the paper's letters where it has one: n training-set size, m pairs per batch, d
embedding dimension (projector output); N images in the set at hand (a sample such as Table 1's
5,000, or a whole split), D_h encoder feature dimension, C classes, B images per forward pass,
k neighbours of the kNN classifier.
"""
import argparse
import json
import math
import os
import platform
import subprocess
import time

import torch
import torch.nn.functional as F

import data
import models
import theory
from theory import similarity_stats  # Def. 4.1, exact over all pairs


def class_split_stats(u, v, labels):
    """The cross-view negatives s_ij = u_i^T v_j (i != j) of Def. 4.1 split by whether images i
    and j share a class: mean, variance and ordered pair count of each part, exact, without the
    N x N matrix (per-class Gram matrices, C x d x d). With few classes the same-class pairs,
    which a good encoder pulls together, set a floor under Var[s_neg] that batch size cannot
    move; the different-class part is what the paper's argument is about.

    u, v: (N, d) (normalised here); labels: (N,) ints in [0, C). Returns 0-d float64 tensors
    same_mean, same_var, diff_mean, diff_var and Python ints same_count, diff_count."""
    if labels.shape != (len(u),) or labels.min() < 0:
        raise ValueError(f"need one label >= 0 per row of u, got shape {tuple(labels.shape)}")
    u = F.normalize(u.detach().double(), dim=1)  # (N, d)
    v = F.normalize(v.detach().double(), dim=1)  # (N, d)
    Y = F.one_hot(labels.long()).double()  # (N, C)
    pos = (u * v).sum(1)  # (N,) s_ii
    N, sizes = len(u), Y.sum(0)  # sizes: (C,) images per class
    su, sv = Y.T @ u, Y.T @ v  # (C, d) per-class sums
    gu = torch.einsum("nc,nd,ne->cde", Y, u, u)  # (C, d, d) per-class Gram matrices
    gv = torch.einsum("nc,nd,ne->cde", Y, v, v)
    same = {"sum": (su * sv).sum() - pos.sum(), "sq": (gu * gv).sum() - (pos ** 2).sum(),
            "count": int((sizes * (sizes - 1)).sum())}
    total = {"sum": u.sum(0) @ v.sum(0) - pos.sum(),
             "sq": ((u.T @ u) * (v.T @ v)).sum() - (pos ** 2).sum(), "count": N * (N - 1)}
    diff = {k: total[k] - same[k] for k in total}
    out = {}
    for name, part in (("same", same), ("diff", diff)):
        mean = part["sum"] / max(part["count"], 1)
        out.update({f"{name}_mean": mean, f"{name}_var": part["sq"] / max(part["count"], 1)
                    - mean ** 2, f"{name}_count": part["count"]})
    return out


# ---- Downstream evaluation of a frozen encoder --------------------------------------------------

@torch.no_grad()
def extract_features(encoder, images, *, mean, std, batch_size=512, device="cpu"):
    """Encoder features h of un-augmented images: (N, 3, H, W) uint8 -> (N, D_h) float32 on
    `device`. Runs in eval mode (BatchNorm uses its running statistics) and restores the previous
    mode, so extracting never changes the encoder."""
    was_training = encoder.training
    encoder.eval()
    feats = []
    for start in range(0, len(images), batch_size):
        x = data.normalize(images[start:start + batch_size].to(device), mean=mean, std=std)
        feats.append(encoder(x).float())  # (B, D_h)
    encoder.train(was_training)
    return torch.cat(feats)  # (N, D_h)


def linear_probe(train_feats, train_labels, test_feats, test_labels, *, num_classes, epochs=200,
                 lr=0.1, batch_size=256, seed=0):
    """Top-1 test accuracy (%) of a linear classifier on frozen, L2-normalised features.

    The paper's protocol (App. D): no augmentation, L2-normalised features, SGD lr 0.1, no weight
    decay, batch 256, 200 epochs; momentum 0.9 and a cosine decay to 0 are added. The official
    code instead trains on crop+flip augmented images without normalising features.
    Runs on the device of train_feats. The initial weights and the batch order come from a
    seeded CPU generator, so every device draws the same numbers.
    """
    if len(train_feats) != len(train_labels) or len(test_feats) != len(test_labels):
        raise ValueError("features and labels must have the same length")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    device = train_feats.device
    g = torch.Generator().manual_seed(seed)
    x_train = F.normalize(train_feats.float(), dim=1)  # (N, D_h)
    x_test = F.normalize(test_feats.float().to(device), dim=1)  # (N_test, D_h)
    y_train, y_test = train_labels.to(device), test_labels.to(device)  # (N,), (N_test,)
    W = (torch.randn(num_classes, x_train.shape[1], generator=g) * 0.01).to(device)  # (C, D_h)
    b = torch.zeros(num_classes, device=device)  # (C,)
    params = [W.requires_grad_(), b.requires_grad_()]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        perm = torch.randperm(len(x_train), generator=g).to(device)  # (N,) one copy an epoch
        for start in range(0, len(x_train), batch_size):
            idx = perm[start:start + batch_size]  # (B,)
            loss = F.cross_entropy(F.linear(x_train[idx], W, b), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return 100.0 * (F.linear(x_test, W, b).argmax(1) == y_test).float().mean().item()


def linear_probe_lbfgs(train_feats, train_labels, test_feats, test_labels, *, num_classes,
                       weight_decay=1e-6, max_iter=500):
    """Top-1 test accuracy (%) of the same linear classifier on L2-normalised features, fitted
    to convergence: full-batch L-BFGS on the cross-entropy + weight_decay / 2 * ||W||^2.

    Why a second probe: the SGD protocol above stops after 200 epochs, a fixed number of steps
    (39,000 on CIFAR's 50,000 images, 4,000 on 5,000). On unit-norm features the logits need a
    large ||W||, which SGD at lr 0.1 grows slowly, so a short run scores how fast the probe
    learns as much as what the features hold, and that speed varies between encoders. This fit
    has no seed and no schedule: it finds the minimum, up to max_iter L-BFGS iterations.
    weight_decay keeps that minimum finite on separable features (without it ||W|| grows
    forever and the fit memorises the training set). Runs on the device of train_feats.
    """
    if len(train_feats) != len(train_labels) or len(test_feats) != len(test_labels):
        raise ValueError("features and labels must have the same length")
    if max_iter < 1 or weight_decay < 0:
        raise ValueError(f"need max_iter >= 1, weight_decay >= 0; got {max_iter}, {weight_decay}")
    device = train_feats.device
    x_train = F.normalize(train_feats.float(), dim=1)  # (N, D_h)
    x_test = F.normalize(test_feats.float().to(device), dim=1)  # (N_test, D_h)
    y_train, y_test = train_labels.to(device), test_labels.to(device)  # (N,), (N_test,)
    W = torch.zeros(num_classes, x_train.shape[1], device=device, requires_grad=True)  # (C, D_h)
    b = torch.zeros(num_classes, device=device, requires_grad=True)  # (C,)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(F.linear(x_train, W, b), y_train)
        loss = loss + 0.5 * weight_decay * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)  # one call runs up to max_iter iterations
    with torch.no_grad():
        return 100.0 * (F.linear(x_test, W, b).argmax(1) == y_test).float().mean().item()


@torch.no_grad()
def knn_accuracy(train_feats, train_labels, test_feats, test_labels, *, num_classes, k=20,
                 temperature=0.1, chunk=1024):
    """Top-1 accuracy (%) of a weighted k-nearest-neighbour classifier on cosine similarity
    (Wu et al. 2018): each of the k nearest training features votes exp(sim / temperature).
    Runs on the device of train_feats, `chunk` test features at a time: O(chunk N) memory."""
    if not 1 <= k <= len(train_feats):
        raise ValueError(f"k must be in [1, {len(train_feats)}], got {k}")
    device = train_feats.device
    bank = F.normalize(train_feats.float(), dim=1)  # (N, D_h)
    bank_labels, test_labels = train_labels.to(device), test_labels.to(device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(test_feats), chunk):
        q = F.normalize(test_feats[start:start + chunk].float().to(device), dim=1)  # (c, D_h)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (c, k), most similar first
        # exp((s - s_max) / T): the same vote up to a factor per row, where exp(s / T) would
        # overflow float32 for T < 0.0113
        weight = ((sim - sim[:, :1]) / temperature).exp()  # (c, k) in (0, 1]
        votes = torch.zeros(len(q), num_classes, device=device)  # (c, C)
        votes.scatter_add_(1, bank_labels[idx], weight)
        correct += (votes.argmax(1) == test_labels[start:start + chunk]).sum()
    return 100.0 * correct.item() / len(test_feats)


@torch.no_grad()
def table1_embeddings(model, images, *, augment_kwargs, generator=None, batch_size=512,
                      device="cpu"):
    """Projector outputs of two independent augmentations of each image: u, v (N, d) float32 on
    `device`, row i the positive pair of image i. Eval mode, restored afterwards."""
    was_training = model.training
    model.eval()
    u, v = [], []
    for start in range(0, len(images), batch_size):
        x, y = data.two_views(images[start:start + batch_size].to(device), generator=generator,
                              **augment_kwargs)  # (B, 3, S, S) each
        u.append(model(x)[1].float())  # (B, d)
        v.append(model(y)[1].float())  # (B, d)
    model.train(was_training)
    return torch.cat(u), torch.cat(v)


def table1_stats(model, images, *, augment_kwargs, generator=None, batch_size=512,
                 device="cpu", labels=None):
    """Table 1 protocol: two augmentations of each image (5,000 training images in the paper),
    projector outputs z, and the exact similarity_stats over all their pairs, as Python numbers
    for JSON; with the images' labels also the negatives split by class (class_split_stats,
    keys prefixed neg_same_ and neg_diff_)."""
    u, v = table1_embeddings(model, images, augment_kwargs=augment_kwargs, generator=generator,
                             batch_size=batch_size, device=device)  # (N, d) each
    stats = dict(similarity_stats(u, v))
    if labels is not None and labels.min() >= 0:  # stl10_unlabeled has labels -1
        split = class_split_stats(u, v, labels.to(u.device))
        stats.update({f"neg_{k}": value for k, value in split.items()})
    return {key: s.item() if torch.is_tensor(s) else s for key, s in stats.items()}


@torch.no_grad()
def knn_monitor(encoder, bank, bank_labels, queries, query_labels, *, num_classes, mean, std,
                device="cpu"):
    """The accuracy monitor of a run in progress: weighted kNN top-1 (%) of held-out queries
    against a bank of training images, on encoder features of un-augmented images."""
    bank_f = extract_features(encoder, bank, mean=mean, std=std, device=device)  # (N, D_h)
    query_f = extract_features(encoder, queries, mean=mean, std=std, device=device)
    return knn_accuracy(bank_f, bank_labels, query_f, query_labels, num_classes=num_classes,
                        k=min(20, len(bank_f)))


def evaluate(model, splits, *, augment_kwargs, probe_epochs=200, seed=0, device="cpu",
             workers=0):
    """Everything the paper measures on a pre-trained model: linear-probe top-1 (%) by the
    paper's SGD protocol and fitted to convergence by L-BFGS, and kNN top-1 (%), on encoder
    features of splits["train"] and splits["test"]; and the Table 1 statistics of the projector
    outputs on two augmentations of splits["pairs"], their negatives also split by class."""
    mean, std = augment_kwargs["mean"], augment_kwargs["std"]
    train_f, train_y = split_features(model.encoder, splits["train"], mean=mean, std=std,
                                      device=device, workers=workers)  # (N, D_h), (N,)
    test_f, test_y = split_features(model.encoder, splits["test"], mean=mean, std=std,
                                    device=device, workers=workers)  # (N_test, D_h), (N_test,)
    C, pairs = splits["classes"], splits["pairs"]
    gen = torch.Generator(device=device).manual_seed(seed)
    return {
        "linear_acc": linear_probe(train_f, train_y, test_f, test_y, num_classes=C,
                                   epochs=probe_epochs, seed=seed),
        "linear_lbfgs_acc": linear_probe_lbfgs(train_f, train_y, test_f, test_y, num_classes=C),
        "knn_acc": knn_accuracy(train_f, train_y, test_f, test_y, num_classes=C),
        "table1_stats": table1_stats(model, pairs[0], augment_kwargs=augment_kwargs,
                                     generator=gen, device=device, labels=pairs[1]),
    }


def evaluate_run(model, splits, run, *, probe_epochs=200, seed=None, device="cpu", workers=0):
    """evaluate() of a model trained by train.py with the flags `run` (a dict) and of an
    untrained model of the same architecture, the baseline; the Table 1 statistics against the
    theory; and the code, CPU and versions that computed them."""
    kw = dict(augment_kwargs=data.augment_kwargs(run["dataset"], run["image_size"]),
              probe_epochs=probe_epochs, seed=run["seed"] if seed is None else seed,
              device=device, workers=workers)
    result = evaluate(model, splits, **kw)
    untrained = model_of({"args": run}, random_init=True)
    untrained = untrained.to(device, memory_format=models.memory_format(untrained, device))
    rows = theory.compare_with_theory(result["table1_stats"], len(splits["pretrain"]),
                                      run["batch_size"])
    return dict(result, random_init=evaluate(untrained, splits, **kw), theory_rows=rows,
                commit=code_version(), cpu=cpu_name(), versions={
                    "python": platform.python_version(), "torch": torch.__version__})


# ---- Plumbing (skip on a first reading): the splits of a run, checkpoints, the command line ---

def load_splits(run, *, data_dir, download=False):
    """Every image a run needs (`run`: train.py's flags as a dict), each split read once:
    pretrain (what train.py trains on: uint8 (n, 3, H, W), or ImageFolderPairs for a tree);
    train and test (labelled: (images, labels), or an ImageFolder); pairs (Table 1's first <=
    5,000 training images and labels); tracked (--track-size seeded random training images);
    monitor (--monitor-size seeded random labelled training and test images: bank, labels,
    queries, labels; None at 0); classes. --train-size / --test-size keep the first images.
    stl10_unlabeled pre-trains on STL-10's unlabeled images (labels -1), evaluated on its
    labelled splits. Raises FileNotFoundError or ValueError in one line."""
    name, n, n_test = run["dataset"], run["train_size"] or None, run["test_size"] or None
    aug, count = data.augment_kwargs(name, run["image_size"]), run["monitor_size"]

    def pick(N, k):  # k seeded random indices of N
        return torch.randperm(N, generator=torch.Generator().manual_seed(run["seed"]))[:k]

    if name == "imagefolder":  # streamed from root/train and root/val; samples decoded by PIL
        dirs = [os.path.join(data_dir, split) for split in ("train", "val")]
        pretrain = data.ImageFolderPairs(dirs[0], data.imagefolder_two_view_transform(**aug))
        raw = [pretrain.folder, data.datasets.ImageFolder(dirs[1])]  # PIL images
        n, n_test = n or len(raw[0]), n_test or len(raw[1])
        tf = data.imagefolder_eval_transform(aug["size"], aug["mean"], aug["std"])
        train, test = (torch.utils.data.Subset(data.datasets.ImageFolder(d, tf), range(k))
                       for d, k in zip(dirs, (n, n_test)))

        def decode(folder, idx):  # -> (k, 3, S, S) uint8, (k,)
            return data.imagefolder_images(folder, idx, aug["size"])

        return dict(pretrain=pretrain, train=train, test=test, classes=len(raw[0].classes),
                    pairs=decode(raw[0], range(min(n, 5000))),
                    tracked=decode(raw[0], pick(n, run["track_size"]))[0],
                    monitor=(*decode(raw[0], pick(n, count)), *decode(raw[1], pick(n_test, count)))
                    if count else None)
    kw = dict(data_dir=data_dir, download=download, seed=run["data_seed"])
    labelled = "stl10" if name == "stl10_unlabeled" else name
    x, y, classes = data.load_dataset(labelled, "train", **kw)  # (N, 3, H, W) uint8, (N,)
    test_x, test_y, _ = data.load_dataset(labelled, "test", **kw)
    pre_x, pre_y = (data.load_dataset("stl10", "unlabeled", **kw)[:2] if labelled != name
                    else (x, y))  # (n, 3, H, W), (n,)
    if n is not None and n > len(pre_x):
        raise ValueError(f"--train-size {n} exceeds the {len(pre_x)} training images")
    pre_x, pre_y = pre_x[:n], pre_y[:n]
    if labelled == name:
        x, y = pre_x, pre_y
    test_x, test_y = test_x[:n_test], test_y[:n_test]
    bank, queries = pick(len(x), count), pick(len(test_x), count)
    return dict(pretrain=pre_x, train=(x, y), test=(test_x, test_y), classes=classes,
                pairs=(pre_x[:5000], pre_y[:5000]),
                tracked=pre_x[pick(len(pre_x), run["track_size"])],
                monitor=(x[bank], y[bank], test_x[queries], test_y[queries]) if count else None)


@torch.no_grad()
def split_features(encoder, split, *, mean, std, device="cpu", workers=0):
    """Encoder features (N, D_h) and labels (N,) on device of a split of load_splits: images in
    memory through extract_features; an ImageFolder decoded and normalised by DataLoader workers.
    """
    if isinstance(split, tuple):
        images, labels = split
        return extract_features(encoder, images, mean=mean, std=std,
                                device=device), labels.to(device)
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for x, y in torch.utils.data.DataLoader(split, batch_size=256, num_workers=workers):
        feats.append(encoder(x.to(device, non_blocking=True)).float())  # (B, D_h)
        labels.append(y.to(device))
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def model_of(ckpt, *, random_init=False):
    """The ContrastiveModel of a checkpoint, on the CPU: its trained weights, or with random_init
    the untrained weights train.py evaluates as its baseline (seeded with the run's seed + 1)."""
    run = ckpt["args"]
    torch.manual_seed(run["seed"] + 1)  # the baseline's seed; trained weights replace it below
    model = models.ContrastiveModel(run["arch"], width=run["width"], stem=run["stem"])
    if not random_init:
        model.load_state_dict(ckpt["model"])
    return model


def cpu_name():  # results name the CPU they ran on
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":")[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def code_version():
    """The git commit of the code that ran, +dirty when tracked files differ, or 'unknown'."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit, dirty = (subprocess.run(["git", "-C", here, *cmd], capture_output=True, text=True,
                                        timeout=10).stdout.strip()
                         for cmd in (["rev-parse", "HEAD"], ["status", "--porcelain", "-uno"]))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + "+dirty" * bool(dirty) if commit else "unknown"


def main(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a checkpoint of train.py and an untrained "
                                "model of its architecture: linear probes, kNN and the Table 1 "
                                "statistics, into RUN/eval.json.", usage="python eval.py --ckpt "
                                "RUN [--flag VALUE ...] (--help lists the flags)")
    p.add_argument("--ckpt", required=True, help="a run directory of train.py, or its ckpt.pt")
    p.add_argument("--probe-epochs", type=int, default=200, help="epochs of the SGD linear "
                   "probe (the paper: 200; on precomputed features each is cheap)")
    p.add_argument("--data-dir", default=None, help="where the data is (default: the run's)")
    p.add_argument("--device", default="auto", help="auto = cuda, then mps, then cpu")
    p.add_argument("--seed", type=int, default=None, help="seed of the probe and the Table 1 "
                   "augmentations (default: the run's, as train.py's own evaluation)")
    args = p.parse_args(argv)
    if args.probe_epochs < 1:
        p.error(f"--probe-epochs must be >= 1, got {args.probe_epochs}")
    path = os.path.join(args.ckpt, "ckpt.pt") if os.path.isdir(args.ckpt) else args.ckpt
    try:
        ckpt = torch.load(path, map_location="cpu")
        run = ckpt["args"]
    except Exception as e:  # missing, truncated, not a torch file, not train.py's
        p.error(f"--ckpt {args.ckpt}: cannot read a train.py checkpoint from {path} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})")
    try:
        device = models.pick_device(args.device)
        splits = load_splits(dict(run, monitor_size=0), data_dir=args.data_dir or run["data_dir"])
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    start, model = time.time(), model_of(ckpt)
    model = model.to(device, memory_format=models.memory_format(model, device))
    result = evaluate_run(model, splits, run, probe_epochs=args.probe_epochs, seed=args.seed,
                          device=device, workers=run["workers"])
    result.update(ckpt=args.ckpt, eval_wall_s=round(time.time() - start))
    with open(os.path.join(os.path.dirname(path), "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    theory.print_rows(result["theory_rows"])
    print(json.dumps({k: v for k, v in result.items() if k.endswith("acc")}), "-> eval.json")


if __name__ == "__main__":
    main()
