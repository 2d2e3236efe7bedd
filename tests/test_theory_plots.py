"""The numbers behind `python theory.py --plot`, against the theorems, and the command itself
run in a subprocess on coarse grids (--quick). vrns_sweep's numbers are lab rows (Def. 5.7).
figures.py draws every figure; who imports it, and what it imports."""
import json
import os
import subprocess
import sys

import torch

import theory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_figure2_configurations_are_the_papers():
    """The three configurations are Fig. 2's, up to a rotation (so compared by their Gram
    matrices): both batches on one antipodal pair, the two batches on orthogonal lines, and a
    tetrahedron. Their E[s_neg] and Var[s_neg] are lab rows (Fig. 2)."""
    e1, e2 = torch.eye(3, dtype=torch.float64)[:2, None]  # (1, 3) each
    paper = [torch.cat([e1, -e1, e1, -e1]), torch.cat([e1, -e1, e2, -e2]),
             torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]],
                          dtype=torch.float64) / 3 ** 0.5]
    configs = theory.figure2_configurations()
    assert [c["m"] for c in configs] == [2, 2, 4]
    for config, u in zip(configs, paper):
        assert config["u"].shape == (4, 3)
        assert torch.allclose(config["u"] @ config["u"].T, u @ u.T, atol=1e-12)


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


PROJECT = ("losses", "models", "data", "train", "eval", "theory", "sweep", "figures")


def imported_by(module):
    """The repository's modules, and matplotlib, that `import module` loads in a fresh process."""
    code = (f"import json, sys, {module}; print(json.dumps(sorted(m for m in sys.modules "
            f"if m in {PROJECT} or m == 'matplotlib')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_matplotlib_only_for_a_figure_and_no_import_cycle():
    """theory.py needs only torch, numpy and losses; no module but figures.py loads matplotlib
    until a figure is asked for, and figures.py imports no other module of the repository."""
    assert imported_by("theory") == ["losses", "theory"]
    assert "matplotlib" not in imported_by("eval") + imported_by("sweep")
    assert imported_by("figures") == ["figures", "matplotlib"]
