"""The numbers behind `python theory.py --plot`, against the theorems, and the command itself
run in a subprocess on coarse grids (--quick)."""
import os
import subprocess
import sys

import pytest
import torch

import theory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_figure2_configurations_are_the_papers():
    """E[s_neg] = -1/3 in all three, Var[s_neg] = 8/9, 2/9, 0; each batch an antipodal pair."""
    configs = theory.figure2_configurations()
    assert [c["m"] for c in configs] == [2, 2, 4]
    for config, var in zip(configs, (8 / 9, 2 / 9, 0.0)):
        u = config["u"]
        assert u.shape == (4, 3)
        assert torch.allclose(u.norm(dim=1), torch.ones(4, dtype=torch.float64))
        assert config["neg_mean"] == pytest.approx(-1 / 3, abs=1e-12)
        assert config["neg_var"] == pytest.approx(var, abs=1e-12)
    for config in configs[:2]:
        assert torch.allclose(config["u"][0], -config["u"][1], atol=1e-12)
        assert torch.allclose(config["u"][2], -config["u"][3], atol=1e-12)


def test_variance_vs_batch_fixed_inside_eq_11_and_reshuffled_below():
    rows = theory.variance_vs_batch(n=12, ms=(2, 3, 6), steps=150)
    assert [r["m"] for r in rows] == [2, 3, 6]
    for r in rows:
        assert (r["low"], r["high"]) == theory.minibatch_variance_bounds(12, r["m"])
        assert r["low"] - 1e-6 <= r["fixed"] <= r["high"] + 1e-6
        assert r["reshuffled"] < r["fixed"] / 2


def test_siglip_phase_follows_eq_10():
    """Where eq. (10) holds the positives stay apart (gap > 1e-2); elsewhere, and everywhere
    with within-view negatives, the optimum is the simplex (gap < 1e-3). Points away from the
    flat corner of large t and b, where 300 steps do not suffice."""
    ts, bs, n = (1.0, 5.0), (-2.0, 5.0), 8
    points = theory.siglip_phase(ts, bs, n=n, steps=300)
    assert [(p["t"], p["b"]) for p in points] == [(t, b) for b in bs for t in ts]
    assert [p["predicted"] for p in points] == [True, True, False, False]
    for p in points:
        assert p["predicted"] == theory.siglip_excessive_separation(p["t"], p["b"], n)
        assert p["gap"] > 1e-2 if p["predicted"] else p["gap"] < 1e-3
    assert all(p["gap"] < 1e-3 for p in theory.siglip_phase(ts, bs, n=n, within_view=True,
                                                            steps=300))


def test_vrns_sweep_lowers_the_variance_under_reshuffling():
    n, m = 16, 4
    reshuffled = theory.vrns_sweep((0.0, 3.0, 30.0), False, n=n, m=m, steps=300)
    assert [r["lam"] for r in reshuffled] == [0.0, 3.0, 30.0]
    variances = [r["neg_var"] for r in reshuffled]
    assert variances[0] > variances[1] > variances[2]
    assert all(abs(r["neg_mean"] + 1 / (n - 1)) < 1e-4 for r in reshuffled)
    (fixed,) = theory.vrns_sweep((30.0,), True, n=n, m=m, steps=300)
    assert fixed["neg_mean"] > -1 / (n - 1) + 1e-3  # cross-batch pairs free: the mean rises


def test_plot_command_writes_every_figure(tmp_path):
    result = subprocess.run([sys.executable, "theory.py", "--plot", "--quick", "--plot-dir",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    names = ["fig2_configurations.png", "thm55_variance_vs_batch.png", "ex54_siglip_phase.png",
             "def57_vrns_sweep.png"]
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < 150_000
        assert f"{tmp_path / name}: " in result.stdout
