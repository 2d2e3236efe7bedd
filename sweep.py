"""Sweeps of train.py over loss, batch size, temperature, lam and seed; their table with gains
paired by seed and 95 % confidence intervals, and figures (the paper's Table 1 and Fig. 4).

    python sweep.py run --out results/batch-size --batch-sizes 16 64 256 --lams 0 3 \\
        --seeds 0 1 2 3 -- --epochs 30 --temperature 0.2       # 24 runs, one per core at once
    python sweep.py report results/batch-size --contrast 16 256  # table, gain(16) - gain(256)
    python sweep.py run --out runs/tau --batch-sizes 32 --temperatures 0.1 0.2 0.5 --lams 0 3 \\
        -- --epochs 10                                           # + a figure of gain against tau
    python sweep.py report runs/tau --markdown runs/tau/report.md --plot-dir figures

`run` starts one train.py per (loss, m, tau, lam, seed), one CPU thread each, --parallel at a
time, into OUT/<loss>-m<m>[-t<tau>]-lam<lam>-s<seed>/, with the flags after `--`. A directory
whose args.json has every result-changing flag of this command (train.py's defaults included)
is skipped when finished and resumed when interrupted, so the same command continues after
Ctrl-C; one with other flags is refused, untouched (exit status 1). In results/<sweep>/ git
keeps args.json, metrics.jsonl and summary.json, not checkpoints and logs.

`report` reads FOLDER/*/summary.json and FOLDER/*/*/summary.json of one or more folders, groups
runs by every result-changing flag but seed and lam (so a pilot at 60 and at 120 epochs, given
as two folders, makes the two rows of a convergence check), and prints per (group, lam) mean ±
std over seeds and, for lam > 0, the gains over lam = 0 paired by seed with 95 % t intervals.
`--contrast M1 M2`: gain(M1) - gain(M2) paired by seed; the paper finds the gain of L_VRNS
larger at small m. `--batch-sizes M ...` keeps only the runs at those m. `--plot-dir DIR`
also draws figures into DIR: when m varies, Var[s_neg] and linear accuracy against m; when tau
varies, the gains and the relative drop of Var[s_neg] against tau. Without it nothing is
written beside the runs.

Shape legend: m = pairs per batch, n = training-set size, tau = temperature, lam = weight of
L_VRNS (Def. 5.7).
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

import eval as evaluation
import train

ROOT = os.path.dirname(os.path.abspath(__file__))
# flags that leave the numbers of a run unchanged; --probe-epochs may differ on resume, but it
# changes the linear-probe accuracy, so it counts here
NOT_RESULTS = (train.RESUME_FREE - {"probe_epochs"}) | {"download"}
SWEPT = {"loss": "--losses", "batch_size": "--batch-sizes", "temperature": "--temperatures",
         "vrns_weight": "--lams", "seed": "--seeds"}
STATS = ("linear", "knn", "pos_mean", "neg_mean", "neg_var", "wall")


# ---- statistics: pure, each pastes alone ----------------------------------------------------

def mean_std(values):
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))


def t_interval(values):
    """(mean, half-width) of the 95 % confidence interval of the mean from Student's t with
    n - 1 degrees of freedom; the half-width is nan for a single value. For paired data pass
    the per-seed differences."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
    df = n - 1
    t975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
            2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
            2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # 0.975 quantiles, df = 1..30
    if df <= 30:
        t = t975[df - 1]
    else:  # Cornish-Fisher expansion around the normal quantile; error < 1e-5 for df > 30
        z = 1.959964
        t = z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2) \
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3)
    return mean, t * sd / math.sqrt(n)


# ---- run ------------------------------------------------------------------------------------

def run_name(loss, m, tau, lam, seed):
    """Every swept value is in the name; tau only when the sweep sets it."""
    return f"{loss}-m{m}" + (f"-t{tau:g}" if tau is not None else "") + f"-lam{lam:g}-s{seed}"


def given_flags(argv):
    """The train.py flags that argv names, typed by train.py's parser: {"epochs": 10, ...}."""
    parser, unset = train.get_parser(), object()
    blank = argparse.Namespace(**{k: unset for k in vars(parser.parse_args([]))})
    return {k: v for k, v in vars(parser.parse_args(argv, namespace=blank)).items()
            if v is not unset}


def differing_flags(flags, saved):
    """Result-changing train.py flags whose value in the argv `flags` (defaults included)
    differs from a run's args.json `saved`; a flag older runs lack must be at its default."""
    parser = train.get_parser()
    wanted = vars(parser.parse_args(flags))
    return [f"--{k.replace('_', '-')} {wanted[k]} (the run: {saved.get(k, 'absent')})"
            for k in sorted(wanted) if k not in NOT_RESULTS
            and saved.get(k, parser.get_default(k)) != wanted[k]]


def launch(out, job, extra):
    """One train.py run in a subprocess -> (name, status, seconds). A run directory with the
    same flags is skipped when finished and resumed when interrupted; other flags: refused."""
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
            differ = differing_flags(flags, json.load(f))
        if differ:
            return name, (f"refused: {run_dir} holds a run with other flags: {'; '.join(differ)}"
                          ". Pick another --out (nothing was overwritten)"), 0
        if os.path.exists(os.path.join(run_dir, "summary.json")):
            return name, "done before", 0
        has_ckpt = os.path.exists(os.path.join(run_dir, "ckpt.pt"))
        cmd = ["--resume", run_dir] if has_ckpt else [*cmd, "--overwrite"]  # same flags
    start = time.time()
    with open(os.path.join(out, name + ".log"), "a") as log:
        status = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *cmd],
                                stdout=log, stderr=subprocess.STDOUT).returncode
    return name, "ok" if status == 0 else f"exit {status}", time.time() - start


# ---- report ---------------------------------------------------------------------------------

def knn_plateau(metrics_path):
    """Change of the per-epoch kNN monitor (percentage points) over the last 20 % of epochs;
    None when metrics.jsonl has no two monitor records. A large value says the run was still
    learning; a small one does not say it converged, as a cosine schedule flattens every curve
    at its end: only a run of twice the epochs shows that."""
    if not os.path.isfile(metrics_path):
        return None
    with open(metrics_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    knn = evaluation.monitor_curve(records)
    before = [acc for epoch, acc in knn[:-1] if epoch <= 0.8 * knn[-1][0]]
    return knn[-1][1] - before[-1] if before else None


def evaluated(run_dir, summary, key, stats=False):
    """summary.json's `key` (of its table1_stats if stats), or, for a run evaluated again by
    `python eval.py --ckpt RUN` after train.py gained that number, RUN/eval.json's; or None."""
    found = (summary["table1_stats"] if stats else summary).get(key)
    if found is None and os.path.isfile(os.path.join(run_dir, "eval.json")):
        with open(os.path.join(run_dir, "eval.json")) as f:
            again = json.load(f)
        found = (again["table1_stats"] if stats else again).get(key)
    return found


# the linear probe a report reads: the paper's SGD protocol, or the fit to convergence
PROBES = {"sgd": "linear_acc", "lbfgs": "linear_lbfgs_acc"}


def read_run(run_dir, probe="sgd"):
    """A finished run directory -> its flags and the figures a sweep compares (linear: None when
    the run has no accuracy of that probe)."""
    with open(os.path.join(run_dir, "summary.json")) as f:
        s = json.load(f)
    return {"dir": run_dir, "args": s["args"], "linear": evaluated(run_dir, s, PROBES[probe]),
            "knn": s["knn_acc"],
            **{k: s["table1_stats"][k] for k in ("pos_mean", "neg_mean", "neg_var")},
            "diff_var": evaluated(run_dir, s, "neg_diff_var", stats=True),
            "wall": s["total_wall_s"], "commit": s.get("commit", "not recorded"),
            "plateau": knn_plateau(os.path.join(run_dir, "metrics.jsonl"))}


def collect(*folders, probe="sgd"):
    """Every FOLDER/*/summary.json and FOLDER/*/*/summary.json of the folders -> {group: {lam:
    {seed: run}}}; a group is the tuple of (flag, value) of every result-changing flag but seed
    and lam, so runs of several folders share a row only when all those flags agree."""
    groups = {}
    paths = [path for folder in folders for pattern in ("*/summary.json", "*/*/summary.json")
             for path in glob.glob(os.path.join(folder, pattern))]
    for path in sorted(paths):
        run = read_run(os.path.dirname(path), probe)
        a = run["args"]
        key = tuple(sorted((k, v) for k, v in a.items()
                           if k not in NOT_RESULTS | {"seed", "vrns_weight"}))
        by_seed = groups.setdefault(key, {}).setdefault(a["vrns_weight"], {})
        if a["seed"] in by_seed:
            print(f"warning: {run['dir']} left out: same flags as {by_seed[a['seed']]['dir']}")
            continue
        by_seed[a["seed"]] = run
    return groups


def summarize(groups):
    """One row per (group, lam): the per-seed values, and for lam > 0 the per-seed differences
    from lam = 0 on the seeds both have (paired by seed)."""
    rows = []
    order = sorted(groups, key=lambda g: (dict(g)["loss"], dict(g)["batch_size"],
                                          dict(g).get("temperature") or 0,
                                          dict(g).get("epochs") or 0, repr(g)))
    for key in order:
        base = groups[key].get(0.0, {})
        for lam, runs in sorted(groups[key].items()):
            seeds = sorted(runs)
            row = {"flags": dict(key), "lam": lam, "seeds": seeds,
                   **{k: [runs[s][k] for s in seeds] for k in STATS},
                   **{k: [runs[s][k] for s in seeds if runs[s][k] is not None]  # may be absent
                      for k in ("plateau", "diff_var")}}
            if lam > 0:
                both = [s for s in seeds if s in base]
                row.update({f"gain_{k}": [runs[s][k] - base[s][k] for s in both]
                            for k in ("linear", "knn")})
                row["var_drop"] = [100 * (base[s]["neg_var"] - runs[s]["neg_var"])
                                   / base[s]["neg_var"] for s in both]
            rows.append(row)
    return rows


def contrast(groups, m1, m2):
    """gain(m1) - gain(m2) per (group without m, lam > 0): per seed that has lam = 0 and lam at
    both m, (acc(m1, lam) - acc(m1, 0)) - (acc(m2, lam) - acc(m2, 0))."""
    rows = []
    for key in sorted(groups, key=repr):
        flags = dict(key)
        one, two = groups[key], groups.get(tuple(sorted({**flags, "batch_size": m2}.items())))
        if flags["batch_size"] != m1 or not two or 0.0 not in one or 0.0 not in two:
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


def contrast_markdown(rows, m1, m2):
    """The contrast: one line per (group without m, lam > 0)."""
    other = varying(rows, but=("loss", "temperature"))
    head = ["loss", "τ", "λ", "seeds", f"linear gain(m={m1}) - gain(m={m2}), 95 % CI",
            "same, kNN"] + ["other flags"] * bool(other)
    return table(head, [[r["flags"]["loss"], r["flags"].get("temperature"), f"{r['lam']:g}",
                         ",".join(map(str, r["seeds"])), cell(r["linear"], "+.1f", True),
                         cell(r["knn"], "+.1f", True)] + [named(r["flags"], other)] * bool(other)
                        for r in rows])


def provenance(groups, rows):
    """The commits, a warning per group whose runs mix commits, and the flags every run
    shares where they are not train.py's defaults."""
    parser, other = train.get_parser(), varying(rows)
    commits = {g: {r["commit"] for runs in by_lam.values() for r in runs.values()}
               for g, by_lam in groups.items()}
    lines = [f"code: commit(s) {', '.join(sorted(set().union(*commits.values())))}"]
    lines += [f"warning: the runs of {named(dict(g), sorted({'loss', 'batch_size', *other}))} come "
              f"from several commits (a change of code between them?): "
              f"{', '.join(sorted(c))}" for g, c in commits.items() if len(c) > 1]
    shared = {k: v for k, v in rows[0]["flags"].items() if k not in other and k not in SWEPT
              and v != parser.get_default(k)}
    return "\n".join(lines + ["every run: " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in sorted(shared.items()))])


def plot(rows, plot_dir, probe="sgd"):
    """With several m, sweep_batch_size.png: Var[s_neg] and linear accuracy against m, one line
    per (loss, lam, other flags); with several tau, sweep_gain_vs_tau.png: the linear and kNN
    gains and the relative drop of Var[s_neg] against tau. Bars: 95 % t intervals; `probe`
    names the linear probe on the axes. Drawn by figures.py, imported here only (and with it
    matplotlib)."""
    import figures

    os.makedirs(plot_dir, exist_ok=True)
    plots = []
    if len({r["flags"]["batch_size"] for r in rows}) > 1:
        plots.append(("batch_size", ("neg_var", "linear"), "batch size m",
                      ("Var[s_neg] (Table 1 protocol)", f"linear probe top-1 (%), {probe}"),
                      "sweep_batch_size"))
    if len({r["flags"].get("temperature") for r in rows}) > 1:
        plots.append(("temperature", ("gain_linear", "gain_knn", "var_drop"), "temperature τ",
                      (f"linear gain over λ = 0 (points), {probe}",
                       "kNN gain over λ = 0 (points)", "Var[s_neg] drop from λ = 0 (%)"),
                      "sweep_gain_vs_tau"))
    paths = []
    for x, keys, xlabel, ylabels, name in plots:
        others = [k for k in varying(rows, but=("loss",)) if k != x]
        lines = {}  # label -> [(x, (mean, half-width) of each key)], in order of x
        for r in sorted((r for r in rows if r.get(keys[0])), key=lambda r: r["flags"][x]):
            label = ", ".join(filter(None, [r["flags"]["loss"], f"λ = {r['lam']:g}",
                                            named(r["flags"], others)]))
            point = (r["flags"][x], *(t_interval(r[k]) for k in keys))
            lines.setdefault(label, []).append(point)
        ticks = sorted({r["flags"][x] for r in rows})
        paths.append(os.path.join(plot_dir, name + ".png"))
        figures.sweep(lines, ticks, xlabel, ylabels).savefig(paths[-1], dpi=110)
    return paths


def report(args, error):
    """`sweep.py report`: provenance, tables (stdout and --markdown), figures."""
    for folder in args.folder:
        if not os.path.isdir(folder):
            error(f"{folder} is not a folder of runs")
    groups = {g: by_lam for g, by_lam in collect(*args.folder, probe=args.probe).items()
              if not args.batch_sizes or dict(g)["batch_size"] in args.batch_sizes}
    if not groups:
        error(f"no FOLDER/*/summary.json or FOLDER/*/*/summary.json in {' '.join(args.folder)}"
              + (f" with m in {args.batch_sizes}" if args.batch_sizes else ""))
    unprobed = [run["dir"] for by_lam in groups.values() for runs in by_lam.values()
                for run in runs.values() if run["linear"] is None]
    if unprobed:
        error(f"{len(unprobed)} run(s) have no {PROBES[args.probe]} (they predate that probe): "
              f"python eval.py --ckpt RUN adds it, for RUN in {' '.join(unprobed)}")
    rows = summarize(groups)
    probe = {"sgd": "the paper's protocol, SGD for --probe-epochs",
             "lbfgs": "fitted to convergence by L-BFGS"}[args.probe]
    text = provenance(groups, rows) + f"\nlinear probe: {probe}\n\n" + markdown(
        rows, varying(rows, but=("loss", "batch_size", "temperature")))
    if args.contrast:
        found = contrast(groups, *args.contrast)
        text += "\n\n" + (contrast_markdown(found, *args.contrast) if found else
                          f"contrast: no group has λ = 0 and a λ > 0 at both m = "
                          f"{args.contrast[0]} and m = {args.contrast[1]} on a shared seed")
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.plot_dir:
        for path in plot(rows, args.plot_dir, args.probe):
            print(f"figure: {path}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train every (loss, m, tau, lam, seed) not finished yet")
    r.add_argument("--out", required=True, help="folder of the sweep's run directories: "
                   "results/<name> to commit the JSON, runs/<name> for scratch (ignored by git)")
    r.add_argument("--losses", nargs="+", default=["simclr"], choices=list(train.LOSSES),
                   help="train.py --loss values")
    r.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                   help="train.py --batch-size values m")
    r.add_argument("--temperatures", type=float, nargs="+", default=None,
                   help="train.py --temperature values tau (default: train.py's)")
    r.add_argument("--lams", type=float, nargs="+", default=[0.0, 1.0],
                   help="train.py --vrns-weight values; include 0, the baseline of the gains")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="4 or more give usable confidence intervals (t = 3.18 at 3 degrees)")
    r.add_argument("--parallel", type=int, default=os.cpu_count() or 1,
                   help="runs at once, one CPU thread each (default: one per core)")
    q = sub.add_parser("report", help="tables and figures of a sweep's finished runs")
    q.add_argument("folder", nargs="+", help="a folder of run directories, or of sweep folders "
                   "of them; several are reported together (the same runs at two lengths, say)")
    q.add_argument("--contrast", type=int, nargs=2, metavar=("M1", "M2"),
                   help="also print gain(M1) - gain(M2) paired by seed, e.g. 16 256")
    q.add_argument("--plot-dir", default=None,
                   help="also draw the figures into this folder (default: no figures)")
    q.add_argument("--batch-sizes", type=int, nargs="+", default=None, metavar="M",
                   help="report only the runs at these m (default: all), e.g. 256 to draw the "
                   "temperature figure of one m")
    q.add_argument("--markdown", default=None, help="also write the tables to this file")
    q.add_argument("--probe", choices=list(PROBES), default="sgd", help="the linear probe the "
                   "tables show: sgd, the paper's protocol (a fixed number of epochs), or "
                   "lbfgs, the same classifier fitted to convergence")
    args = p.parse_args(argv)
    if args.command == "report":
        return report(args, p.error)

    given = given_flags(extra)
    taken = sorted(k for k in given if k in {"threads", "out_dir", "resume", "overwrite"}
                   or k in SWEPT and (k != "temperature" or args.temperatures))
    if taken:
        p.error("after --, sweep.py sets these itself: " + ", ".join(
            f"--{k.replace('_', '-')}" + (f" (use {SWEPT[k]})" if k in SWEPT else "")
            for k in taken))
    if args.parallel < 1 or min(args.batch_sizes) < 2 or min(args.lams) < 0 or \
            min(args.temperatures or [1]) <= 0:
        p.error("need --parallel >= 1, batch sizes >= 2, lams >= 0 and temperatures > 0")
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
          f"python sweep.py report {args.out}")
    return 1 if failed or refused else 0


if __name__ == "__main__":
    sys.exit(main())
