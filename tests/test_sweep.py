"""sweep.py: the statistics of its report, and a tiny sweep that resumes by skipping."""
import json
import os

import pytest

import sweep

TINY = ["--train-size", "128", "--width", "4", "--epochs", "1", "--track-size", "32",
        "--probe-epochs", "1", "--precision", "fp32"]


def fake_run(folder, m, lam, seed, linear, var):
    os.makedirs(folder / sweep.run_name("simclr", m, lam, seed))
    summary = {"args": {"loss": "simclr", "batch_size": m, "vrns_weight": lam, "seed": seed},
               "linear_acc": linear, "knn_acc": linear + 1, "total_wall_s": 10.0,
               "table1_stats": {"pos_mean": 0.8, "neg_mean": 0.0, "neg_var": var}}
    (folder / sweep.run_name("simclr", m, lam, seed) / "summary.json").write_text(
        json.dumps(summary))


def test_report_means_stds_and_paired_gains(tmp_path):
    for seed, (base, term) in enumerate([(40.0, 45.0), (50.0, 52.0), (60.0, 62.0)]):
        fake_run(tmp_path, 32, 0.0, seed, base, 0.2)
        fake_run(tmp_path, 32, 1.0, seed, term, 0.1)
    fake_run(tmp_path, 32, 1.0, 7, 99.0, 0.1)  # no baseline for seed 7: not in the gain
    rows = sweep.summarize(sweep.collect(tmp_path))
    base, term = rows
    assert base["linear"] == pytest.approx((50.0, 10.0)) and "gain" not in base
    assert term["seeds"] == [0, 1, 2, 7]
    assert term["gain"] == pytest.approx((3.0, 1.7320508))  # +5, +2, +2
    assert term["neg_var"] == pytest.approx((0.1, 0.0))
    table = sweep.markdown(rows)
    assert "+3.0 ± 1.7" in table and "50.0 ± 10.0" in table
    assert sweep.main(["report", str(tmp_path), "--plot-dir", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "sweep_batch_size.png").stat().st_size > 1000


def test_tiny_sweep_skips_finished_runs(tmp_path, capsys):
    argv = ["run", "--out", str(tmp_path), "--batch-sizes", "32", "--lams", "0", "1",
            "--seeds", "0", "--parallel", "2", "--", *TINY]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == 2
    assert sweep.main(argv) == 0
    assert capsys.readouterr().out.count("done before") == 2
    (row0, row1) = sweep.summarize(sweep.collect(tmp_path))
    assert (row0["lam"], row1["lam"]) == (0.0, 1.0) and "gain" in row1
