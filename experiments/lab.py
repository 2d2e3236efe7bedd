"""The theory lab: every claim of section 5, predicted against measured on free embeddings.

Each row optimises free unit-norm pairs (the "optimal encoder" of section 5, d >= n-1) with
theory.optimize_embeddings and compares them with the formula of theory.py that predicts them.
The experiments behind the theory's figures (drawn by plots.py) are here too.

    python -m experiments.lab            # 46 rows, about 20 s on 1 CPU thread; exit 1 on a FAIL
    python -m experiments.lab --seed 3   # every row should pass for any seed

Shape legend: n pairs, m batch size, d embedding dimension; u, v: (n, d) unit rows, row i of each
a positive pair; S = u v^T (n, n). t, b: SigLIP's scale and bias (the paper's sign); lam: the
weight of L_VRNS; tau: the temperature.
"""
import argparse
import math
import sys
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

import losses
from theory import (batch_simplices, infonce_similarity_gradient, minibatch_variance_bounds,
                    negative_similarity_optimum, optimize_embeddings, positive_similarity_bound,
                    siglip_excessive_separation, similarity_stats)


# ---- Experiments on free embeddings: the numbers behind the figures ------------------------------

def variance_vs_batch(n=24, ms=(2, 3, 4, 6, 8, 12), steps=300, seed=0):
    """Thm 5.5 against m: SimCLR (tau = 0.5) on n free pairs in R^n -> per m eq. (11)'s 'low' and
    'high' and the measured Var[s_neg] of fixed batches, 'fixed' (inside eq. (11)), and of
    batches reshuffled every step, 'reshuffled' (every pair meets: towards the simplex, Var 0)."""
    loss_fn = partial(losses.simclr_loss, temperature=0.5)
    rows = []
    for m in ms:
        low, high = minibatch_variance_bounds(n, m)
        row = {"m": m, "low": low, "high": high}
        for name, fixed in (("fixed", True), ("reshuffled", False)):
            u, v = optimize_embeddings(loss_fn, n, n, batch_size=m, fixed_batches=fixed,
                                       steps=steps, seed=seed)
            row[name] = float(similarity_stats(u, v)["neg_var"])
        rows.append(row)
    return rows


def siglip_phase(ts, bs, n=8, within_view=False, steps=600, seed=0):
    """Ex. 5.4 over a (t, b) grid: per point eq. (10)'s 'predicted' and the measured 'gap' =
    1 - min_i s_pos of the full-batch SigLIP optimum of n free pairs in R^n: 0, the simplex,
    where eq. (10) is false (Thm 5.1 (iii)) and everywhere with within_view (Thm 5.1 (ii)). Large
    t and b make the loss flat: there a few hundred steps leave a gap the theory has not."""
    points = []
    for b in bs:
        for t in ts:
            loss_fn = partial(losses.siglip_loss, t=t, b=b, within_view=within_view)
            u, v = optimize_embeddings(loss_fn, n, n, steps=steps, seed=seed)
            points.append({"t": t, "b": b, "predicted": siglip_excessive_separation(t, b, n),
                           "gap": 1 - (u * v).sum(1).min().item()})
    return points


def vrns_sweep(lams, fixed_batches, n=32, m=8, steps=500, seed=0):
    """Def. 5.7: SimCLR (tau = 0.5) + lam L_VRNS on n free pairs in R^n, batches of m -> per lam
    {'lam', 'neg_mean', 'neg_var'}. Reshuffled batches: E[s_neg] stays at -1/(n-1) (SimCLR
    alone drives sum_i u_i to 0) and Var[s_neg] falls with lam. Fixed batches: cross-batch pairs
    meet in no loss, and the term lifts E[s_neg] instead."""
    rows = []
    for lam in lams:
        def loss_fn(u, v, lam=lam):
            return losses.simclr_loss(u, v, 0.5) + lam * losses.vrns_loss(u, v, n)

        u, v = optimize_embeddings(loss_fn, n, n, batch_size=m, fixed_batches=fixed_batches,
                                   steps=steps, seed=seed)
        stats = similarity_stats(u, v)
        rows.append({"lam": lam, **{k: float(stats[k]) for k in ("neg_mean", "neg_var")}})
    return rows


# ---- The lab: every claim of section 5, predicted vs measured ------------------------------------

def _row(claim, quantity, predicted, measured, ok, check):
    return {"claim": claim, "quantity": quantity, "predicted": predicted, "measured": measured,
            "check": check, "result": "PASS" if ok else "FAIL"}


def _near(claim, quantity, predicted, measured, tol):
    """A row that passes when |measured - predicted| < tol; tol as printed, e.g. "1e-6"."""
    return _row(claim, quantity, predicted, measured, abs(measured - predicted) < float(tol),
                f"+- {tol}")


def _gap(claim, quantity, gap, tol):
    """A row for a gap >= 0 that the theory puts at 0: passes when gap < tol."""
    return _row(claim, quantity, 0.0, gap, gap < float(tol), f"< {tol}")


def _lab_full_batch(seed):
    """Thm 5.1 for every loss of Tables 2-3 at n = d = 8: UV^T equals S* entrywise. Spectral CL
    is outside Def. 3.2 (psi = x^2 is not increasing on [-1, 0]): its penalty is least at s = 0,
    so UV^T = I when d >= n, and at d = n-1 a tight frame, |s_ij| = 1/(n-1) with free signs."""
    n, tau = 8, 0.5
    S_star = torch.full((n, n), -1 / (n - 1), dtype=torch.float64).fill_diagonal_(1)  # (n, n)
    targets = {"S*": S_star, "I": torch.eye(n, dtype=torch.float64)}  # (n, n) each
    cases = [
        ("Thm 5.1", "InfoNCE tau=0.5", partial(losses.infonce_loss, temperature=tau), "S*"),
        ("Thm 5.1", "SimCLR tau=0.5", partial(losses.simclr_loss, temperature=tau), "S*"),
        ("Thm 5.1", "DCL tau=0.5", partial(losses.dcl_loss, temperature=tau), "S*"),
        ("Thm 5.1", "DHEL tau=0.5", partial(losses.dhel_loss, temperature=tau), "S*"),
        # eq. (10): ratio 5.0 >= (n-2)/2 = 3, no excessive separation, Thm 5.1 (iii)
        ("Thm 5.1", "SigLIP t=5 b=3", partial(losses.siglip_loss, t=5.0, b=3.0), "S*"),
        # b = 2 separates excessively (Ex. 5.4); within-view negatives (c2 = 1) cure it
        ("Thm 5.1", "SigLIP+within t=5 b=2",
         partial(losses.siglip_loss, t=5.0, b=2.0, within_view=True), "S*"),
        ("not 5.1", "Spectral", partial(losses.spectral_loss, within_view=False), "I"),
        ("not 5.1", "Spectral+within", partial(losses.spectral_loss, within_view=True), "I"),
    ]
    rows = []
    for claim, name, loss_fn, target in cases:
        u, v = optimize_embeddings(loss_fn, n, n, steps=600, seed=seed)
        gap = (u @ v.T - targets[target]).abs().max().item()
        rows.append(_gap(claim, f"{name}: max|UV^T - {target}|", gap, "1e-6"))
    u, v = optimize_embeddings(losses.spectral_loss, n, n - 1, seed=seed)  # slow: 1000 steps
    gap = ((u @ v.T).abs() - targets["S*"].abs()).abs().max().item()
    rows.append(_gap("not 5.1", "Spectral d=n-1: max||UV^T| - |S*||", gap, "1e-6"))
    return rows


def _lab_excessive_separation(seed):
    """Ex. 5.4 at n = d = 8, t = 5: eq. (10) flips between b = 2.7 and b = 2.8."""
    rows = []
    for p in siglip_phase((5.0,), (2.0, 2.7, 2.8), n=8, steps=600, seed=seed):
        quantity, gap = f"SigLIP t=5 b={p['b']:g}: 1 - min s_pos", p["gap"]
        rows.append(_row("Ex. 5.4", quantity, "> 0 (eq.10 true)", gap, gap > 1e-3, "> 1e-3")
                    if p["predicted"] else
                    _row("Ex. 5.4", quantity, "0 (eq.10 false)", gap, gap < 1e-6, "< 1e-6"))
    return rows


def _lab_positive_bound(seed):
    """Thm 5.3, then Thm 5.2 as the exact identity of positive_similarity_bound's proof, n = d = 8.
    The excessively separated SigLIP optimum (t = 5, b = 2) has E[s_neg] < -1/(n-1), which by
    Thm 5.2 forces E[s_pos] < 1. The identity is checked there, on random pairs and on two
    equality cases (u = v, sum_i u_i = 0); 1/n for 1/(n-1) would be off by 1/(n(n-1)) = 0.018."""
    n, d = 8, 8
    siglip = optimize_embeddings(partial(losses.siglip_loss, t=5.0, b=2.0), n, d, steps=600,
                                 seed=seed)
    e_neg, target = float(similarity_stats(*siglip)["neg_mean"]), negative_similarity_optimum(n)
    rows = [_row("Thm 5.3", "SigLIP t=5 b=2: E[s_neg]", f"< {target:.6f}", e_neg,
                 e_neg < target - 1e-3, "< pred - 1e-3")]
    g = torch.Generator().manual_seed(seed)
    u_rand = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)  # (n, d)
    v_rand = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)  # (n, d)
    w = F.normalize(torch.randn(n // 2, d, generator=g, dtype=torch.float64), dim=1)  # (n/2, d)
    antipodal = torch.cat([w, -w])  # (n, d)
    simplex = batch_simplices(n, n, d)  # (n, d)
    for name, (u, v) in [("random u, v", (u_rand, v_rand)), ("SigLIP t=5 b=2", siglip),
                         ("antipodal u = v", (antipodal, antipodal)),
                         ("simplex ETF", (simplex, simplex))]:
        stats = similarity_stats(u, v)
        slack = positive_similarity_bound(stats["neg_mean"], n) - float(stats["pos_mean"])
        a, c = u - u.mean(0), v - v.mean(0)  # (n, d) each, the centred views
        identity = (n * u.mean(0).square().sum() + n * v.mean(0).square().sum()
                    + (a - c).square().sum()).item() / (2 * (n - 1))
        rows.append(_near("Thm 5.2", f"{name}: bound - E[s_pos]", identity, slack, "1e-12"))
    return rows


def _lab_fixed_batches(seed):
    """Thm 5.5: SimCLR (tau = 0.5) on fixed batches at d = n, then the two ends of eq. (11)."""
    loss_fn = partial(losses.simclr_loss, temperature=0.5)
    rows = []
    for n, m in [(8, 2), (8, 4), (12, 3), (12, 4)]:
        S_star = torch.full((m, m), -1 / (m - 1), dtype=torch.float64).fill_diagonal_(1)  # (m, m)
        u, v = optimize_embeddings(loss_fn, n, n, batch_size=m, steps=600, seed=seed)
        stats = similarity_stats(u, v)
        e_neg, var = float(stats["neg_mean"]), float(stats["neg_var"])
        low, high = minibatch_variance_bounds(n, m)
        S = u @ v.T  # (n, n)  its k-th diagonal block S_kk holds batch k's pairs
        block_gap = max((S[k:k + m, k:k + m] - S_star).abs().max().item()
                        for k in range(0, n, m))
        rows += [_row("Thm 5.5", f"n={n} m={m}: Var[s_neg]", (low, high), var,
                      low - 1e-6 <= var <= high + 1e-6, "in +- 1e-6"),
                 # exact, not only approximate: each batch simplex sums to 0, so sum_i u_i = 0
                 _near("Thm 5.5", f"n={n} m={m}: E[s_neg]", negative_similarity_optimum(n),
                       e_neg, "1e-6"),
                 _gap("Thm 5.5", f"n={n} m={m}: max|S_kk - S*_m|", block_gap, "1e-6")]
    # The two ends of eq. (11). Every placement of the batch simplices is optimal (cross-batch
    # pairs are in no loss), so at d = n the optimiser lands in between; at d = m-1 all batches
    # must share one subspace: the upper end. The lower end is built and has the same loss.
    n, m = 12, 4
    low, high = minibatch_variance_bounds(n, m)
    u, v = optimize_embeddings(loss_fn, n, m - 1, batch_size=m, steps=600, seed=seed)
    rows.append(_near("Thm 5.5", f"n={n} m={m} d=m-1: Var[s_neg]", high,
                      float(similarity_stats(u, v)["neg_var"]), "1e-6"))
    trained = sum(loss_fn(u[k:k + m], v[k:k + m]) for k in range(0, n, m)).item()
    w = batch_simplices(n, m, n)  # (n, n)  batch simplices in orthogonal subspaces
    built = sum(loss_fn(w[k:k + m], w[k:k + m]) for k in range(0, n, m)).item()
    rows.append(_near("Thm 5.5", f"n={n} m={m} orthogonal batches: Var", low,
                      float(similarity_stats(w, w)["neg_var"]), "1e-9"))
    rows.append(_near("Thm 5.5", "  ... their loss - optimiser's loss", 0.0, built - trained,
                      "1e-6"))
    return rows


def _lab_batch_gradient(seed):
    """Thm 5.6 on 20 random draws: m1 = 4 < m2 = 8, the first m1 rows of the same embeddings."""
    m1, m2, d, tau = 4, 8, 8, 0.5
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(m2)
    off1, off2 = ~torch.eye(m1, dtype=torch.bool), ~torch.eye(m2, dtype=torch.bool)
    value_gap, autograd_gap, smallest, smaller_minus_larger = 0.0, 0.0, math.inf, math.inf
    for _ in range(20):
        u = F.normalize(torch.randn(m2, d, generator=g, dtype=torch.float64), dim=1)  # (m2, d)
        v = F.normalize(torch.randn(m2, d, generator=g, dtype=torch.float64), dim=1)  # (m2, d)
        S = (u @ v.T).requires_grad_()  # (m2, m2)
        # losses.infonce_loss as a function of S: cross-entropy over the rows and the columns
        loss = 0.5 * F.cross_entropy(S / tau, labels) + 0.5 * F.cross_entropy(S.T / tau, labels)
        (grad,) = torch.autograd.grad(loss, S)  # (m2, m2)
        large = infonce_similarity_gradient(S.detach(), tau)  # (m2, m2)
        small = infonce_similarity_gradient(S.detach()[:m1, :m1], tau)  # (m1, m1)
        value_gap = max(value_gap, abs(loss.item() - losses.infonce_loss(u, v, tau).item()))
        autograd_gap = max(autograd_gap, (grad - large).abs().max().item())
        smallest = min(smallest, large[off2].min().item())
        smaller_minus_larger = min(smaller_minus_larger,
                                   (small - large[:m1, :m1])[off1].min().item())
    return [_gap("Thm 5.6", "L(S) - losses.infonce_loss(u, v)", value_gap, "1e-12"),
            _gap("Thm 5.6", "closed-form dL/dS - autograd", autograd_gap, "1e-12"),
            _row("Thm 5.6", "min_{i!=j} dL/ds_ij at m=8", ">= 0", smallest, smallest >= 0, ">= 0"),
            _row("Thm 5.6", "min_{i!=j} dL_m1/ds_ij - dL_m2/ds_ij", ">= 0",
                 smaller_minus_larger, smaller_minus_larger >= 0, ">= 0")]


def _lab_vrns(seed):
    """Def. 5.7 at n = d = 32, m = 8: L_VRNS alone puts every negative at -1/(n-1) (1e-3 away from
    a wrong -1/n); then vrns_sweep: reshuffling alone nears the simplex slowly, lam speeds it up."""
    n, m, steps = 32, 8, 500
    target = negative_similarity_optimum(n)
    u, v = optimize_embeddings(lambda u, v: losses.vrns_loss(u, v, n), n, n, batch_size=m,
                               fixed_batches=False, steps=steps, seed=seed)
    stats = similarity_stats(u, v)
    rows = [_near("Def. 5.7", "L_VRNS alone reshuffled: E[s_neg]", target,
                  float(stats["neg_mean"]), "1e-4"),
            _gap("Def. 5.7", "L_VRNS alone reshuffled: Var[s_neg]", float(stats["neg_var"]),
                 "1e-4")]
    low, high = minibatch_variance_bounds(n, m)
    fixed_0, fixed_10 = vrns_sweep((0.0, 10.0), True, n, m, steps, seed)
    rows.append(_row("Def. 5.7", "lam=0 fixed: Var[s_neg]", (low, high), fixed_0["neg_var"],
                     low - 1e-6 <= fixed_0["neg_var"] <= high + 1e-6, "in eq. (11)"))
    rows.append(_row("Def. 5.7", "lam=10 fixed: E[s_neg]", f"> {target:.6f}",
                     fixed_10["neg_mean"], fixed_10["neg_mean"] > target + 1e-3, "> pred + 1e-3"))
    previous, tag = fixed_0["neg_var"], "lam=0 fixed"
    for r in vrns_sweep((0.0, 1.0, 10.0), False, n, m, steps, seed):
        rows.append(_near("Def. 5.7", f"lam={r['lam']:g} reshuffled: E[s_neg]", target,
                          r["neg_mean"], "1e-4"))
        rows.append(_row("Def. 5.7", f"lam={r['lam']:g} reshuffled: Var[s_neg]",
                         f"< {previous:.2e} ({tag})", r["neg_var"], r["neg_var"] < previous,
                         "falls"))
        previous, tag = r["neg_var"], f"lam={r['lam']:g}"
    return rows


def run_lab(seed=0):
    """Every lab row, in the order of the paper's section 5."""
    return (_lab_full_batch(seed) + _lab_excessive_separation(seed) + _lab_positive_bound(seed)
            + _lab_fixed_batches(seed) + _lab_batch_gradient(seed) + _lab_vrns(seed))


# ---- Plumbing (skip on a first reading) ----

def _cell(x):
    """A table cell: a string as is, numbers to 6 significant digits."""
    return x if isinstance(x, str) else ", ".join(f"{y:.6g}" for y in np.atleast_1d(x))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the initial embeddings; any passes")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds overhead
    start = time.time()
    rows = run_lab(args.seed)
    for r in [dict(zip(rows[0], rows[0]))] + rows:  # a header, then the rows
        print(f"{r['claim']:<8}  {r['quantity']:<38}  {_cell(r['predicted']):<24}  "
              f"{_cell(r['measured']):<22}  {r['check']:<13}  {r['result']}")
    print("\nnot 5.1: Spectral CL's psi = x^2 is not increasing on [-1, 0], outside Def. 3.2; its "
          "optimum puts\nnegatives at 0 (d >= n) or at +-1/(n-1) (d = n-1), not at -1/(n-1).")
    failed = sum(row["result"] == "FAIL" for row in rows)
    print(f"\n{len(rows) - failed}/{len(rows)} rows pass, seed {args.seed}, "
          f"{time.time() - start:.1f} s wall on 1 CPU thread")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
