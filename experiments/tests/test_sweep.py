"""sweep.py: the t interval, gains paired by seed, groups that never mix flags, the contrast,
refusing a folder of runs with other flags and bad values, what `run` launches for a finished, an
interrupted and a started run, the figures (skipped without matplotlib), and a tiny real sweep."""
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import paste_alone

import train
from experiments import sweep

TINY = ["--train-size", "128", "--test-size", "128", "--width", "4", "--epochs", "1",
        "--track-size", "32", "--monitor-size", "32", "--probe-epochs", "1", "--precision", "fp32"]


def fake_run(folder, *, m=32, lam=0.0, seed=0, linear=50.0, knn=40.0, var=0.2, flags=(),
             commit="abc1234", name=None, monitor=None):
    """A finished run as train.py leaves it (args.json, summary.json, metrics.jsonl), made of
    the flags sweep.py passes plus `flags`; `monitor` = per-epoch kNN accuracies."""
    args = vars(train.get_parser().parse_args(
        ["--batch-size", str(m), "--vrns-weight", repr(lam), "--seed", str(seed), "--threads",
         "1", *flags]))
    run_dir = folder / (name or f"run{len(list(folder.iterdir())) if folder.exists() else 0}")
    os.makedirs(run_dir)
    summary = {"args": args, "linear_acc": linear, "knn_acc": knn, "total_wall_s": 10.0,
               "table1_stats": {"pos_mean": 0.8, "neg_mean": 0.0, "neg_var": var}}
    if commit:
        summary["commit"] = commit
    (run_dir / "args.json").write_text(json.dumps(args))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e + 1, **({"monitor": {"knn_acc": acc}} if monitor else {})}) + "\n"
        for e, acc in enumerate(monitor or [0.0, 0.0])))
    return run_dir


def test_t_interval_against_hand_computed_values():
    t_interval = paste_alone(sweep.t_interval)  # needs nothing but math
    mean, half = t_interval([1.0, 2.0, 3.0])  # sd 1, n 3: t(0.975, df 2) = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    assert t_interval([0.0, 2.0])[1] == pytest.approx(12.706)  # sd sqrt(2), n 2
    values = [-1.0, 1.0] * 20 + [0.0]  # n 41, sd sqrt(40 / 40) = 1: t(0.975, df 40) = 2.0211
    assert t_interval(values)[1] == pytest.approx(2.0211 / math.sqrt(41), abs=1e-5)
    assert math.isnan(t_interval([5.0])[1])
    assert paste_alone(sweep.mean_std)([40.0, 50.0, 60.0]) == pytest.approx((50.0, 10.0))


def test_gains_are_paired_by_seed(tmp_path):
    for seed, (base, term, var) in enumerate([(40.0, 42.0, 0.10), (50.0, 53.0, 0.15),
                                              (60.0, 61.0, 0.05)]):
        fake_run(tmp_path, seed=seed, linear=base, knn=base, var=0.2)
        fake_run(tmp_path, lam=3.0, seed=seed, linear=term, knn=term - 1, var=var)
    fake_run(tmp_path, lam=3.0, seed=7, linear=99.0, var=0.1)  # no baseline: not in the gains
    fake_run(tmp_path, seed=8, linear=10.0)  # no lam = 3 run: not in the gains
    base, term = sweep.summarize(sweep.collect(tmp_path))
    assert base["seeds"] == [0, 1, 2, 8] and "gain_linear" not in base
    assert term["gain_linear"] == [2.0, 3.0, 1.0] and term["gain_knn"] == [1.0, 2.0, 0.0]
    assert term["var_drop"] == pytest.approx([50.0, 25.0, 75.0])
    table = sweep.markdown([base, term], [])
    half = 4.303 / math.sqrt(3)  # sd of (2, 3, 1) is 1
    assert f"+2.0 ± {half:.1f} (n=3)" in table and f"+50 ± {25 * half:.0f} (n=3)" in table


def test_groups_never_mix_temperature_epochs_or_probe(tmp_path):
    for flags, acc in [(["--temperature", "0.2"], 10.0), (["--temperature", "0.5"], 20.0),
                       (["--epochs", "10"], 30.0), (["--probe-epochs", "5"], 40.0)]:
        for seed in (0, 1):
            fake_run(tmp_path, seed=seed, linear=acc, flags=flags)
    fake_run(tmp_path, seed=2, linear=30.0, flags=["--epochs", "10", "--device", "cpu"])
    rows = sweep.summarize(sweep.collect(tmp_path))
    assert sorted(r["linear"] for r in rows) == [[10.0] * 2, [20.0] * 2, [30.0] * 3, [40.0] * 2]
    other = [k for k in sweep.varying(rows) if k not in ("loss", "batch_size", "temperature")]
    assert other == ["epochs", "probe_epochs"]  # --device changes no number: not a group
    assert "epochs=10, probe_epochs=200 |" in sweep.markdown(rows, other)


def test_a_folder_with_other_flags_is_refused_untouched(tmp_path, capsys):
    old = fake_run(tmp_path, flags=["--epochs", "10"], name=sweep.run_name("simclr", 32, None,
                                                                          0.0, 0))
    (old / "ckpt.pt").write_bytes(b"old checkpoint")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    argv = ["run", "--out", str(tmp_path), "--batch-sizes", "32", "--lams", "0", "--seeds",
            "0", "--"]
    assert sweep.main([*argv, "--epochs", "50"]) == 1
    out = capsys.readouterr().out
    assert "refused" in out and "--epochs 50 (the run: 10)" in out and "1 refused" in out
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == [old.name]  # not even a log
    assert sweep.main([*argv, "--epochs", "10", "--probe-epochs", "5"]) == 1
    assert "--probe-epochs 5 (the run: 200)" in capsys.readouterr().out
    assert sweep.main([*argv, "--epochs", "10", "--device", "cpu"]) == 0  # same numbers
    assert ": done before" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # sweep.py names the batch size itself
        sweep.main([*argv, "--batch-size", "64"])


@pytest.mark.parametrize("bad", [
    ["--batch-sizes", "1"], ["--lams", "-1"], ["--temperatures", "0"], ["--parallel", "0"],
    ["--", "--batch-size", "128"], ["--", "--batch", "64"], ["--", "--threads", "0"],
    ["--", "--out-dir", "x"], ["--temperatures", "0.5", "--", "--temperature", "0.2"]])
def test_run_refuses_bad_values_and_flags_it_sets_itself_before_it_starts(tmp_path, capsys,
                                                                          monkeypatch, bad):
    """Even at train.py's default (--batch-size 128, --threads 0) or abbreviated (--batch), a
    flag that sweep.py sets itself is refused: the run would not be the one its name says."""
    def launch(out, job, extra):  # a sweep that got this far would train for minutes
        raise AssertionError(f"launched {job} with {extra}")
    monkeypatch.setattr(sweep, "launch", launch)
    with pytest.raises(SystemExit):
        sweep.main(["run", "--out", str(tmp_path / "out"), *bad])
    assert "error:" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_launch_skips_finished_resumes_checkpointed_and_restarts_started_runs(tmp_path,
                                                                           monkeypatch):
    """What `run` hands train.py for a directory holding a run of the same flags: nothing once
    it has summary.json, --resume RUN when it has ckpt.pt, else the same command again."""
    calls = []
    monkeypatch.setattr(sweep, "subprocess", SimpleNamespace(
        STDOUT=subprocess.STDOUT,
        run=lambda cmd, **kw: calls.append(cmd[1:]) or SimpleNamespace(returncode=0)))
    job = ("simclr", 32, None, 0.0, 0)
    run_dir = fake_run(tmp_path, name=sweep.run_name(*job))
    assert sweep.launch(str(tmp_path), job, [])[1] == "done before" and not calls
    (run_dir / "summary.json").unlink()
    (run_dir / "ckpt.pt").write_bytes(b"a checkpoint")
    assert sweep.launch(str(tmp_path), job, [])[1] == "ok"
    train_py = os.path.join(sweep.ROOT, "train.py")
    assert calls == [[train_py, "--resume", str(run_dir)]] and os.path.isfile(train_py)
    (run_dir / "ckpt.pt").unlink()
    assert sweep.launch(str(tmp_path), job, [])[1] == "ok"
    assert calls[1] == [train_py, "--loss", "simclr", "--batch-size", "32", "--vrns-weight",
                        "0.0", "--seed", "0", "--threads", "1", "--out-dir", str(run_dir)]


def test_report_needs_no_matplotlib_without_plot_dir(tmp_path):
    fake_run(tmp_path)
    code = (f"import sys; from experiments import sweep; sweep.main(['report', {str(tmp_path)!r}]);"
            " print('matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=sweep.ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False"


def test_contrast_of_gains_between_batch_sizes(tmp_path):
    for seed, (g16, g256) in enumerate([(5.0, 1.0), (6.0, 1.0), (7.0, 2.0)]):
        for m, base, gain in ((16, 50.0 + 10 * seed, g16), (256, 60.0 - 3 * seed, g256)):
            fake_run(tmp_path, m=m, seed=seed, linear=base)
            fake_run(tmp_path, m=m, lam=3.0, seed=seed, linear=base + gain)
    fake_run(tmp_path, m=16, lam=3.0, seed=5, linear=0.0)  # seed 5 is missing at m = 256
    (row,) = sweep.contrast(sweep.collect(tmp_path), 16, 256)
    assert row["seeds"] == [0, 1, 2] and row["linear"] == [4.0, 5.0, 5.0]
    half = 4.303 * math.sqrt(1 / 3) / math.sqrt(3)  # sd of (4, 5, 5)
    assert f"+4.7 ± {half:.1f} (n=3)" in sweep.contrast_markdown([row], 16, 256)
    assert sweep.contrast(sweep.collect(tmp_path), 256, 16)[0]["linear"] == [-4.0, -5.0, -5.0]


def test_contrast_pairs_the_epochs_asked_for(tmp_path, capsys):
    for seed in (0, 1):  # m = 16 at 480 epochs against m = 256 at 240, not at 480
        for m, epochs, gain in ((16, 480, 2.0 + seed), (256, 240, 1.0), (256, 480, -9.0)):
            flags = ["--epochs", str(epochs)]
            fake_run(tmp_path, m=m, seed=seed, linear=50.0, flags=flags)
            fake_run(tmp_path, m=m, lam=3.0, seed=seed, linear=50.0 + gain, flags=flags)
    groups = sweep.collect(tmp_path)
    (row,) = sweep.contrast(groups, 16, 256, (480, 240))
    assert row["linear"] == [1.0, 2.0] and row["flags"]["epochs"] == 480
    assert sweep.contrast(groups, 16, 256)[0]["linear"] == [11.0, 12.0]  # equal epochs: 480
    assert sweep.contrast(groups, 16, 256, (240, 480)) == []  # no m = 16 run of 240 epochs
    sweep.main(["report", str(tmp_path), "--contrast", "16", "256", "--contrast-epochs", "480",
                "240"])
    assert "gain(m=16, 480 epochs) - gain(m=256, 240 epochs)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sweep.main(["report", str(tmp_path), "--contrast-epochs", "480", "240"])
    assert "needs --contrast" in capsys.readouterr().err


def test_report_names_the_commits_and_draws_nothing_unasked(tmp_path, capsys):
    for tau in ("0.2", "0.5"):
        for seed in (0, 1):
            fake_run(tmp_path, seed=seed, flags=["--temperature", tau], commit="abc1234")
            fake_run(tmp_path, lam=1.0, seed=seed, flags=["--temperature", tau], linear=52.0,
                     commit="def5678" if tau == "0.5" else "abc1234")
    fake_run(tmp_path, m=256, flags=["--temperature", "0.2"], commit="abc1234")
    assert sweep.main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "commit(s) abc1234, def5678" in out and out.count("several commits") == 1
    assert "| simclr | 32 | 0.5 | 1 |" in out and "| simclr | 256 |" in out
    assert not list(tmp_path.rglob("*.png")) and "figure:" not in out  # nothing unasked for


def test_report_figures_where_a_flag_varies_and_the_tau_figure_shows_the_var_drop(tmp_path,
                                                                                  capsys):
    pytest.importorskip("matplotlib")
    taus = tmp_path / "taus"  # m = 32 at two tau; lam = 1 lowers Var[s_neg] by 25 %, then 75 %
    for tau, var in (("0.2", 0.15), ("0.5", 0.05)):
        for seed in (0, 1):
            fake_run(taus, seed=seed, flags=["--temperature", tau])
            fake_run(taus, lam=1.0, seed=seed, flags=["--temperature", tau], linear=52.0, var=var)
    fake_run(taus, seed=2, linear=44.0, flags=["--temperature", "0.5"])  # a third baseline
    fake_run(tmp_path / "m256", m=256, flags=["--temperature", "0.2"])
    one_m = tmp_path / "one_m"  # a figure against m needs several m: none of one m
    assert sweep.main(["report", str(taus), "--plot-dir", str(one_m)]) == 0
    assert sorted(p.name for p in one_m.iterdir()) == ["sweep_gain_vs_tau.png"]
    figs = tmp_path / "figs"  # two folders together: m varies too
    assert sweep.main(["report", str(taus), str(tmp_path / "m256"), "--plot-dir", str(figs)]) == 0
    out = capsys.readouterr().out
    for name in ("sweep_batch_size.png", "sweep_gain_vs_tau.png"):
        assert (figs / name).stat().st_size > 1000 and f"figure: {figs / name}\n" in out
    (fig,) = sweep.sweep_figures(sweep.summarize(sweep.collect(taus)), "lbfgs").values()
    accuracy, gain_linear, gain_knn, drop = fig.axes
    assert "lbfgs" in gain_linear.get_ylabel() and "drop" in drop.get_ylabel()
    for ax, want in ((gain_linear, [2.0, 2.0]), (gain_knn, [0.0, 0.0]), (drop, [25.0, 75.0])):
        (line,) = ax.containers  # lam = 1 alone: lam = 0 has no gains
        assert line.get_label() == "simclr, λ = 1"
        assert list(line.lines[0].get_xdata()) == [0.2, 0.5]
        assert list(line.lines[0].get_ydata()) == pytest.approx(want)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.2", "0.5"]
    base, term = accuracy.containers  # both arms, each point with its number of seeds
    assert [base.get_label(), term.get_label()] == ["simclr, λ = 0", "simclr, λ = 1"]
    assert list(base.lines[0].get_ydata()) == pytest.approx([50.0, 48.0])  # (50 + 50 + 44) / 3
    assert list(term.lines[0].get_ydata()) == pytest.approx([52.0, 52.0])
    assert [(t.get_text(), t.xy) for t in accuracy.texts] == [
        ("n=2", (0.2, 50.0)), ("n=3", (0.5, 48.0)), ("n=2", (0.2, 52.0)), ("n=2", (0.5, 52.0))]


def test_batch_size_figure_draws_the_paired_gain_of_each_seed(tmp_path):
    pytest.importorskip("matplotlib")
    gains = {0: {16: 3.0, 64: 1.0}, 1: {16: 5.0, 64: -1.0}}  # seed -> m -> gain, linear probe
    for seed, by_m in gains.items():
        for m, gain in by_m.items():
            fake_run(tmp_path, m=m, seed=seed, linear=50.0 + 10 * seed, knn=40.0 - m / 16)
            fake_run(tmp_path, m=m, lam=3.0, seed=seed, linear=50.0 + 10 * seed + gain,
                     knn=40.0 - m / 16 + 2 * gain)
    fake_run(tmp_path, m=16, lam=3.0, seed=2, linear=99.0)  # no baseline: no line of its own
    fake_run(tmp_path, m=64, seed=3, linear=10.0)  # no lam = 3 run: no line either
    (fig,) = sweep.sweep_figures(sweep.summarize(sweep.collect(tmp_path)), "lbfgs").values()
    var, accuracy, gain_linear, gain_knn = fig.axes
    assert len(accuracy.containers) == 2 and "lbfgs" in gain_linear.get_ylabel()
    for ax, scale in ((gain_linear, 1.0), (gain_knn, 2.0)):
        seeds = [line for line in ax.lines if not line.get_label().startswith("_")]
        assert [line.get_label() for line in seeds] == [
            "simclr, λ = 3, seed 0", "simclr, λ = 3, seed 1"]  # and the zero line, unlabelled
        for line, seed in zip(seeds, (0, 1)):
            assert list(line.get_xdata()) == [16, 64]
            assert list(line.get_ydata()) == pytest.approx([scale * gains[seed][m]
                                                            for m in (16, 64)])


def test_report_of_several_folders_keeps_their_lengths_apart(tmp_path, capsys):
    for epochs, acc in (("60", 40.0), ("120", 55.0)):
        for m in (16, 256):
            fake_run(tmp_path / f"e{epochs}", m=m, seed=100, linear=acc,
                     flags=["--epochs", epochs])
    fake_run(tmp_path / "e120", m=16, seed=100, lam=3.0, linear=58.0, flags=["--epochs", "120"])
    folders = [str(tmp_path / "e60"), str(tmp_path / "e120")]
    assert sweep.main(["report", *folders]) == 0
    out = capsys.readouterr().out
    for m, epochs, acc in ((16, 60, 40), (256, 60, 40), (16, 120, 55), (256, 120, 55)):
        assert f"| simclr | {m} | 0.2 | 0 | 100 (1) | {acc}.0 |" in out
        assert out.count(f"epochs={epochs} |") == (2 if epochs == 60 else 3)
    rows = [line for line in out.splitlines() if line.startswith("| simclr | 16 |")]
    assert [row.split()[-2] for row in rows] == ["epochs=60", "epochs=120", "epochs=120"]
    assert "| +3.0 (n=1) |" in out  # lam = 3 paired with lam = 0 of its own length only
    with pytest.raises(SystemExit):  # not a folder
        sweep.main(["report", folders[0], str(tmp_path / "missing")])


def test_knn_plateau_and_nested_layout(tmp_path):
    fake_run(tmp_path / "sweep-a", monitor=[10.0] * 7 + [50.0, 52.0, 53.0])  # epochs 1-10
    fake_run(tmp_path / "sweep-a", seed=1, monitor=[10.0] * 7 + [50.0, 50.0, 51.0])
    fake_run(tmp_path, seed=2)  # no monitor records: no plateau value
    (row,) = sweep.summarize(sweep.collect(tmp_path))
    assert row["seeds"] == [0, 1, 2] and row["plateau"] == [3.0, 1.0]  # epoch 8 -> 10
    assert "| +2.0 ± 1.4 |" in sweep.markdown([row], [])


def test_tiny_sweep_skips_finished_runs_and_refuses_other_epochs(tmp_path, capsys):
    argv = ["run", "--out", str(tmp_path), "--batch-sizes", "32", "--lams", "0", "1",
            "--seeds", "0", "--parallel", "2", "--", *TINY]
    assert sweep.main(argv) == 0
    assert capsys.readouterr().out.count(": ok (") == 2
    assert sweep.main(argv) == 0  # args.json written by train.py matches the flags
    assert capsys.readouterr().out.count("done before") == 2
    assert sweep.main([*argv, "--epochs", "2"]) == 1
    assert capsys.readouterr().out.count("--epochs 2 (the run: 1)") == 2
    (row0, row1) = sweep.summarize(sweep.collect(tmp_path))
    assert (row0["lam"], row1["lam"]) == (0.0, 1.0) and len(row1["gain_linear"]) == 1


def test_different_class_variance_from_summary_or_a_later_eval(tmp_path):
    """Var[s_neg] of different-class pairs: summary.json's when the run computed it, otherwise
    RUN/eval.json's from `python eval.py --ckpt RUN`; '-' when neither has it."""
    new = fake_run(tmp_path, seed=0)
    summary = json.loads((new / "summary.json").read_text())
    summary["table1_stats"]["neg_diff_var"] = 0.04
    (new / "summary.json").write_text(json.dumps(summary))
    old = fake_run(tmp_path, seed=1)
    (old / "eval.json").write_text(json.dumps({"table1_stats": {"neg_diff_var": 0.06}}))
    fake_run(tmp_path, seed=2)
    (row,) = sweep.summarize(sweep.collect(tmp_path))
    assert row["diff_var"] == [0.04, 0.06]
    assert "| 0.0500 ± 0.0141 |" in sweep.markdown([row], [])


def test_report_reads_the_probe_it_is_asked_for_and_names_runs_without_it(tmp_path, capsys):
    """--probe lbfgs: summary.json's linear_lbfgs_acc, or eval.json's for a run evaluated again;
    the paper's probe (linear_acc) by default; a run with neither is named, not averaged in."""
    new = fake_run(tmp_path, seed=0, linear=50.0)
    summary = json.loads((new / "summary.json").read_text())
    (new / "summary.json").write_text(json.dumps({**summary, "linear_lbfgs_acc": 80.0}))
    old = fake_run(tmp_path, seed=1, linear=60.0)
    (old / "eval.json").write_text(json.dumps({"linear_lbfgs_acc": 90.0, "table1_stats": {}}))
    assert [r["linear"] for r in sweep.summarize(sweep.collect(tmp_path))] == [[50.0, 60.0]]
    (row,) = sweep.summarize(sweep.collect(tmp_path, probe="lbfgs"))
    assert row["linear"] == [80.0, 90.0]
    assert sweep.main(["report", str(tmp_path), "--probe", "lbfgs"]) == 0
    assert "| 85.0 ± 7.1 |" in capsys.readouterr().out
    missing = fake_run(tmp_path, seed=2)
    with pytest.raises(SystemExit):
        sweep.main(["report", str(tmp_path), "--probe", "lbfgs"])
    assert str(missing) in capsys.readouterr().err
