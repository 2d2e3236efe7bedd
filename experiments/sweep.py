"""Sweeps of train.py over loss, batch size, temperature, lam and seed, and their report: tables
with gains paired by seed and 95 % confidence intervals, figures (the paper's Table 1, Fig. 4).

    python -m experiments.sweep run --out runs/bs --batch-sizes 16 64 256 --lams 0 3 \\
        --seeds 0 1 2 3 -- --epochs 30 --temperature 0.2   # 24 runs, one per core at once
    python -m experiments.sweep report runs/bs --contrast 16 256 --plot-dir runs/bs

`run` skips a finished run directory, resumes an interrupted one from its ckpt.pt (the same
command continues after Ctrl-C) and refuses, untouched, one with other result-changing flags.
`report` groups runs by every such flag but seed and lam, and prints per (group, lam) mean ± std
over seeds and, for lam > 0, the gains over lam = 0 paired by seed with 95 % t intervals.

Shape legend: m pairs per batch, n training-set size, tau temperature, lam the weight of L_VRNS.
"""
import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: train.py
# train.py's flags that leave the numbers of a run unchanged
NOT_RESULTS = train.RUNTIME | {"out_dir", "download"}
SWEPT = {"loss": "--losses", "batch_size": "--batch-sizes", "temperature": "--temperatures",
         "vrns_weight": "--lams", "seed": "--seeds"}
# what a report averages over seeds; diff_var and plateau are absent from some runs
STATS = ("linear", "knn", "pos_mean", "neg_mean", "neg_var", "diff_var", "plateau", "wall")


# ---- statistics: pure, each pastes alone ----------------------------------------------------

def mean_std(values):
    """Mean and sample standard deviation (0 for a single value)."""
    n, mean = len(values), sum(values) / len(values)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1)) if n > 1 else 0.0


def t_interval(values):
    """(mean, half-width) of the 95 % confidence interval of the mean, Student's t with n - 1
    degrees of freedom (half-width nan for one value). Paired data: the per-seed differences."""
    n, mean = len(values), sum(values) / len(values)
    if n < 2:
        return mean, math.nan
    sd, df = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1)), n - 1
    t975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
            2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
            2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # 0.975 quantiles, df = 1..30
    if df > 30:  # Cornish-Fisher expansion around the normal quantile; error < 1e-5
        z = 1.959964
        t = z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2) \
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3)
        return mean, t * sd / math.sqrt(n)
    return mean, t975[df - 1] * sd / math.sqrt(n)


# ---- report --plot-dir: a swept flag on the x axis -----------------------------------------------

def sweep_figures(rows, probe):
    """{file name: Figure} of summarize's rows: where m varies, Var[s_neg], linear accuracy and
    the gains over lam = 0 of both probes, a thin line per seed, against m; where tau varies,
    both arms' linear accuracy (n seeds at each point), the gains and the drop of Var[s_neg]
    from lam = 0 against tau. A line per (loss, lam, other flags), bars: 95 % t intervals (none
    of one seed); `probe` names the linear probe on the axes."""
    from matplotlib.figure import Figure  # here: only a report with --plot-dir needs matplotlib
    acc = ("linear", f"linear probe top-1 (%), {probe}")
    figures = [  # (x, file, x label, (quantity, y label) of each panel; "/seed": a line each)
        ("batch_size", "sweep_batch_size.png", "batch size m",
         [("neg_var", "Var[s_neg] (Table 1 protocol)"), acc,
          ("gain_linear/seed", f"linear gain over λ = 0 (points), {probe}"),
          ("gain_knn/seed", "kNN gain over λ = 0 (points)")]),
        ("temperature", "sweep_gain_vs_tau.png", "temperature τ",
         [acc, ("gain_linear", f"linear gain over λ = 0 (points), {probe}"),
          ("gain_knn", "kNN gain over λ = 0 (points)"),
          ("var_drop", "Var[s_neg] drop from λ = 0 (%)")])]
    drawn = {}
    for x, name, xlabel, panels in figures:
        ticks = sorted({r["flags"][x] for r in rows})  # the swept values
        if len(ticks) < 2:
            continue
        others = [k for k in varying(rows, but=("loss",)) if k != x]
        lines = {}  # label -> its rows, in order of x
        for r in sorted(rows, key=lambda r: r["flags"][x]):
            label = ", ".join(filter(None, [r["flags"]["loss"], f"λ = {r['lam']:g}",
                                            named(r["flags"], others)]))
            lines.setdefault(label, []).append(r)
        fig = Figure(figsize=(4.5 * len(panels), 3.8), layout="constrained")
        for ax, (key, ylabel) in zip(fig.subplots(1, len(panels)), panels):
            key, per_seed = key.removesuffix("/seed"), key.endswith("/seed")
            for i, (label, line) in enumerate(sorted(lines.items())):
                line = [r for r in line if r.get(key)]  # lam = 0 has no gains
                for s in sorted({s for r in line for s in r["paired"]}) if per_seed else ():
                    ax.plot(*zip(*[(r["flags"][x], r[key][r["paired"].index(s)]) for r in line
                                   if s in r["paired"]]), lw=0.8, marker=".",
                            label=f"{label}, seed {s}")  # one seed across the x values
                if not line or per_seed:
                    continue
                mean, half = zip(*(t_interval(r[key]) for r in line))
                ax.errorbar([r["flags"][x] for r in line], mean, yerr=half, marker="o",
                            capsize=3, color=f"C{i}", label=label)  # half-width nan: no bar
                if key == "linear":  # the seeds behind each point
                    for r, y in zip(line, mean):
                        ax.annotate(f"n={len(r[key])}", (r["flags"][x], y), fontsize=7,
                                    xytext=(3, 5 if i % 2 else -11), color=f"C{i}",
                                    textcoords="offset points")  # two arms: one below, one above
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [f"{v:g}" for v in ticks])  # not powers of 2
            ax.set(xlabel=xlabel, ylabel=ylabel + ", per seed" * per_seed)
            ax.grid(alpha=0.3)
            if key.startswith("gain"):
                ax.axhline(0, color="0.3", lw=0.6)  # no gain
            if per_seed or ax is fig.axes[0]:
                ax.legend(fontsize=7)
        drawn[name] = fig
    return drawn


# ---- Plumbing (skip on a first reading): run, and report ----------------------------------

def run_name(loss, m, tau, lam, seed):
    """Every swept value is in the name; tau only when the sweep sets it."""
    return f"{loss}-m{m}" + (f"-t{tau:g}" if tau is not None else "") + f"-lam{lam:g}-s{seed}"


def launch(out, job, extra):
    """One train.py run in a subprocess -> (name, status, seconds): skipped, resumed or refused."""
    loss, m, tau, lam, seed = job
    name = run_name(*job)
    run_dir = os.path.join(out, name)
    flags = ["--loss", loss, "--batch-size", str(m), "--vrns-weight", repr(lam), "--seed",
             str(seed), "--threads", "1", *extra]  # repr: the exact float, not 6 digits
    flags += ["--temperature", repr(tau)] if tau is not None else []
    cmd = [*flags, "--out-dir", run_dir]
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        if not os.path.isfile(os.path.join(run_dir, "args.json")):
            return name, f"refused: {run_dir} holds files but no args.json; pick another --out", 0
        with open(os.path.join(run_dir, "args.json")) as f:
            saved = json.load(f)
        parser = train.get_parser()
        wanted = vars(parser.parse_args(flags))  # a flag older runs lack must be at its default
        differ = [f"--{k.replace('_', '-')} {wanted[k]} (the run: {saved.get(k, 'absent')})"
                  for k in sorted(wanted) if k not in NOT_RESULTS
                  and saved.get(k, parser.get_default(k)) != wanted[k]]
        if differ:
            return name, (f"refused: {run_dir} holds a run with other flags: {'; '.join(differ)}"
                          ". Pick another --out (nothing was overwritten)"), 0
        if os.path.exists(os.path.join(run_dir, "summary.json")):
            return name, "done before", 0
        if os.path.exists(os.path.join(run_dir, "ckpt.pt")):  # else train.py starts it again
            cmd = ["--resume", run_dir]  # from its last epoch boundary, with its own flags
    start = time.time()
    with open(os.path.join(out, name + ".log"), "a") as log:
        status = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *cmd],
                                stdout=log, stderr=subprocess.STDOUT).returncode
    return name, "ok" if status == 0 else f"exit {status}", time.time() - start


def monitor_curve(records):
    """[(epoch, kNN top-1 %)] of metrics.jsonl's records where the accuracy monitor ran."""
    return [(r["epoch"], r["monitor"]["knn_acc"]) for r in records if "monitor" in r]


# --probe: summary.json's key of the linear probe's accuracy, and what the report says of it
PROBES = {"sgd": ("linear_acc", "the paper's protocol, SGD for --probe-epochs"),
          "lbfgs": ("linear_lbfgs_acc", "fitted to convergence by L-BFGS")}


def collect(*folders, probe="sgd"):
    """Every FOLDER/*/summary.json and FOLDER/*/*/summary.json of the folders -> {group: {lam:
    {seed: run}}}, a group the (flag, value) of every result-changing flag but seed and lam: runs
    of several folders share a row only when all those flags agree. A number a run predates
    comes from RUN/eval.json (`python eval.py --ckpt RUN`), else is None. plateau: the change of
    the kNN monitor over the last 20 % of epochs (points), None without two monitor records; a
    large value says the run was still learning, a small one not that it converged (a cosine
    schedule flattens every curve at its end: only a run of twice the epochs shows that)."""
    groups = {}
    paths = [path for folder in folders for pattern in ("*/summary.json", "*/*/summary.json")
             for path in glob.glob(os.path.join(folder, pattern))]
    for path in sorted(paths):
        run_dir = os.path.dirname(path)
        with open(path) as f:
            s = json.load(f)
        later = {"table1_stats": {}}
        if os.path.isfile(os.path.join(run_dir, "eval.json")):
            with open(os.path.join(run_dir, "eval.json")) as f:
                later = json.load(f)
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            knn = monitor_curve([json.loads(line) for line in f if line.strip()])  # [(epoch, %)]
        before = [acc for epoch, acc in knn[:-1] if epoch <= 0.8 * knn[-1][0]]
        stats, probed = s["table1_stats"], PROBES[probe][0]
        run = {"dir": run_dir, "linear": s.get(probed, later.get(probed)), "knn": s["knn_acc"],
               "diff_var": stats.get("neg_diff_var", later["table1_stats"].get("neg_diff_var")),
               **{k: stats[k] for k in ("pos_mean", "neg_mean", "neg_var")},
               "wall": s["total_wall_s"], "commit": s.get("commit", "not recorded"),
               "plateau": knn[-1][1] - before[-1] if before else None}
        a = s["args"]
        key = tuple(sorted((k, v) for k, v in a.items()
                           if k not in NOT_RESULTS | {"seed", "vrns_weight"}))
        by_seed = groups.setdefault(key, {}).setdefault(a["vrns_weight"], {})
        if a["seed"] in by_seed:
            print(f"warning: {run_dir} left out: same flags as {by_seed[a['seed']]['dir']}")
            continue
        by_seed[a["seed"]] = run
    return groups


def summarize(groups):
    """One row per (group, lam): the per-seed values, and for lam > 0 the per-seed differences
    from lam = 0 on the seeds both have (paired by seed; those seeds: "paired")."""
    rows = []
    order = sorted(groups, key=lambda g: [dict(g).get(k) or 0 for k in (
        "loss", "batch_size", "temperature", "epochs")] + [repr(g)])  # absent: 0
    for key in order:
        base = groups[key].get(0.0, {})
        for lam, runs in sorted(groups[key].items()):
            seeds = sorted(runs)
            row = {"flags": dict(key), "lam": lam, "seeds": seeds,
                   **{k: [runs[s][k] for s in seeds if runs[s][k] is not None] for k in STATS}}
            if lam > 0:
                both = [s for s in seeds if s in base]
                row.update(paired=both, **{f"gain_{k}": [runs[s][k] - base[s][k] for s in both]
                                           for k in ("linear", "knn")})
                row["var_drop"] = [100 * (base[s]["neg_var"] - runs[s]["neg_var"])
                                   / base[s]["neg_var"] for s in both]
            rows.append(row)
    return rows


def contrast(groups, m1, m2, epochs=None):
    """gain(m1) - gain(m2) per (group without m, lam > 0): per seed that has lam = 0 and lam at
    both m, (acc(m1, lam) - acc(m1, 0)) - (acc(m2, lam) - acc(m2, 0)). epochs = (e1, e2) pairs
    m1 trained for e1 epochs with m2 trained for e2 (two arms brought to equal accuracy)."""
    first, second = ({"batch_size": m, **({"epochs": e} if e else {})}
                     for m, e in zip((m1, m2), epochs or (None, None)))
    rows = []
    for key in sorted(groups, key=repr):
        flags = dict(key)
        one, two = groups[key], groups.get(tuple(sorted({**flags, **second}.items())))
        if not (first.items() <= flags.items() and two and 0.0 in one and 0.0 in two):
            continue
        for lam in sorted(set(one) & set(two) - {0.0}):
            seeds = sorted(set(one[lam]) & set(one[0.0]) & set(two[lam]) & set(two[0.0]))
            diff = {k: [(one[lam][s][k] - one[0.0][s][k]) - (two[lam][s][k] - two[0.0][s][k])
                        for s in seeds] for k in ("linear", "knn")}
            if seeds:
                rows.append({"flags": flags, "lam": lam, "seeds": seeds, **diff})
    return rows


def varying(rows, but=()):
    """Flags whose value differs between the rows' groups, except those in `but`."""
    keys = {k for r in rows for k in r["flags"]} - set(but)
    return sorted(k for k in keys if len({repr(r["flags"].get(k)) for r in rows}) > 1)


def named(flags, keys):
    """"epochs=10, lr=0.001": the values of `keys` in a group's flags."""
    return ", ".join(f"{k}={flags.get(k)}" for k in keys)


def cell(values, fmt, interval=False):
    """"mean ± std", or "mean ± 95 % half-width (n=pairs)"; no ± for a single value."""
    if not values:
        return "-"
    mean, spread = t_interval(values) if interval else mean_std(values)
    pm = f" ± {spread:{fmt.lstrip('+')}}" if len(values) > 1 else ""
    return f"{mean:{fmt}}{pm}" + (f" (n={len(values)})" if interval else "")


def table(head, lines):
    """Lists of cells -> a markdown table."""
    return "\n".join("| " + " | ".join(map(str, line)) + " |"
                     for line in [head, ["---"] * len(head), *lines])


def markdown(rows, other):
    """The report: one line per (group, lam); `other` = the flags besides loss, m and tau
    that differ between groups, shown in a last column."""
    head = ["loss", "m", "τ", "λ", "seeds (n)", "linear %", "kNN %", "linear gain, 95 % CI",
            "kNN gain, 95 % CI", "E[s_pos]", "E[s_neg]", "Var[s_neg]",
            "Var[s_neg], different-class pairs", "Var drop %, 95 % CI",
            "kNN change, last 20 % of epochs", "wall s"] + ["other flags"] * bool(other)
    return table(head, [
        [r["flags"]["loss"], r["flags"]["batch_size"], r["flags"].get("temperature"),
         f"{r['lam']:g}", f"{','.join(map(str, r['seeds']))} ({len(r['seeds'])})",
         cell(r["linear"], ".1f"), cell(r["knn"], ".1f"),
         cell(r.get("gain_linear", []), "+.1f", True), cell(r.get("gain_knn", []), "+.1f", True),
         f"{mean_std(r['pos_mean'])[0]:.3f}", f"{mean_std(r['neg_mean'])[0]:.4f}",
         cell(r["neg_var"], ".4f"), cell(r["diff_var"], ".4f"),
         cell(r.get("var_drop", []), "+.0f", True),
         cell(r["plateau"], "+.1f"), f"{mean_std(r['wall'])[0]:.0f}"]
        + [named(r["flags"], other)] * bool(other) for r in rows])


def contrast_markdown(rows, m1, m2, epochs=None):
    """The contrast: one line per (group without m, lam > 0)."""
    other = varying(rows, but=("loss", "temperature"))
    one, two = (f"m={m}" + (f", {e} epochs" if e else "") for m, e in zip((m1, m2),
                                                                       epochs or (0, 0)))
    head = ["loss", "τ", "λ", "seeds", f"linear gain({one}) - gain({two}), 95 % CI",
            "same, kNN"] + ["other flags"] * bool(other)
    return table(head, [[r["flags"]["loss"], r["flags"].get("temperature"), f"{r['lam']:g}",
                         ",".join(map(str, r["seeds"])), cell(r["linear"], "+.1f", True),
                         cell(r["knn"], "+.1f", True)] + [named(r["flags"], other)] * bool(other)
                        for r in rows])


def provenance(groups, rows):
    """The commits, a warning per group whose runs mix commits, and the flags every run
    shares where they are not train.py's defaults."""
    other = varying(rows)
    defaults = vars(train.get_parser().parse_args([]))  # a flag train.py lost goes unnamed
    commits = {g: {r["commit"] for runs in by_lam.values() for r in runs.values()}
               for g, by_lam in groups.items()}
    lines = [f"code: commit(s) {', '.join(sorted(set().union(*commits.values())))}"]
    lines += [f"warning: the runs of {named(dict(g), sorted({'loss', 'batch_size', *other}))} come "
              f"from several commits (a change of code between them?): "
              f"{', '.join(sorted(c))}" for g, c in commits.items() if len(c) > 1]
    shared = {k: v for k, v in rows[0]["flags"].items() if k in defaults and k not in other
              and k not in SWEPT and v != defaults[k]}
    return "\n".join(lines + ["every run: " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in sorted(shared.items()))])


def report(args, error):
    """`sweep.py report`: provenance and tables (stdout), figures (--plot-dir)."""
    groups = collect(*args.folder, probe=args.probe)
    if not groups:
        error(f"no FOLDER/*/summary.json or FOLDER/*/*/summary.json in {' '.join(args.folder)}")
    unprobed = [run["dir"] for by_lam in groups.values() for runs in by_lam.values()
                for run in runs.values() if run["linear"] is None]
    if unprobed:
        error(f"{len(unprobed)} run(s) have no {PROBES[args.probe][0]} (they predate that probe): "
              f"python eval.py --ckpt RUN adds it, for RUN in {' '.join(unprobed)}")
    rows = summarize(groups)
    text = provenance(groups, rows) + f"\nlinear probe: {PROBES[args.probe][1]}\n\n" + markdown(
        rows, varying(rows, but=("loss", "batch_size", "temperature")))
    if args.contrast:
        found = contrast(groups, *args.contrast, args.contrast_epochs)
        text += "\n\n" + (contrast_markdown(found, *args.contrast, args.contrast_epochs)
                          if found else f"contrast: no group has λ = 0 and a λ > 0 at both m = "
                          f"{args.contrast[0]} and m = {args.contrast[1]} on a shared seed")
    print(text)
    if args.plot_dir:
        os.makedirs(args.plot_dir, exist_ok=True)
        for name, fig in sweep_figures(rows, args.probe).items():
            fig.savefig(os.path.join(args.plot_dir, name), dpi=110)
            print(f"figure: {os.path.join(args.plot_dir, name)}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train every (loss, m, tau, lam, seed) not finished yet")
    r.add_argument("--out", required=True, help="folder of the sweep's run directories: "
                   "experiments/results/NAME to commit the JSON, runs/NAME for scratch")
    r.add_argument("--losses", nargs="+", default=["simclr"], choices=list(train.LOSSES),
                   help="train.py --loss values")
    r.add_argument("--batch-sizes", type=train.checked(int, lambda x: x >= 2, ">= 2"), nargs="+",
                   default=[16, 32, 64, 128, 256], help="train.py --batch-size values m")
    r.add_argument("--temperatures", type=train.POSITIVE, nargs="+", default=None,
                   help="train.py --temperature values tau (default: train.py's)")
    r.add_argument("--lams", type=train.NON_NEGATIVE, nargs="+", default=[0.0, 1.0],
                   help="train.py --vrns-weight values; include 0, the baseline of the gains")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="4 or more give usable confidence intervals (t = 3.18 at 3 degrees)")
    r.add_argument("--parallel", type=train.COUNT, default=os.cpu_count() or 1,
                   help="runs at once, one CPU thread each (default: one per core)")
    q = sub.add_parser("report", help="tables and figures of a sweep's finished runs")
    q.add_argument("folder", nargs="+", type=train.checked(str, os.path.isdir, "a folder"),
                   help="a folder of run directories, or of sweep folders of them; several are "
                   "reported together (the same runs at two lengths, say)")
    q.add_argument("--contrast", type=int, nargs=2, metavar=("M1", "M2"), help="also print "
                   "gain(M1) - gain(M2) paired by seed, e.g. 16 256 (the paper: larger at small m)")
    q.add_argument("--contrast-epochs", type=train.COUNT, nargs=2, metavar=("E1", "E2"),
                   help="M1 trained for E1 epochs against M2 for E2, e.g. 480 240 (default: equal)")
    q.add_argument("--plot-dir", help="also draw the figures into this folder (default: none)")
    q.add_argument("--probe", choices=list(PROBES), default="sgd", help="the linear probe the "
                   "tables show: " + "; or ".join(f"{k}, {d}" for k, (_, d) in PROBES.items()))
    args = p.parse_args(argv)
    if args.command == "report":
        if args.contrast_epochs and not args.contrast:
            p.error("--contrast-epochs needs --contrast M1 M2")
        return report(args, p.error)

    train_parser, unset = train.get_parser(), object()  # which flags extra names, at any value
    blank = argparse.Namespace(**dict.fromkeys(vars(train_parser.parse_args([])), unset))
    given = [k for k, v in vars(train_parser.parse_args(extra, namespace=blank)).items()
             if v is not unset]
    taken = sorted(k for k in given if k in {"threads", "out_dir", "resume"}
                   or k in SWEPT and (k != "temperature" or args.temperatures))
    if taken:
        p.error("after --, sweep.py sets these itself: " + ", ".join(
            f"--{k.replace('_', '-')}" + (f" (use {SWEPT[k]})" if k in SWEPT else "")
            for k in taken))
    jobs = [(loss, m, tau, lam, s) for s in args.seeds for loss in args.losses
            for tau in args.temperatures or [None] for lam in args.lams for m in args.batch_sizes]
    if len({run_name(*job) for job in jobs}) < len(jobs):
        p.error("two runs would share a folder: repeated values (or ones equal to 6 digits)")
    os.makedirs(args.out, exist_ok=True)
    start, failed, refused = time.time(), 0, 0
    with ThreadPoolExecutor(args.parallel) as pool:
        for name, status, seconds in pool.map(lambda job: launch(args.out, job, extra), jobs):
            failed += status.startswith("exit")
            refused += status.startswith("refused")
            print(f"{name}: {status} ({seconds:.0f} s; {time.time() - start:.0f} s in all)",
                  flush=True)
    print(f"{len(jobs)} runs, {failed} failed, {refused} refused; "
          f"python -m experiments.sweep report {args.out}")
    return 1 if failed or refused else 0


if __name__ == "__main__":
    sys.exit(main())
