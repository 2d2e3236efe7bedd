"""theory.py: every formula against hand-computed values or slow loops and pasted alone, Fig. 2's
configurations, the optimiser's contract, and `python theory.py N M` and `--run` in a subprocess.
The theorems checked on optimised embeddings are experiments/lab.py's, tested there."""
import json
import math
import os
import subprocess
import sys
from functools import partial
from statistics import fmean, pvariance

import pytest
import torch
import torch.nn.functional as F

import losses
import theory
from conftest import paste_alone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def slow_stats(u, v):
    """Mean and population variance of the positives and of the ordered cross-view negatives,
    by looping over every pair."""
    n = len(u)
    pos = [float(u[i] @ v[i]) for i in range(n)]
    neg = [float(u[i] @ v[j]) for i in range(n) for j in range(n) if i != j]
    return {"pos_mean": fmean(pos), "pos_var": pvariance(pos), "neg_mean": fmean(neg),
            "neg_var": pvariance(neg), "count": n}


def simplex_gap(u, v):
    """max |u_i^T v_j - S*_ij| with S* = 1 on the diagonal and -1/(n-1) off it."""
    n = len(u)
    star = torch.full((n, n), -1.0 / (n - 1), dtype=torch.float64).fill_diagonal_(1.0)
    return (u @ v.T - star).abs().max().item()


# --------------------------------------------------------------------------------------------
# Formulas
# --------------------------------------------------------------------------------------------

def test_negative_and_within_batch_optima():
    assert theory.negative_similarity_optimum(2) == -1.0
    assert theory.negative_similarity_optimum(8) == pytest.approx(-1 / 7)
    assert theory.within_batch_negative_similarity(5) == pytest.approx(-0.25)
    assert theory.within_batch_negative_similarity(2) == -1.0


def test_positive_similarity_bound_by_hand():
    assert theory.positive_similarity_bound(-1 / 7, 8) == pytest.approx(1.0)  # the simplex
    assert theory.positive_similarity_bound(0.0, 5) == pytest.approx(1.25)
    assert theory.positive_similarity_bound(torch.tensor(-0.5), 3) == pytest.approx(1.0)


def test_minibatch_variance_bounds_by_hand():
    low, high = theory.minibatch_variance_bounds(4, 2)  # Fig. 2: 2 / (1 * 9), 4 * 2 / 9
    assert (low, high) == (pytest.approx(2 / 9), pytest.approx(8 / 9))
    assert theory.minibatch_variance_bounds(6, 6) == (0.0, 0.0)
    low, high = theory.minibatch_variance_bounds(12, 4)  # 8 / (3 * 121), 12 * 8 / (3 * 121)
    assert (low, high) == (pytest.approx(8 / 363), pytest.approx(96 / 363))


@pytest.mark.parametrize("n,m", [(4, 2), (6, 2), (6, 3), (8, 4), (12, 3)])
def test_batch_simplices_reach_both_ends_of_eq_11(n, m):
    low, high = theory.minibatch_variance_bounds(n, m)
    for shared, d, var in [(False, n, low), (True, m - 1, high)]:
        u = theory.batch_simplices(n, m, d, shared=shared)
        assert u.shape == (n, d)
        assert torch.allclose(u.norm(dim=1), torch.ones(n, dtype=torch.float64))
        for k in range(0, n, m):  # every batch a regular (m-1)-simplex
            assert simplex_gap(u[k:k + m], u[k:k + m]) < 1e-12
        stats = slow_stats(u, u)
        assert stats["neg_mean"] == pytest.approx(-1 / (n - 1), abs=1e-12)
        assert stats["neg_var"] == pytest.approx(var, abs=1e-12)


def siglip_ratio(t, b, n):
    """eq. (10)'s left-hand side, literally."""
    return (1 + math.exp(t / (n - 1) + b)) / (1 + math.exp(t - b))


@pytest.mark.parametrize("t,b,n,expected", [
    (5.0, 2.0, 8, True),    # ratio (1 + e^2.714) / (1 + e^3) = 0.763 < 3
    (5.0, 3.0, 8, False),   # ratio (1 + e^3.714) / (1 + e^2) = 5.01 >= 3
    (5.0, 2.7, 8, True),    # 2.86 < 3
    (5.0, 2.8, 8, False),   # 3.45 >= 3
    (1.0, 0.0, 3, False),   # (1 + e^0.5) / (1 + e) = 0.712 >= 0.5
    (10.0, 0.0, 3, True),   # (1 + e^5) / (1 + e^10) = 0.0068 < 0.5
    (5.0, 2.0, 2, False),   # n = 2: right-hand side 0
])
def test_siglip_excessive_separation_by_hand(t, b, n, expected):
    assert theory.siglip_excessive_separation(t, b, n) is expected
    if n > 2:
        assert (siglip_ratio(t, b, n) < (n - 2) / 2) is expected


def test_siglip_condition_survives_huge_t():
    assert theory.siglip_excessive_separation(1000.0, 0.0, 8)  # e^1000 would overflow
    assert not theory.siglip_excessive_separation(1000.0, 2000.0, 8)


def test_excessive_separation_by_hand():
    assert theory.excessive_separation(1.0, 3.0, 8)  # 1 < (6/14) 3 = 1.29
    assert not theory.excessive_separation(2.0, 3.0, 8)  # 2 > 1.29
    assert not theory.excessive_separation(1.0, 100.0, 2)  # n = 2: right-hand side 0


@pytest.mark.parametrize("n", [3, 4, 8, 32])
def test_eq_10_is_eq_8_with_siglips_derivatives(n):
    """Ex. 5.4: phi'(1) and psi'(-1/(n-1)) by autograd of Table 3's phi and psi."""
    for t in (0.5, 1.0, 2.0, 5.0, 10.0, 20.0):
        for b in (-2.0, 0.0, 1.0, 2.0, 3.0, 5.0, 10.0):
            x = torch.tensor([1.0, -1.0 / (n - 1)], dtype=torch.float64, requires_grad=True)
            phi = -F.softplus(b - t * x[0])
            psi = (n - 1) * F.softplus(t * x[1] - b)
            dphi, dpsi = torch.autograd.grad(phi + psi, x)[0].tolist()
            assert theory.excessive_separation(dphi, dpsi, n) == \
                theory.siglip_excessive_separation(t, b, n), (t, b)


@pytest.mark.parametrize("call", [
    lambda: theory.negative_similarity_optimum(1),
    lambda: theory.negative_similarity_optimum(2.5),
    lambda: theory.negative_similarity_optimum(True),
    lambda: theory.positive_similarity_bound(0.0, 1),
    lambda: theory.within_batch_negative_similarity(1),
    lambda: theory.minibatch_variance_bounds(4, 1),
    lambda: theory.minibatch_variance_bounds(4, 8),
    lambda: theory.excessive_separation(1.0, 1.0, 1),
    lambda: theory.siglip_excessive_separation(0.0, 1.0, 8),
    lambda: theory.siglip_excessive_separation(1.0, math.nan, 8),
    lambda: theory.batch_simplices(6, 4, 6),
    lambda: theory.batch_simplices(6, 3, 3),  # two orthogonal 2-simplices need d >= 4
    lambda: theory.optimize_embeddings(losses.spectral_loss, 6, 0),
    lambda: theory.optimize_embeddings(losses.spectral_loss, 6, 3, batch_size=4),
    lambda: theory.optimize_embeddings(losses.spectral_loss, 6, 3, batch_size=12),
    lambda: theory.optimize_embeddings(losses.spectral_loss, 6, 3, lr=0.0),
])
def test_invalid_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


# --------------------------------------------------------------------------------------------
# The optimum found numerically
# --------------------------------------------------------------------------------------------

def test_optimize_embeddings_is_deterministic_per_seed():
    loss_fn = partial(losses.simclr_loss, temperature=0.5)
    kwargs = dict(n=6, d=4, batch_size=2, fixed_batches=False, steps=30)
    u1, v1 = theory.optimize_embeddings(loss_fn, seed=3, **kwargs)
    u2, v2 = theory.optimize_embeddings(loss_fn, seed=3, **kwargs)
    u3, _ = theory.optimize_embeddings(loss_fn, seed=4, **kwargs)
    assert torch.equal(u1, u2) and torch.equal(v1, v2)
    assert not torch.equal(u1, u3)
    assert u1.shape == (6, 4) and not u1.requires_grad
    assert torch.allclose(u1.norm(dim=1), torch.ones(6, dtype=torch.float64))


def test_optimize_embeddings_reshuffles_every_step():
    """Fixed batches land inside eq. (11) (Thm 5.5); batches drawn afresh every step let all
    pairs meet and fall far below its low end. Any fixed partition, the first one reused
    included, would stay inside eq. (11)."""
    n, m = 8, 4
    loss_fn = partial(losses.simclr_loss, temperature=0.5)
    low, high = theory.minibatch_variance_bounds(n, m)  # 0.027, 0.218
    u, v = theory.optimize_embeddings(loss_fn, n, n, batch_size=m, steps=200)
    assert low - 1e-6 <= slow_stats(u, v)["neg_var"] <= high + 1e-6
    u, v = theory.optimize_embeddings(loss_fn, n, n, batch_size=m, fixed_batches=False,
                                      steps=200)
    assert slow_stats(u, v)["neg_var"] < low / 3


# --------------------------------------------------------------------------------------------
# Comparing a training run with the theory
# --------------------------------------------------------------------------------------------

def test_compare_with_theory_rows():
    u = theory.batch_simplices(8, 8, 8)
    rows = theory.compare_with_theory(slow_stats(u, u), n=8, m=4)
    assert [r["quantity"] for r in rows] == ["E[s_neg]", "E[s_pos]", "Var[s_neg]",
                                             "within-batch s_neg"]
    assert all(set(r) == {"quantity", "predicted", "measured", "note"} for r in rows)
    e_neg, e_pos, var, within = rows
    assert e_neg["predicted"] == pytest.approx(-1 / 7)
    assert e_neg["measured"] == pytest.approx(-1 / 7)
    assert e_pos["predicted"] == pytest.approx(1.0) and "holds" in e_pos["note"]
    assert var["predicted"] == pytest.approx(theory.minibatch_variance_bounds(8, 4))
    assert "below" in var["note"]  # the full-batch simplex has variance 0 < eq. (11)'s low
    assert within["predicted"] == pytest.approx(-1 / 3) and within["measured"] is None


def test_compare_with_theory_flags_an_impossible_positive_mean():
    stats = {"pos_mean": 0.9, "neg_mean": -0.5, "neg_var": 0.1, "count": 100}  # bound 0.51
    assert "VIOLATED" in theory.compare_with_theory(stats, n=1000, m=10)[1]["note"]
    with pytest.raises(KeyError, match="neg_var"):
        theory.compare_with_theory({"pos_mean": 0.9, "neg_mean": -0.5, "count": 100}, n=1000,
                                   m=10)


def test_compare_with_theory_bounds_the_sample_with_its_own_count():
    """eq. (7) bounds the mean over the sample's pairs: 1/(count-1), not the training set's
    1/(n-1). Here count = 5 pairs, n = 1000: the bound is 1 - 0.3 + 1/4 = 0.95, which the
    sample's E[s_pos] = 0.93 respects; with 1/(n-1) it would be 0.701 and read as violated."""
    stats = {"pos_mean": torch.tensor(0.93, dtype=torch.float64), "neg_var": torch.tensor(0.2),
             "neg_mean": torch.tensor(-0.3, dtype=torch.float64), "count": 5}
    rows = theory.compare_with_theory(stats, n=1000, m=10)
    assert rows[1]["predicted"] == pytest.approx(0.95, abs=1e-12)
    assert "holds" in rows[1]["note"] and "1/(5-1)" in rows[1]["note"]
    assert rows[0]["predicted"] == pytest.approx(-1 / 999)
    json.dumps(rows)  # plain floats, ready for summary.json, even from 0-d tensors
    assert all(type(row["measured"]) in (float, type(None)) for row in rows)


def run_cli(*args):
    return subprocess.run([sys.executable, "theory.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_prints_the_predictions_at_n_and_m():
    result = run_cli("50000", "128")
    assert result.returncode == 0, result.stderr
    low, high = theory.minibatch_variance_bounds(50000, 128)
    for text in [f"{-1 / 49999:.6g}", f"{-1 / 127:.6g}", f"[{low:.6g}, {high:.6g}]"]:
        assert text in result.stdout
    assert run_cli("4", "8").returncode == 2 and run_cli().returncode == 2  # m > n; no n, m


def test_cli_run_on_a_missing_dir_exits_2_with_one_line(tmp_path):
    result = run_cli("--run", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "nowhere" in result.stderr


def test_cli_run_on_an_incomplete_summary_names_the_key(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({"n_train": 100}))
    assert theory.main(["--run", str(tmp_path)]) == 2
    assert "'table1_stats'" in capsys.readouterr().err


def test_cli_run_prints_the_rows(tmp_path):
    g = torch.Generator().manual_seed(0)
    u, v = F.normalize(torch.randn(2, 20, 8, generator=g, dtype=torch.float64), dim=2)
    summary = {"args": {"batch_size": 16}, "n_train": 256, "table1_stats": slow_stats(u, v)}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    result = run_cli("--run", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = theory.compare_with_theory(summary["table1_stats"], 256, 16)
    lines = result.stdout.splitlines()
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows):
        assert line.startswith(row["quantity"] + " ") and line.endswith(row["note"])
    low, high = rows[2]["predicted"]
    assert f"predicted {-1 / 255:.4g} " in lines[0] and f"{low:.4g}, {high:.4g}" in lines[2]
    assert f"measured {rows[0]['measured']:.4g} " in lines[0] and "measured - " in lines[3]


def test_figure2_configurations_are_the_papers():
    """The three configurations are Fig. 2's, up to a rotation (so compared by their Gram
    matrices): both batches on one antipodal pair, the two batches on orthogonal lines, and a
    tetrahedron; E[s_neg] = -1/3 in all three, Var[s_neg] = 8/9, 2/9, 0."""
    e1, e2 = torch.eye(3, dtype=torch.float64)[:2, None]  # (1, 3) each
    paper = [torch.cat([e1, -e1, e1, -e1]), torch.cat([e1, -e1, e2, -e2]),
             torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]],
                          dtype=torch.float64) / 3 ** 0.5]
    configs = theory.figure2_configurations()
    assert [c["m"] for c in configs] == [2, 2, 4]
    for config, u, var in zip(configs, paper, (8 / 9, 2 / 9, 0.0)):
        assert config["u"].shape == (4, 3)
        assert torch.allclose(config["u"] @ config["u"].T, u @ u.T, atol=1e-12)
        assert config["neg_mean"] == pytest.approx(-1 / 3, abs=1e-12)
        assert config["neg_var"] == pytest.approx(var, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Copyable formulas
# --------------------------------------------------------------------------------------------

FORMULAS = {  # name -> calls that exercise every branch; each returns a number or a tensor
    "negative_similarity_optimum": [(8,), (2,)],
    "positive_similarity_bound": [(-0.2, 8), (torch.tensor(-0.5), 3)],
    "excessive_separation": [(1.0, 3.0, 8), (2.0, 3.0, 8)],
    "siglip_excessive_separation": [(5.0, 2.0, 8), (5.0, 3.0, 8), (1000.0, 0.0, 8), (5.0, 2.0, 2)],
    "within_batch_negative_similarity": [(5,)],
    "minibatch_variance_bounds": [(12, 4), (6, 6)],
    "batch_simplices": [(6, 3, 4), (6, 3, 2, True), (4, 4, 3)],
    "infonce_similarity_gradient": [(torch.randn(5, 5, generator=torch.Generator().manual_seed(0),
                                                 dtype=torch.float64), 0.3)],
    "optimize_embeddings": [(partial(losses.simclr_loss, temperature=0.5), 6, 4, 3, False, 20)],
}


@pytest.mark.parametrize("name", FORMULAS)
def test_formula_pastes_and_runs_alone(name):
    """The function's source alone, in a file importing only math, numbers, np, torch and F."""
    fn, pasted = getattr(theory, name), paste_alone(getattr(theory, name))
    for args in FORMULAS[name]:
        expected, got = fn(*args), pasted(*args)
        for e, g in zip(expected if isinstance(expected, tuple) else (expected,),
                        got if isinstance(got, tuple) else (got,)):
            assert torch.equal(g, e) if isinstance(e, torch.Tensor) else g == e
    if name != "infonce_similarity_gradient":  # the only one without a check of its own
        with pytest.raises(ValueError):
            pasted(*[1] * len(FORMULAS[name][0]))

