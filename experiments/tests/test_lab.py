"""lab.py: every predicted-vs-measured row passes and none goes missing, the exit status follows
the rows, and the experiments behind the theory's figures land where the theorems say."""
from collections import Counter

from experiments import lab
from theory import minibatch_variance_bounds, siglip_excessive_separation


def test_lab_every_row_passes():
    """`python -m experiments.lab`: every row passes (seed 0), and none goes missing. The lab
    alone checks Thm 5.1 for every loss, Ex. 5.4's flip and its cure by within-view negatives,
    Thm 5.3, the identity behind Thm 5.2 (exact to 1e-12, so 1/n for 1/(n-1) fails), Thm 5.5 on
    optimised and built batch simplices, Thm 5.6's closed form against autograd and its growth
    as m shrinks, and Def. 5.7 (vrns_sweep). Fig. 2's E and Var: tests/test_theory.py."""
    rows = lab.run_lab(seed=0)
    assert Counter(r["claim"] for r in rows) == {
        "Thm 5.1": 6, "not 5.1": 3, "Ex. 5.4": 3, "Thm 5.3": 1, "Thm 5.2": 4, "Thm 5.5": 15,
        "Thm 5.6": 4, "Def. 5.7": 10}
    failed = [f"{r['claim']} {r['quantity']}: {r['measured']}" for r in rows
              if r["result"] != "PASS"]
    assert not failed, failed


def test_main_prints_every_row_and_exits_1_on_a_failure(monkeypatch, capsys):
    rows = [lab._near("Thm 5.1", "a number", 1.0, 1.0 + 1e-9, "1e-6"),
            lab._row("Thm 5.5", "an interval", (0.25, 0.5), 0.75, False, "in eq. (11)")]
    monkeypatch.setattr(lab, "run_lab", lambda seed: rows[:1])
    assert lab.main([]) == 0
    assert "a number" in capsys.readouterr().out
    monkeypatch.setattr(lab, "run_lab", lambda seed: rows)
    assert lab.main([]) == 1
    out = capsys.readouterr().out
    assert "1/2 rows pass" in out
    line = next(line for line in out.splitlines() if "an interval" in line)
    assert "0.25, 0.5" in line and "0.75" in line and line.endswith("FAIL")


def test_variance_vs_batch_fixed_inside_eq_11_and_reshuffled_below():
    rows = lab.variance_vs_batch(n=12, ms=(2, 3, 6), steps=150)
    assert [r["m"] for r in rows] == [2, 3, 6]
    for r in rows:
        assert (r["low"], r["high"]) == minibatch_variance_bounds(12, r["m"])
        assert r["low"] - 1e-6 <= r["fixed"] <= r["high"] + 1e-6
        assert r["reshuffled"] < r["fixed"] / 2


def test_siglip_phase_follows_eq_10():
    """Where eq. (10) holds the positives stay apart (gap > 1e-2); elsewhere, and everywhere
    with within-view negatives, the optimum is the simplex (gap < 1e-3). Points away from the
    flat corner of large t and b, where 300 steps do not suffice."""
    ts, bs, n = (1.0, 5.0), (-2.0, 5.0), 8
    points = lab.siglip_phase(ts, bs, n=n, steps=300)
    assert [(p["t"], p["b"]) for p in points] == [(t, b) for b in bs for t in ts]
    assert [p["predicted"] for p in points] == [True, True, False, False]
    for p in points:
        assert p["predicted"] == siglip_excessive_separation(p["t"], p["b"], n)
        assert p["gap"] > 1e-2 if p["predicted"] else p["gap"] < 1e-3
    assert all(p["gap"] < 1e-3 for p in lab.siglip_phase(ts, bs, n=n, within_view=True,
                                                         steps=300))
