"""Sweeps of train.py over batch size, lam and seed, and their table and figures (the paper's
Table 1 and Fig. 4 at the scale of a CPU).

    python sweep.py run --out runs/sweep                   # 5 batch sizes x lam {0, 1} x seeds 0-2
    python sweep.py run --out runs/tune --batch-sizes 32 --lams 0 0.3 1 3 10 --seeds 3  # pick lam
    python sweep.py report runs/sweep                      # table on stdout, figures/sweep_*.png

`run` starts one train.py per (m, lam, seed) with one CPU thread each, --parallel at a time
(one per core), into OUT/<loss>-m<m>-lam<lam>-s<seed>/; a run with a summary.json is skipped and
an interrupted one is resumed, so the same command continues a sweep after Ctrl-C. Flags after
`--` go to every train.py (e.g. `-- --epochs 25 --loss dcl`).
`report` reads every summary.json below a folder and prints, per (loss, m, lam), mean +- std over
seeds of the linear-probe and kNN accuracy and of the Table 1 statistics, with the gain of each
lam > 0 over lam = 0 paired by seed.

Shape legend: m = pairs per batch, n = training-set size.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.abspath(__file__))


def run_name(loss, m, lam, seed):
    return f"{loss}-m{m}-lam{lam:g}-s{seed}"


def launch(out, loss, m, lam, seed, extra):
    """One train.py run in a subprocess; returns (name, status, seconds). A finished run is
    skipped, an interrupted one (a ckpt.pt without summary.json) resumed."""
    name = run_name(loss, m, lam, seed)
    run_dir = os.path.join(out, name)
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        return name, "done before", 0.0
    if os.path.exists(os.path.join(run_dir, "ckpt.pt")):
        cmd = ["--resume", run_dir]
    else:
        cmd = ["--loss", loss, "--batch-size", str(m), "--vrns-weight", f"{lam:g}", "--seed",
               str(seed), "--threads", "1", "--out-dir", run_dir, "--overwrite", *extra]
    start = time.time()
    with open(os.path.join(out, name + ".log"), "a") as log:
        status = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *cmd],
                                stdout=log, stderr=subprocess.STDOUT).returncode
    return name, "ok" if status == 0 else f"exit {status}", time.time() - start


def mean_std(values):
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))


def collect(folder):
    """Every summary.json below folder -> {(loss, m, lam): {seed: row}} with the figures a
    sweep compares."""
    groups = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry, "summary.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            s = json.load(f)
        a = s["args"]
        key = (a["loss"], a["batch_size"], a["vrns_weight"])
        groups.setdefault(key, {})[a["seed"]] = {
            "linear": s["linear_acc"], "knn": s["knn_acc"],
            "pos_mean": s["table1_stats"]["pos_mean"], "neg_mean": s["table1_stats"]["neg_mean"],
            "neg_var": s["table1_stats"]["neg_var"], "wall": s["total_wall_s"]}
    return groups


def summarize(groups):
    """Rows of the report: one per (loss, m, lam), means and stds over seeds, and for lam > 0
    the gain in linear accuracy over lam = 0 on the seeds both have."""
    rows = []
    for (loss, m, lam), by_seed in sorted(groups.items()):
        row = {"loss": loss, "m": m, "lam": lam, "seeds": sorted(by_seed)}
        for k in ("linear", "knn", "pos_mean", "neg_mean", "neg_var", "wall"):
            row[k] = mean_std([r[k] for r in by_seed.values()])
        base = groups.get((loss, m, 0.0), {})
        shared = sorted(set(base) & set(by_seed))
        if lam > 0 and shared:
            row["gain"] = mean_std([by_seed[s]["linear"] - base[s]["linear"] for s in shared])
        rows.append(row)
    return rows


def plus_minus(pair, fmt, several):
    """(mean, std) -> "mean ± std" in fmt, or just the mean for a single seed."""
    return format(pair[0], fmt) + (" ± " + format(pair[1], fmt.lstrip("+")) if several else "")


def markdown(rows):
    """The report as a markdown table; a ± std only where there are several seeds."""
    lines = ["| loss | m | λ | seeds | linear % | kNN % | gain (linear, vs λ = 0) | E[s_pos] | "
             "E[s_neg] | Var[s_neg] | wall s |", "|" + "---|" * 11]
    for r in rows:
        several = len(r["seeds"]) > 1
        gain = plus_minus(r["gain"], "+.1f", several) if "gain" in r else "-"
        lines.append(f"| {r['loss']} | {r['m']} | {r['lam']:g} | "
                     f"{','.join(map(str, r['seeds']))} | "
                     f"{plus_minus(r['linear'], '.1f', several)} | "
                     f"{plus_minus(r['knn'], '.1f', several)} | {gain} | "
                     f"{r['pos_mean'][0]:.3f} | {r['neg_mean'][0]:.4f} | "
                     f"{plus_minus(r['neg_var'], '.4f', several)} | {r['wall'][0]:.0f} |")
    return "\n".join(lines)


def plot(rows, plot_dir):
    """Var[s_neg] and linear accuracy against m, one line per (loss, lam), +- std bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ms_all = sorted({r["m"] for r in rows})
    for loss, lam in sorted({(r["loss"], r["lam"]) for r in rows}):
        line = sorted((r for r in rows if (r["loss"], r["lam"]) == (loss, lam)),
                      key=lambda r: r["m"])
        ms = [r["m"] for r in line]
        label = f"{loss}, λ = {lam:g}"
        for ax, key in zip(axes, ("neg_var", "linear")):
            ax.errorbar(ms, [r[key][0] for r in line], yerr=[r[key][1] for r in line],
                        marker="o", capsize=3, label=label)
    for ax, ylabel in zip(axes, ("Var[s_neg] (Table 1 protocol)", "linear probe top-1 (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ms_all, [str(m) for m in ms_all])  # the batch sizes, not powers of 2
        ax.set_xlabel("batch size m")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    os.makedirs(plot_dir, exist_ok=True)
    path = os.path.join(plot_dir, "sweep_batch_size.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train every (m, lam, seed) not finished yet")
    r.add_argument("--out", default="runs/sweep", help="folder of the sweep's run directories")
    r.add_argument("--loss", default="simclr", help="train.py --loss of every run")
    r.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    r.add_argument("--lams", type=float, nargs="+", default=[0.0, 1.0],
                   help="train.py --vrns-weight values; 0 is the baseline")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--parallel", type=int, default=os.cpu_count() or 1,
                   help="runs at once, one CPU thread each (default: one per core)")
    q = sub.add_parser("report", help="table and figure of a sweep's finished runs")
    q.add_argument("folder")
    q.add_argument("--plot-dir", default="figures", help="where sweep_batch_size.png goes")
    args = p.parse_args(argv)

    if args.command == "report":
        if not os.path.isdir(args.folder):
            p.error(f"{args.folder} is not a folder of runs")
        rows = summarize(collect(args.folder))
        if not rows:
            p.error(f"no finished run (summary.json) below {args.folder}")
        print(markdown(rows))
        print(f"figure: {plot(rows, args.plot_dir)}")
        return 0
    if args.parallel < 1 or min(args.batch_sizes) < 2 or min(args.lams) < 0:
        p.error("need --parallel >= 1, batch sizes >= 2 and lams >= 0")
    os.makedirs(args.out, exist_ok=True)
    jobs = [(args.loss, m, lam, s) for s in args.seeds for lam in args.lams
            for m in args.batch_sizes]
    start, failed = time.time(), 0
    with ThreadPoolExecutor(args.parallel) as pool:
        for name, status, seconds in pool.map(lambda job: launch(args.out, *job, extra), jobs):
            failed += status.startswith("exit")
            print(f"{name}: {status} ({seconds:.0f} s; {time.time() - start:.0f} s in all)",
                  flush=True)
    print(f"{len(jobs)} runs, {failed} failed; python sweep.py report {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
