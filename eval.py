"""Evaluation: exact similarity statistics (Def. 4.1), linear probe (the paper's SGD protocol and
the same classifier fitted to convergence), kNN, Table 1 protocol, and the figures of a run.

    python eval.py --ckpt runs/RUN                 # trained encoder (train.py runs this too)
    python eval.py --ckpt runs/RUN --random-init   # same architecture, untrained: the baseline
    python eval.py --ckpt runs/A --ckpt runs/B --plot   # figures of one run, or two overlaid

Evaluating writes RUN/eval.json (or eval_random_init.json); --plot writes, drawn by figures.py,
RUN/figures/similarities.png (histograms of the Table 1 similarities) and curves.png (the
per-epoch curves of RUN/metrics.jsonl). Everything runs on --device (auto: the GPU when there
is one); nothing needs one. The copyable functions (class_split_stats, similarity_histograms,
linear_probe, linear_probe_lbfgs, knn_accuracy) are pure and paste alone; the statistics of
Def. 4.1 themselves are theory.similarity_stats.

Shape legend, the paper's letters where it has one: n training-set size, m pairs per batch (the
run's batch size), d embedding dimension (projector output). N images in the set at hand (a
sample such as Table 1's 5,000, or a whole split), D_h encoder feature dimension, C classes,
B images per forward pass, k neighbours of the kNN classifier.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import data
import models
from theory import similarity_stats  # Def. 4.1, exact over all pairs

CKPT_FORMAT = "embedding-similarity-ckpt/1"  # the marker of write_checkpoint, below


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


@torch.no_grad()
def similarity_histograms(u, v, *, bins=100, max_chunk=2 ** 24):
    """Bin counts over [-1, 1] of the N positive similarities s_ii and of the N(N-1) cross-view
    negatives s_ij, i != j (Def. 4.1): two int64 tensors (bins,) on the inputs' device.

    The negatives are never all in memory (25M at Table 1's N = 5,000): rows of S = U V^T are
    made and binned a chunk at a time, at most max_chunk similarities each (64 MB in float32).
    torch.histc counts in the inputs' dtype, exact in float32 up to 2^24, hence the default.
    It ignores values outside [min, max]: the diagonal is set to 2 to leave it out, after
    clamping the rest, which rounding can push just past +-1.
    """
    if u.dim() != 2 or u.shape != v.shape:
        raise ValueError(f"need u, v of one shape (N, d); got {u.shape} and {v.shape}")
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)  # (N, d) each
    pos = torch.histc((u * v).sum(1).clamp(-1, 1), bins, -1, 1).long()  # (bins,)
    neg = torch.zeros(bins, dtype=torch.long, device=u.device)  # (bins,)
    rows = max(1, max_chunk // len(v))
    for start in range(0, len(u), rows):
        s = (u[start:start + rows] @ v.T).clamp_(-1, 1)  # (rows, N)
        s.diagonal(offset=start).fill_(2.0)  # s_ii: the positives
        neg += torch.histc(s, bins, -1, 1).long()
    return pos, neg


# ---- Downstream evaluation of a frozen encoder ---------------------------------------------------

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
    decay, batch 256, 200 epochs (on precomputed features an epoch costs milliseconds).
    Momentum 0.9 and a cosine decay to 0 are added. The official code instead trains on
    crop+flip augmented images without normalising features: a different protocol.
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


# ---- Table 1: similarities of the projector outputs on two augmentations of training images ------

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


def table1_images(dataset, *, data_dir, count=5000, train_size=0, seed=0, size=None):
    """The first `count` training images, uint8 (N, 3, H, W), and their labels (N,) (-1 for
    stl10_unlabeled): Table 1 draws its positive pairs by augmenting 5,000 training images.
    ImageFolder images are resized to `size` on reading."""
    if dataset == "imagefolder":
        folder = data.datasets.ImageFolder(os.path.join(data_dir, "train"))
        N = min(count, train_size or len(folder), len(folder))
        return data.imagefolder_images(folder, range(N), size)
    images, labels, _ = data.load_dataset(dataset, data_dir=data_dir, train=True, seed=seed)
    N = min(count, train_size or len(images))
    return images[:N], labels[:N]


def monitor_images(dataset, *, data_dir, count, seed, size, data_seed=0):
    """The labelled images of train.py's per-epoch accuracy monitor: a seeded random subset of
    `count` training images (the kNN bank) and of `count` held-out test images (the queries),
    uint8 (N, 3, H, W) with labels (N,), and the number of classes. stl10_unlabeled has no
    labels: its monitor uses STL-10's labelled splits, as its evaluation does."""
    labelled = "stl10" if dataset == "stl10_unlabeled" else dataset
    out = []
    for train in (True, False):
        if dataset == "imagefolder":
            folder = data.datasets.ImageFolder(os.path.join(data_dir, "train" if train else "val"))
            N, classes = len(folder), len(folder.classes)
        else:
            images, labels, classes = data.load_dataset(labelled, data_dir=data_dir, train=train,
                                                        seed=data_seed)
            N = len(images)
        idx = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:count]  # (N',)
        if dataset == "imagefolder":
            out += data.imagefolder_images(folder, idx, size)
        else:
            out += [images[idx], labels[idx]]
    return (*out, classes)


@torch.no_grad()
def knn_monitor(encoder, bank, bank_labels, queries, query_labels, *, num_classes, mean, std,
                device="cpu"):
    """The accuracy monitor of a run in progress (as solo-learn and lightly watch theirs):
    weighted kNN top-1 (%) of held-out queries against a bank of training images, on encoder
    features of un-augmented images. Cheap enough for every epoch: 2 x 500 forward passes."""
    bank_f = extract_features(encoder, bank, mean=mean, std=std, device=device)  # (N, D_h)
    query_f = extract_features(encoder, queries, mean=mean, std=std, device=device)
    return knn_accuracy(bank_f, bank_labels, query_f, query_labels, num_classes=num_classes,
                        k=min(20, len(bank_f)))


# ---- A run of train.py: its checkpoint, its features, everything the paper measures on it --------

def write_checkpoint(path, *, args, step, epochs_logged, sums, device, model, optimizer,
                     finished=False):
    """A checkpoint of train.py (its only writer): the run's flags, the step and the epochs
    logged so far, this epoch's sums of the step statistics, the device type it ran on, the
    state dicts, and `finished` once summary.json is written. No random state: the views are
    re-seeded from (seed, step), so a run resumes on any device and process count."""
    atomic_save({"format": CKPT_FORMAT, "args": args, "step": step,
                 "epochs_logged": epochs_logged, "sums": sums, "device": device,
                 "model": model, "optimizer": optimizer, "finished": finished}, path)


def atomic_save(obj, path):
    """Write to a temporary file, fsync, then rename: a crash mid-save keeps the old file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_checkpoint(path):
    """The checkpoint of a train.py run, from its directory or its ckpt.pt, loaded onto the CPU.
    Raises ValueError with one line saying what is wrong: no such file, unreadable
    (truncated, not a torch file), or not written by train.py."""
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such checkpoint; give a train.py run directory or its "
                         "ckpt.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt or not a torch file at all
        first_line = str(e).splitlines()[0][:120] if str(e) else ""
        raise ValueError(f"{path}: cannot be read ({type(e).__name__}: {first_line}); it may be "
                         "truncated, use an intact copy") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path}: not a checkpoint of train.py (no '{CKPT_FORMAT}' marker)")
    return ckpt


def run_dir_of(path):
    """The run directory of a --ckpt: the directory given, or the one that holds the ckpt.pt."""
    return path if os.path.isdir(path) else os.path.dirname(path)


@torch.no_grad()
def loader_features(encoder, loader, *, device="cpu"):
    """extract_features for data too large for memory (ImageFolder trees): a DataLoader of
    (normalised images (B, 3, S, S), labels (B,)) -> features (N, D_h), labels (N,) on device."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for x, y in loader:
        feats.append(encoder(x.to(device, non_blocking=True)).float())  # (B, D_h)
        labels.append(y.to(device))
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def split_features(encoder, dataset, *, data_dir, train_size=0, test_size=0, augment_kwargs,
                   seed=0, device="cpu", workers=8):
    """Encoder features and labels of the train and test splits of a dataset, in eval mode
    without augmentation: (train_f, train_y, test_f, test_y, num_classes), features on device.
    train_size (0 = all) is the run's --train-size: it keeps the first images of a train split
    that was also pre-trained on; test_size (0 = all) keeps the first images of the test split.
    stl10_unlabeled has no labels: STL-10's labelled train (5,000)
    and test (8,000) splits, whole, as is standard for a model pre-trained on it."""
    mean, std = augment_kwargs["mean"], augment_kwargs["std"]
    if dataset == "imagefolder":  # streamed: root/train and root/val
        tf = data.imagefolder_eval_transform(augment_kwargs["size"], mean, std)
        out = []
        for split in ("train", "val"):
            folder = data.datasets.ImageFolder(os.path.join(data_dir, split), tf)
            keep = train_size if split == "train" else test_size
            if keep:
                folder = torch.utils.data.Subset(folder, range(keep))
            loader = torch.utils.data.DataLoader(folder, batch_size=256, num_workers=workers)
            out += loader_features(encoder, loader, device=device)
        return (*out, len(folder.dataset.classes if keep else folder.classes))
    labelled = "stl10" if dataset == "stl10_unlabeled" else dataset
    train_x, train_y, classes = data.load_dataset(labelled, data_dir=data_dir, train=True,
                                                  seed=seed)
    test_x, test_y, _ = data.load_dataset(labelled, data_dir=data_dir, train=False, seed=seed)
    if train_size and labelled == dataset:
        train_x, train_y = train_x[:train_size], train_y[:train_size]
    if test_size:
        test_x, test_y = test_x[:test_size], test_y[:test_size]
    return (extract_features(encoder, train_x, mean=mean, std=std, device=device), train_y,
            extract_features(encoder, test_x, mean=mean, std=std, device=device), test_y,
            classes)


def evaluate_run(model, run, *, data_dir, probe_epochs=200, seed=0, device="cpu", workers=8):
    """evaluate() for a model trained by train.py with arguments `run` (a dict)."""
    aug = data.augment_kwargs(run["dataset"], run.get("image_size", 0))
    *feats, classes = split_features(model.encoder, run["dataset"], data_dir=data_dir,
                                     train_size=run["train_size"],
                                     test_size=run.get("test_size", 0), augment_kwargs=aug,
                                     seed=run["data_seed"], device=device, workers=workers)
    pairs, pair_labels = table1_images(run["dataset"], data_dir=data_dir, size=aug["size"],
                                       train_size=run["train_size"], seed=run["data_seed"])
    return evaluate(model, *feats, pairs, num_classes=classes, augment_kwargs=aug,
                    probe_epochs=probe_epochs, seed=seed, device=device, pair_labels=pair_labels)


def evaluate(model, train_f, train_labels, test_f, test_labels, pair_images, *, num_classes,
             augment_kwargs, probe_epochs=200, seed=0, device="cpu", pair_labels=None):
    """Everything the paper measures on a pre-trained model: linear-probe (the paper's SGD
    protocol, and fitted to convergence by L-BFGS) and kNN top-1 (%) of the encoder features
    (computed by split_features), and the Table 1 similarity statistics of the
    projector outputs on two augmentations of pair_images (5,000 training images in the paper),
    with pair_labels also split into same-class and different-class negatives."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return {
        "linear_acc": linear_probe(train_f, train_labels, test_f, test_labels,
                                   num_classes=num_classes, epochs=probe_epochs, seed=seed),
        "linear_lbfgs_acc": linear_probe_lbfgs(train_f, train_labels, test_f, test_labels,
                                               num_classes=num_classes),
        "knn_acc": knn_accuracy(train_f, train_labels, test_f, test_labels,
                                num_classes=num_classes),
        "table1_stats": table1_stats(model, pair_images, augment_kwargs=augment_kwargs,
                                     generator=gen, device=device, labels=pair_labels),
    }


def model_of(ckpt, *, random_init=False):
    """The ContrastiveModel of a checkpoint, on the CPU: its trained weights, or with random_init
    the untrained weights train.py evaluates as its baseline (seeded with the run's seed + 1)."""
    run = ckpt["args"]
    torch.manual_seed(run["seed"] + 1)  # the baseline's seed; trained weights replace it below
    model = models.ContrastiveModel(run["arch"], width=run["width"], stem=run["stem"])
    if not random_init:
        model.load_state_dict(ckpt["model"])
    return model


# ---- Figures of a run: the Table 1 similarity histograms and the per-epoch curves ----------------

def monitor_curve(records):
    """[(epoch, kNN top-1 %)] of the per-epoch accuracy monitor in metrics.jsonl's records, for
    the epochs where it ran (none with --monitor-size 0)."""
    return [(r["epoch"], r["monitor"]["knn_acc"]) for r in records
            if isinstance(r.get("monitor"), dict) and "knn_acc" in r["monitor"]]


def metric_curves(records):
    """The series that curves.png draws, from the records of metrics.jsonl (one an epoch):
    per-epoch means over the steps' batches (batch_*), exact statistics of the tracked training
    images (tracked_*), the kNN accuracy monitor where it ran (monitor_epoch, monitor_knn), and
    the theory's values at the run's n and m."""
    knn = monitor_curve(records)
    curves = {"epoch": [r["epoch"] for r in records],
              "monitor_epoch": [epoch for epoch, _ in knn], "monitor_knn": [acc for _, acc in knn],
              "theory": records[-1]["theory"]}  # neg_optimum, within_batch_neg, var_low, var_high
    for part, keys in (("batch", ("loss", "vrns", "pos_mean", "neg_mean", "neg_var")),
                       ("tracked", ("pos_mean", "neg_mean", "neg_var"))):
        curves.update({f"{part}_{key}": [r[part][key] for r in records] for key in keys})
    return curves


def run_figure_data(path, *, data_dir=None, bins=100, seed=None, device="cpu"):
    """What the figures show of one run: its label, the Table 1 statistics and histograms of its
    trained model (the augmentations drawn from `seed`, default the run's, as evaluate() draws
    them in train.py's final evaluation) and its curves."""
    ckpt = read_checkpoint(path)
    run = ckpt["args"]
    seed = run["seed"] if seed is None else seed
    metrics = os.path.join(run_dir_of(path), "metrics.jsonl")
    records = []
    if os.path.isfile(metrics):
        with open(metrics) as f:
            records = [json.loads(line) for line in f]
    if not records or any(key not in records[-1] for key in ("batch", "tracked", "theory")):
        raise ValueError(f"{metrics}: no epoch record of this train.py (the curves need one)")
    aug = data.augment_kwargs(run["dataset"], run.get("image_size", 0))
    images = table1_images(run["dataset"], data_dir=data_dir or run["data_dir"], size=aug["size"],
                           train_size=run["train_size"], seed=run["data_seed"])[0]
    u, v = table1_embeddings(model_of(ckpt).to(device), images, augment_kwargs=aug, device=device,
                             generator=torch.Generator(device=device).manual_seed(seed))
    pos, neg = similarity_histograms(u, v, bins=bins)
    label = (f"{os.path.basename(os.path.abspath(run_dir_of(path)))}: {run['loss']}, "
             f"m = {run['batch_size']}, lam = {run['vrns_weight']:g}")
    return {"label": label, "pos_counts": pos.tolist(), "neg_counts": neg.tolist(),
            "stats": {key: s.item() if torch.is_tensor(s) else s
                      for key, s in similarity_stats(u, v).items()},
            "curves": metric_curves(records)}


def write_figures(runs, plot_dir):
    """similarities.png and curves.png of the figure data of one or more runs, drawn by
    figures.py (imported here only, and with it matplotlib) into plot_dir; returns their paths."""
    import figures

    os.makedirs(plot_dir, exist_ok=True)
    paths = []
    for name, draw in (("similarities.png", figures.similarities), ("curves.png", figures.curves)):
        paths.append(os.path.join(plot_dir, name))
        draw(runs).savefig(paths[-1], dpi=120)
    return paths


# ---- Command line --------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a checkpoint of train.py (linear probe, "
                                "kNN, Table 1 similarity statistics), or plot its figures.")
    p.add_argument("--ckpt", action="append", required=True,
                   help="run directory of train.py or its ckpt.pt; with --plot, repeat it to "
                   "overlay runs (e.g. lam = 0 and lam > 0)")
    p.add_argument("--random-init", action="store_true", help="same architecture, untrained "
                   "weights: the baseline that shows what pre-training bought")
    p.add_argument("--probe-epochs", type=int, default=200, help="linear-probe epochs on frozen "
                   "features (the paper: 200; features are precomputed, so each is cheap)")
    p.add_argument("--plot", action="store_true", help="instead of evaluating, draw the figures: "
                   "histograms of the Table 1 similarities (recomputed on up to 5,000 training "
                   "images) and the curves of metrics.jsonl; no linear probe")
    p.add_argument("--plot-dir", default=None, help="where --plot writes (default: "
                   "FIRST_RUN/figures)")
    p.add_argument("--bins", type=int, default=100, help="histogram bins over [-1, 1]")
    p.add_argument("--data-dir", default=None, help="override the run's --data-dir")
    p.add_argument("--device", default="auto", help="auto = cuda, then mps, then cpu")
    p.add_argument("--seed", type=int, default=None, help="seed of the probe and of the Table 1 "
                   "augmentations (default: the run's --seed, as train.py's final evaluation)")
    args = p.parse_args(argv)
    if args.probe_epochs < 1 or args.bins < 1:
        fail(f"--probe-epochs and --bins must be >= 1, got {args.probe_epochs}, {args.bins}")
    if len(args.ckpt) > 1 and not args.plot:
        fail("several --ckpt only with --plot; evaluate one run at a time")
    if args.plot and args.random_init:
        fail("--plot draws trained runs; leave out --random-init")
    try:
        device = models.pick_device(args.device)
    except ValueError as err:
        fail(f"--device {args.device}: {err}")
    if args.plot:
        runs = []
        for path in args.ckpt:
            try:
                runs.append(run_figure_data(path, data_dir=args.data_dir, bins=args.bins,
                                            seed=args.seed, device=device))
            except ValueError as e:  # the checkpoint or metrics.jsonl
                fail(f"--ckpt {e}")
            except FileNotFoundError as e:  # the dataset
                fail(f"--ckpt {path}: {e}")
        for run in runs:
            print(f"{run['label']}: {json.dumps(run['stats'])}")
        paths = write_figures(runs, args.plot_dir or os.path.join(run_dir_of(args.ckpt[0]),
                                                                  "figures"))
        print(f"written: {', '.join(paths)}")
        return
    try:
        ckpt = read_checkpoint(args.ckpt[0])
    except ValueError as err:
        fail(f"--ckpt {err}")
    run = ckpt["args"]
    data_dir = args.data_dir or run["data_dir"]
    start = time.time()
    try:
        result = evaluate_run(model_of(ckpt, random_init=args.random_init).to(device), run,
                              data_dir=data_dir, probe_epochs=args.probe_epochs,
                              seed=run["seed"] if args.seed is None else args.seed, device=device)
    except (FileNotFoundError, ValueError) as e:
        fail(f"{run['dataset']} in {data_dir}: {e}")
    import train  # here, not at the top: train.py imports this module
    result.update(ckpt=args.ckpt[0], random_init=args.random_init,
                  eval_wall_s=round(time.time() - start), commit=train.code_version())
    out = os.path.join(run_dir_of(args.ckpt[0]),
                       "eval_random_init.json" if args.random_init else "eval.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"written to {out}")


def fail(message):
    print(f"eval.py: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
