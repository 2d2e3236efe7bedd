"""Every figure of the repository, drawn from numbers that theory.py, eval.py and sweep.py compute.

    python theory.py --plot               # figures/*.png: Fig. 2, Thm 5.5, Ex. 5.4, Def. 5.7
    python eval.py --ckpt RUN --plot      # RUN/figures/similarities.png and curves.png
    python sweep.py report FOLDER         # FOLDER/sweep_batch_size.png (+ sweep_gain_vs_tau.png)

Only those commands import this file, so nothing else needs matplotlib; it imports no other file
of the repository. Each function takes plain numbers and returns a matplotlib Figure for the
caller to save, made without pyplot: no global state, no window, no backend to choose.

Shape legend: n pairs (the training-set size in the theory), m pairs per batch, d embedding
dimension, lam the weight of L_VRNS, t and b SigLIP's scale and bias (the paper's sign).
"""
import math
from fractions import Fraction

import numpy as np
from matplotlib.figure import Figure


# ---- theory.py --plot: the optima of free embeddings --------------------------------------------

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
    batches (the rows of theory.variance_vs_batch)."""
    ms = [r["m"] for r in rows]
    fig = Figure(figsize=(6.4, 4.2))
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
    fig.tight_layout()
    return fig


def siglip_phase(T, B, region, panels, n, steps):
    """Ex. 5.4: eq. (10)'s region (a bool grid over the (t, b) grids T, B) shaded, and the
    measured gap 1 - min s_pos of each optimum as a coloured dot; panels = the point lists of
    theory.siglip_phase without and with within-view negatives."""
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


def vrns_sweep(lams, reshuffled, fixed, target, bounds, n, m, steps):
    """Def. 5.7: E[s_neg] and Var[s_neg] against lam (the rows of theory.vrns_sweep for
    reshuffled and for fixed batches), with the term's target -1/(n-1) and eq. (11)'s bounds."""
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    for rows, style, label in ((reshuffled, "o-", "reshuffled batches"),
                               (fixed, "s--", "fixed batches")):
        for ax, key in zip(axes, ("neg_mean", "neg_var")):
            ax.plot(lams, [r[key] for r in rows], style, label=label)
    axes[0].axhline(target, color="k", linewidth=0.8, linestyle=":",
                    label="-1/(n-1), the term's target")
    for bound in bounds:
        axes[1].axhline(bound, color="C0", linewidth=0.8, linestyle=":")
    axes[1].text(lams[-1], bounds[0], "eq. (11) bounds  ", ha="right", va="bottom", fontsize=8,
                 color="C0")
    axes[0].set(ylabel="E[s_neg]")
    axes[1].set(ylabel="Var[s_neg]", yscale="log")
    for ax in axes:
        ax.set(xscale="symlog", xlabel="lam", xlim=(-0.05, lams[-1] * 1.3))
        ax.set_xticks(lams, [f"{lam:g}" for lam in lams])
        ax.legend(fontsize=8)
    fig.suptitle(f"Def. 5.7: SimCLR (tau = 0.5) + lam L_VRNS, n = {n} free pairs in R^{n}, "
                 f"m = {m}, {steps} steps", fontsize=10)
    fig.tight_layout()
    return fig


# ---- eval.py --plot: one run, or several overlaid -----------------------------------------------

def _optima(ax, theory, first, line):
    """-1/(n-1) and -1/(m-1) as reference lines (ax.axvline or ax.axhline as `line`)."""
    line(theory["neg_optimum"], color="k", ls=":",
         label="-1/(n-1), full-batch optimum" if first else None)
    line(theory["within_batch_neg"], color="k", ls="-.",
         label="-1/(m-1), in-batch optimum" if first else None)


def similarities(runs):
    """similarities.png: the density of the positive and of the negative similarities of each
    run (eval.run_figure_data), their means, -1/(n-1) and -1/(m-1)."""
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
    -1/(n-1), -1/(m-1) and the eq. (11) range of Var[s_neg]; then the kNN accuracy monitor
    (empty for runs without one). The monitor flattens at the end of any cosine schedule, so
    whether a run converged shows only against a run of twice its epochs."""
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


# ---- sweep.py report ----------------------------------------------------------------------------

def sweep(lines, ticks, xlabel, ylabels):
    """One panel per y label against a swept flag on a log-2 axis ticked at the swept values
    `ticks`: lines = {label: [(x, (mean, half-width), ...), ...]}, a point per x with the 95 %
    interval of each panel's quantity, in the order of `ylabels` (half-width nan: no bar)."""
    fig = Figure(figsize=(5 * len(ylabels), 3.8))
    axes = fig.subplots(1, len(ylabels))
    for label, points in sorted(lines.items()):
        for k, ax in enumerate(axes, start=1):
            ax.errorbar([p[0] for p in points], [p[k][0] for p in points], marker="o",
                        capsize=3, label=label,
                        yerr=[0 if math.isnan(p[k][1]) else p[k][1] for p in points])
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])  # the swept values, not powers of 2
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
