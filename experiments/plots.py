"""Every figure of the repository, drawn from numbers that theory.py, lab.py, eval.py and sweep.py
compute; the one module that imports matplotlib (pip install -r experiments/requirements.txt).

    python -m experiments.plots theory     # experiments/figures/: Fig. 2, Thm 5.5, Ex. 5.4 and
                                           # Def. 5.7, about 70 s on one thread (--quick: seconds)
    python -m experiments.plots run runs/A runs/B   # A/figures/similarities.png and curves.png
    python -m experiments.sweep report FOLDER --plot-dir DIR   # the sweep figures

Each drawing function takes plain numbers and returns a matplotlib Figure, made without pyplot:
no global state, no window, no backend to choose. Shape legend: n pairs (the training-set size in
the theory), m pairs per batch, d embedding dimension, N images of a run's Table 1 sample, lam
the weight of L_VRNS, t and b SigLIP's scale and bias (the paper's sign).
"""
import argparse
import json
import os
import sys
import time
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

import data
import eval as evaluation
import models
import theory
from experiments import lab
from experiments.sweep import monitor_curve


# ---- The theory: the optima of free embeddings (lab.py computes them) ----------------------------

def figure2(configurations):
    """Fig. 2: n = 4 pairs (u_i = v_i) in R^3, one 3-D panel per theory.figure2_configurations()
    entry; a colour per batch, its pairs joined, coincident embeddings labelled together."""
    fig = Figure(figsize=(9, 3.4))
    a, z = np.meshgrid(np.linspace(0, 2 * np.pi, 19), np.linspace(-1, 1, 10))  # a sphere
    for k, config in enumerate(configurations):
        ax = fig.add_subplot(1, 3, k + 1, projection="3d")
        ax.plot_wireframe(np.sqrt(1 - z ** 2) * np.cos(a), np.sqrt(1 - z ** 2) * np.sin(a), z,
                          color="0.85", linewidth=0.4)
        u, m = np.asarray(config["u"]), config["m"]  # (4, 3)
        for start in range(0, 4, m):  # the first batch drawn wider, so that a shared one shows
            batch = u[start:start + m]  # (m, 3)
            colour, wide = (f"C{start // m}", start == 0) if m < 4 else ("C2", False)
            for i in range(m):
                for j in range(i + 1, m):
                    ax.plot(*batch[[i, j]].T, color=colour, linewidth=5 if wide else 1.5)
            ax.scatter(*batch.T, color=colour, s=120 if wide else 40, depthshade=False)
        for point in np.unique(u.round(6), axis=0):
            same = [str(i + 1) for i in range(4) if np.allclose(u[i], point, atol=1e-6)]
            ax.text(*(1.3 * point), ",".join(same), fontsize=9, ha="center")
        e, var = (Fraction(config[key]).limit_denominator(100) for key in ("neg_mean", "neg_var"))
        ax.set_title(f"{config['name']}\nE[s_neg] = {e}, Var[s_neg] = {var}", fontsize=9)
        ax.set_box_aspect((1, 1, 1), zoom=1.3)
        ax.set_axis_off()
    fig.suptitle("Fig. 2: n = 4 pairs (u_i = v_i) in R^3, batches {1, 2} (blue) and {3, 4} "
                 "(orange); E and Var computed", fontsize=10)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.8, wspace=0)
    return fig


def variance_vs_batch(rows, n, steps):
    """Thm 5.5: Var[s_neg] against m, the eq. (11) band and the optima of fixed and reshuffled
    batches (the rows of lab.variance_vs_batch)."""
    ms = [r["m"] for r in rows]
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(ms, [r["low"] for r in rows], [r["high"] for r in rows], color="C0",
                    alpha=0.15, label="eq. (11): optima of fixed batches")
    ax.plot(ms, [r["fixed"] for r in rows], "o-", color="C1", label="fixed batches, optimised")
    ax.plot(ms, [r["reshuffled"] for r in rows], "s-", color="C2",
            label="reshuffled every step, optimised")
    ax.set(xscale="log", yscale="log", xlabel="batch size m", ylabel="Var[s_neg]")
    ax.set_title(f"Thm 5.5: n = {n} free pairs in R^{n}, SimCLR tau = 0.5, {steps} steps\n"
                 "(at m = n both bounds are 0)", fontsize=10)
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    return fig


def siglip_phase(panels, n, steps):
    """Ex. 5.4 at n pairs: eq. (10)'s region of (t, b) shaded, and the measured gap 1 - min s_pos
    of each optimum as a coloured dot; panels = the point lists of lab.siglip_phase without and
    with within-view negatives."""
    T, B = np.meshgrid(np.linspace(0.2, 11, 300), np.linspace(-3, 7, 300))  # (300, 300) each
    region = np.vectorize(lambda t, b: theory.siglip_excessive_separation(t, b, n))(T, B)
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, points, within in zip(axes, panels, (False, True)):
        ax.contourf(T, B, region, levels=[0.5, 1.5], colors=["C3"], alpha=0.2)
        ax.contour(T, B, region, levels=[0.5], colors=["C3"], linewidths=1)
        gaps = np.log10(np.clip([p["gap"] for p in points], 1e-6, None))
        dots = ax.scatter([p["t"] for p in points], [p["b"] for p in points], c=gaps, s=90,
                          cmap="viridis", vmin=-6, vmax=0.3, edgecolors="k")
        ax.set(xlabel="t (SigLIP's scale)", title="with within-view negatives (c2 = 1)" if within
               else "cross-view negatives only (c2 = 0)")
    axes[0].set_ylabel("b (the paper's sign; SigLIP's b' = -b)")
    fig.colorbar(dots, ax=axes, label="measured log10(1 - min s_pos), clipped at -6")
    fig.suptitle(f"Ex. 5.4 at n = {n}: shaded where eq. (10) predicts excessive separation; "
                 f"dots: full-batch optima, {steps} steps", fontsize=10)
    return fig


def vrns_sweep(lams, reshuffled, fixed, n, m, steps):
    """Def. 5.7: E[s_neg] and Var[s_neg] against lam (the rows of lab.vrns_sweep for
    reshuffled and for fixed batches), with the term's target -1/(n-1) and eq. (11)'s bounds."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for rows, style, label in ((reshuffled, "o-", "reshuffled batches"),
                               (fixed, "s--", "fixed batches")):
        for ax, key in zip(axes, ("neg_mean", "neg_var")):
            ax.plot(lams, [r[key] for r in rows], style, label=label)
    axes[0].axhline(theory.negative_similarity_optimum(n), color="k", linewidth=0.8,
                    linestyle=":", label="-1/(n-1), the term's target")
    for bound, label in zip(theory.minibatch_variance_bounds(n, m), ("eq. (11) bounds", None)):
        axes[1].axhline(bound, color="C0", linewidth=0.8, linestyle=":", label=label)
    axes[0].set(ylabel="E[s_neg]")
    axes[1].set(ylabel="Var[s_neg]", yscale="log")
    for ax in axes:
        ax.set(xscale="symlog", xlabel="lam", xlim=(-0.05, lams[-1] * 1.3))
        ax.set_xticks(lams, [f"{lam:g}" for lam in lams])
        ax.legend(fontsize=8)
    fig.suptitle(f"Def. 5.7: SimCLR (tau = 0.5) + lam L_VRNS, n = {n} free pairs in R^{n}, "
                 f"m = {m}, {steps} steps", fontsize=10)
    return fig


def theory_figures(quick=False):
    """{file name: a function that computes and draws it} for the four figures of the theory, from
    the experiments of lab.py (seed 0; quick: coarse grids and few steps, seconds)."""
    n, ms, steps = (12, (3, 6), 100) if quick else (24, (2, 3, 4, 6, 8, 12), 300)
    ts, bs, phase_steps = (((1.0, 10.0), (-2.0, 6.0), 100) if quick else
                           ((1.0, 4.0, 7.0, 10.0), (-2.0, 0.0, 2.0, 4.0, 6.0), 600))
    lams, vrns_steps = ((0.0, 10.0), 100) if quick else ((0.0, 0.3, 1.0, 3.0, 10.0, 30.0), 500)
    return {  # Ex. 5.4 at n = 8; Def. 5.7 at n = 32, m = 8
        "fig2_configurations.png": lambda: figure2(theory.figure2_configurations()),
        "thm55_variance_vs_batch.png": lambda: variance_vs_batch(
            lab.variance_vs_batch(n, ms, steps), n, steps),
        "ex54_siglip_phase.png": lambda: siglip_phase(
            [lab.siglip_phase(ts, bs, 8, within, phase_steps) for within in (False, True)], 8,
            phase_steps),
        "def57_vrns_sweep.png": lambda: vrns_sweep(
            lams, *(lab.vrns_sweep(lams, fixed, 32, 8, vrns_steps) for fixed in (False, True)),
            32, 8, vrns_steps)}


# ---- A training run, or several overlaid: the Table 1 similarities and the curves ----------------

@torch.no_grad()
def similarity_histograms(u, v, *, bins=100):
    """Bin counts over [-1, 1] of the N positive similarities s_ii and of the N(N-1) cross-view
    negatives s_ij, i != j (Def. 4.1): two int64 tensors (bins,). S = U V^T is made whole (100 MB
    at Table 1's N = 5,000, as much again for the bins); torch.histc would count float32 in
    float32, stuck at 2^24 in a bin. Rounding can push s just past +-1: clamped to the end bins."""
    if u.dim() != 2 or u.shape != v.shape:
        raise ValueError(f"need u, v of one shape (N, d); got {u.shape} and {v.shape}")
    S = F.normalize(u, dim=1) @ F.normalize(v, dim=1).T  # (N, N)
    index = S.add_(1).mul_(bins / 2).int().clamp_(0, bins - 1)  # (N, N) the bin of each s_ij
    pos = torch.bincount(index.diagonal(), minlength=bins)  # (bins,)
    return pos, torch.bincount(index.flatten(), minlength=bins) - pos


def metric_curves(records):
    """The series of curves.png from metrics.jsonl's records (one an epoch): batch_* (means over
    the epoch's batches), tracked_* (exact, of the tracked training images), the kNN monitor where
    it ran (monitor_epoch, monitor_knn) and the theory's values at the run's n and m."""
    knn = monitor_curve(records)
    curves = {"epoch": [r["epoch"] for r in records],
              "monitor_epoch": [epoch for epoch, _ in knn], "monitor_knn": [acc for _, acc in knn],
              "theory": records[-1]["theory"]}  # neg_optimum, within_batch_neg, var_low, var_high
    for part, keys in (("batch", ("loss", "vrns", "pos_mean", "neg_mean", "neg_var")),
                       ("tracked", ("pos_mean", "neg_mean", "neg_var"))):
        curves.update({f"{part}_{key}": [r[part][key] for r in records] for key in keys})
    return curves


def run_figure_data(run_dir, *, device="cpu"):
    """What the figures show of one run: its label, the Table 1 statistics and histograms of its
    model in RUN/ckpt.pt (the augmentations drawn from the run's seed, as train.py's final
    evaluation draws them) and the curves of RUN/metrics.jsonl."""
    ckpt = torch.load(os.path.join(run_dir, "ckpt.pt"), map_location="cpu")
    run = ckpt["args"]
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    if not records:
        raise ValueError(f"{run_dir}/metrics.jsonl: no epoch record yet (the curves need one)")
    images = evaluation.load_splits(run, data_dir=run["data_dir"])["pairs"][0]
    u, v = evaluation.table1_embeddings(  # (N, d) each
        evaluation.model_of(ckpt).to(device), images, device=device,
        augment_kwargs=data.augment_kwargs(run["dataset"], run["image_size"]),
        generator=torch.Generator(device=device).manual_seed(run["seed"]))
    pos, neg = similarity_histograms(u, v)
    return {"label": f"{os.path.basename(os.path.abspath(run_dir))}: {run['loss']}, "
                     f"m = {run['batch_size']}, lam = {run['vrns_weight']:g}",
            "pos_counts": pos.tolist(), "neg_counts": neg.tolist(),
            "stats": {key: s.item() if torch.is_tensor(s) else s
                      for key, s in theory.similarity_stats(u, v).items()},
            "curves": metric_curves(records)}


def _optima(ax, values, first, line):
    """-1/(n-1) and -1/(m-1) as reference lines (ax.axvline or ax.axhline as `line`)."""
    line(values["neg_optimum"], color="k", ls=":",
         label="-1/(n-1), full-batch optimum" if first else None)
    line(values["within_batch_neg"], color="k", ls="-.",
         label="-1/(m-1), in-batch optimum" if first else None)


def similarities(runs):
    """similarities.png: the density of the positive and of the negative similarities of each
    run (run_figure_data), their means, -1/(n-1) and -1/(m-1)."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, run in enumerate(runs):
        colour, stats = f"C{i}", run["stats"]
        for ax, kind in zip(axes, ("pos", "neg")):
            counts = np.asarray(run[f"{kind}_counts"], dtype=np.float64)  # (bins,)
            edges = np.linspace(-1, 1, len(counts) + 1)  # (bins + 1,)
            density = counts / counts.sum() / (edges[1] - edges[0])  # (bins,) integrates to 1
            ax.stairs(density, edges, color=colour, label=f"{run['label']}\nmean "
                      f"{stats[kind + '_mean']:.3f}, var {stats[kind + '_var']:.4f}")
            ax.axvline(stats[f"{kind}_mean"], color=colour, lw=1)
        _optima(axes[1], run["curves"]["theory"], i == 0, axes[1].axvline)
    count = runs[0]["stats"]["count"]
    axes[0].set_title(f"positive pairs s_ii ({count:,} images, two augmentations)")
    axes[1].set_title(f"negative pairs s_ij, i != j ({count * (count - 1):,})")
    for ax in axes:
        ax.set(xlabel="cosine similarity of projector outputs", ylabel="density")
        ax.legend(fontsize=7)
    return fig


def curves(runs):
    """curves.png: per epoch, the loss, L_VRNS, E[s_pos], E[s_neg] and Var[s_neg] of each run
    (solid: the tracked training images, exact; dashed: mean over the epoch's batches), with
    -1/(n-1), -1/(m-1) and the eq. (11) range of Var[s_neg]; then the kNN accuracy monitor."""
    fig = Figure(figsize=(24, 3.6), layout="constrained")
    axes = fig.subplots(1, 6)
    for i, run in enumerate(runs):
        c, colour, first = run["curves"], f"C{i}", i == 0  # one legend entry per kind of line
        axes[0].plot(c["epoch"], c["batch_loss"], color=colour, label=run["label"])
        axes[1].plot(c["epoch"], c["batch_vrns"], color=colour)
        axes[5].plot(c["monitor_epoch"], c["monitor_knn"], color=colour)
        for ax, key in zip(axes[2:], ("pos_mean", "neg_mean", "neg_var")):
            ax.plot(c["epoch"], c[f"tracked_{key}"], color=colour,
                    label="tracked images, exact" if first else None)
            ax.plot(c["epoch"], c[f"batch_{key}"], color=colour, ls="--",
                    label="in-batch, epoch mean" if first else None)
        _optima(axes[3], c["theory"], first, axes[3].axhline)
        axes[4].axhspan(c["theory"]["var_low"], c["theory"]["var_high"], color="k", alpha=0.1,
                        label="eq. (11) range" if first else None)
    axes[4].set_yscale("log")  # the eq. (11) range lies decades below a real run's variance
    titles = ("loss (batch mean)", "L_VRNS (batch mean)", "E[s_pos]", "E[s_neg]", "Var[s_neg]",
              "kNN monitor, top-1 %")
    for ax, title in zip(axes, titles):
        ax.set(title=title, xlabel="epoch")
    for ax in (axes[0], *axes[2:5]):  # the monitor panel has no labelled lines
        ax.legend(fontsize=7)
    return fig


# ---- Plumbing (skip on a first reading) ----

def main(argv=None):
    p = argparse.ArgumentParser(description="Draw the theory's figures, or a training run's.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("theory", help="Fig. 2, Thm 5.5, Ex. 5.4, Def. 5.7 (about 70 s)")
    t.add_argument("--quick", action="store_true", help="coarse grids, few steps: seconds")
    t.add_argument("--plot-dir", default=os.path.join("experiments", "figures"),
                   help="where the PNGs go (default: experiments/figures, the committed ones)")
    r = sub.add_parser("run", help="similarities.png and curves.png of runs, overlaid")
    r.add_argument("runs", nargs="+", metavar="RUN", help="train.py run directories (ckpt.pt, "
                   "metrics.jsonl); Table 1's pairs are recomputed from the run's data")
    r.add_argument("--plot-dir", default=None, help="default: FIRST_RUN/figures")
    r.add_argument("--device", default="auto", help="auto = cuda, then mps, then cpu")
    args = p.parse_args(argv)
    if args.command == "theory":
        torch.set_num_threads(1)  # tiny tensors: a second thread only adds overhead
        figures, plot_dir = theory_figures(args.quick), args.plot_dir
    else:
        try:
            device = models.pick_device(args.device)
            runs = [run_figure_data(run_dir, device=device) for run_dir in args.runs]
        except (OSError, KeyError, ValueError) as e:  # no run there, or no data
            print(f"plots.py run: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        figures = {"similarities.png": lambda: similarities(runs),
                   "curves.png": lambda: curves(runs)}
        plot_dir = args.plot_dir or os.path.join(args.runs[0], "figures")
    os.makedirs(plot_dir, exist_ok=True)
    for name, draw in figures.items():
        start = time.time()
        draw().savefig(os.path.join(plot_dir, name), dpi=110)
        print(f"{os.path.join(plot_dir, name)}: {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
