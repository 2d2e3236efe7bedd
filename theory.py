"""The theory of Lee, Lim, Lee & Sohn (ICML 2025), section 5: formulas, a numerical lab, figures.

The paper asks what the similarities of the OPTIMAL embeddings are. With a free encoder the
optimum over f is an optimum over the embeddings themselves, so every claim can be checked by
optimising n free unit-norm pairs (u_i, v_i) in R^d and measuring:

    Thm 5.1   full batch, d >= n-1:  s_pos = 1 and every s_neg = -1/(n-1) (a simplex ETF)
    Thm 5.2   any f:  E[s_pos] <= 1 + E[s_neg] + 1/(n-1)                                eq. (7)
    Thm 5.3   phi'(1) < (n-2)/(2(n-1)) psi'(-1/(n-1))  =>  s_pos < 1 ("excessive separation")
    Ex. 5.4   the same condition for SigLIP in closed form                               eq. (10)
    Thm 5.5   fixed batches of m:  (n-m)/((m-1)(n-1)^2) <= Var[s_neg] <= n(n-m)/((m-1)(n-1)^2)
    Thm 5.6   InfoNCE pushes each in-batch negative harder in a smaller batch
    Def. 5.7  the L_VRNS term lowers Var[s_neg] under reshuffled batches

The theorems assume a free encoder with d >= n-1 (d >= m-1 inside a batch) and, for Thm 5.5,
fixed batches. A trained encoder has d = 128 << n = 50,000 and reshuffles its batches every
epoch, so for a real run the formulas are reference lines and trends, not predicted values.

Run (CPU; the tensors are tiny and one thread is fastest):
    python theory.py                   # the lab: 49 predicted-vs-measured rows, PASS/FAIL,
                                       # about 20 s; exit status 1 if a row fails
    python theory.py --plot            # figures/*.png (drawn by figures.py), about a minute:
                                       # Fig. 2, eq. (11) vs m, Ex. 5.4's phases, L_VRNS vs lam
    python theory.py --plot --quick --plot-dir /tmp/figures   # coarse versions, seconds
    python theory.py --run runs/RUN    # a finished training run (RUN/summary.json) vs theory

Shape legend: n = number of pairs (the training-set size in the theory), m = batch size,
b = n / m batches, d = embedding dimension. u, v: (n, d) or (m, d) with unit rows; row i of u and
row i of v are a positive pair. S = u v^T: (n, n), S[i, j] = s_ij = u_i^T v_j.
The formulas, from similarity_stats to optimize_embeddings, are pure and paste alone
into a file that imports math, numbers, numpy as np, torch and torch.nn.functional as F.
"""
import argparse
import json
import math
import numbers
import os
import sys
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

import losses


# ---- The statistics the paper is about (Def. 4.1), measured by every check and every run -------

def similarity_stats(u, v):
    """Def. 4.1: exact mean and population variance of the similarities over ALL pairs, without
    the N x N similarity matrix: O(N d^2) time, O(d^2) extra memory.

    u, v: (N, d), row i of each the two views of instance i (normalised here). Returns 0-d
    tensors on the inputs' device, float64 (float32 on MPS, which has no float64), without a
    host synchronisation, so a training loop can call it every step:
      pos_mean, pos_var       over the N positive pairs s_ii = u_i^T v_i
      neg_mean, neg_var       over the N(N-1) ordered cross-view negatives s_ij = u_i^T v_j, i != j
      within_mean, within_var over the 2N(N-1) ordered within-view negatives u_i^T u_j, v_i^T v_j
    and count = N (a Python int).

    With S = U V^T: sum_ij s_ij = (sum_i u_i)^T (sum_j v_j) and sum_ij s_ij^2 = ||U V^T||_F^2 =
    <U^T U, V^T V>_F, two d x d Gram matrices (16,384 entries at d = 128) instead of one N x N
    matrix (10 GB in float32 at N = 50,000); the negatives subtract the diagonal s_ii, and
    within-view pairs are the case V = U. Float64, because Var = E[s^2] - E[s]^2 cancels
    catastrophically in float32 when the variance is small.
    """
    if u.dim() != 2 or u.shape != v.shape or len(u) < 2:
        raise ValueError(f"need u, v of one shape (N, d), N >= 2; got {u.shape} and {v.shape}")
    dtype = torch.float32 if u.device.type == "mps" else torch.float64
    u = F.normalize(u.detach().to(dtype), dim=1)  # (N, d)
    v = F.normalize(v.detach().to(dtype), dim=1)  # (N, d)
    N = len(u)
    pairs = N * (N - 1)
    pos = (u * v).sum(1)  # (N,)
    su, sv = u.sum(0), v.sum(0)  # (d,), (d,)
    gu, gv = u.T @ u, v.T @ v  # (d, d), (d, d)
    neg_sum = su @ sv - pos.sum()
    neg_sq = (gu * gv).sum() - (pos ** 2).sum()
    norms_u, norms_v = (u * u).sum(1), (v * v).sum(1)  # (N,), (N,)  1, or 0 for a zero row
    within_sum = su @ su - norms_u.sum() + sv @ sv - norms_v.sum()
    within_sq = (gu * gu).sum() - (norms_u ** 2).sum() + (gv * gv).sum() - (norms_v ** 2).sum()
    neg_mean, within_mean = neg_sum / pairs, within_sum / (2 * pairs)
    return {"pos_mean": pos.mean(), "pos_var": pos.var(unbiased=False),
            "neg_mean": neg_mean, "neg_var": neg_sq / pairs - neg_mean ** 2,
            "within_mean": within_mean, "within_var": within_sq / (2 * pairs) - within_mean ** 2,
            "count": N}


# ---- Full batch (Thm 5.1 - 5.3, Ex. 5.4) ---------------------------------------------------------

def negative_similarity_optimum(n):
    """Thm 5.1: the optimal negative similarity with n pairs in one batch, -1/(n-1).

    Why this value: with u_i = v_i unit vectors, sum_{i!=j} u_i^T u_j = ||sum_i u_i||^2 - n >= -n,
    so the mean over the n(n-1) ordered pairs is >= -1/(n-1), with equality iff sum_i u_i = 0.
    Every pair at exactly -1/(n-1) is the regular simplex (needs d >= n-1).
    """
    if not isinstance(n, numbers.Integral) or n < 2:  # True is 1: refused too
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    return -1.0 / (n - 1)


def positive_similarity_bound(mean_neg, n):
    """Thm 5.2, eq. (7): for ANY embeddings of n pairs, E[s_pos] <= 1 + E[s_neg] + 1/(n-1).

    Proof in one line: with centred views a_i = u_i - u_bar, c_i = v_i - v_bar,
        E[s_pos] - E[s_neg] = (1/(n-1)) sum_i a_i^T c_i, and sum_i ||a_i||^2 = n - n ||u_bar||^2,
    so the slack is exactly
        1 + E[s_neg] + 1/(n-1) - E[s_pos]
            = (n ||u_bar||^2 + n ||v_bar||^2 + sum_i ||a_i - c_i||^2) / (2(n-1))  >=  0,
    zero iff u_i = v_i and sum_i u_i = 0. So pushing E[s_neg] below -1/(n-1) forces E[s_pos]
    below 1. mean_neg: the mean over the n(n-1) ordered cross-view pairs of the same n pairs.
    """
    if not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    return 1.0 + float(mean_neg) + 1.0 / (n - 1)


def excessive_separation(dphi_at_1, dpsi_at_threshold, n):
    """Thm 5.3, eq. (8), for L_ind-add with (c1, c2) = (1, 0) and d >= n:

        phi'(1) < (n-2)/(2(n-1)) * psi'(-1/(n-1))   =>   optimum has s_pos < 1, E[s_neg] < -1/(n-1)

    dphi_at_1 = phi'(1), dpsi_at_threshold = psi'(-1/(n-1)), with psi the per-pair penalty as
    written in Def. 3.2 (for SigLIP it carries the factor m - 1 = n - 1): True when the reward
    for aligning a positive is weaker than the penalty's pull on the negatives. Reversed
    (strictly), Thm 5.1 (iii) gives the simplex instead.
    """
    if not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    return float(dphi_at_1) < (n - 2) / (2 * (n - 1)) * float(dpsi_at_threshold)


def siglip_excessive_separation(t, b, n):
    """Ex. 5.4, eq. (10): SigLIP (paper's sign convention, logit t x - b) over n pairs in one
    batch separates excessively iff

        (1 + e^{t/(n-1) + b}) / (1 + e^{t - b}) < (n - 2) / 2.

    It is eq. (8) with phi'(x) = t / (1 + e^{tx - b}), psi'(x) = (n-1) t e^{tx-b} / (1 + e^{tx-b}):
    psi'(-1/(n-1)) = (n-1) t / (1 + e^{t/(n-1) + b}). SigLIP's own bias b' (logit t x + b') is
    b' = -b: its init t = 10, b' = -10 is b = 10 here. At n = 2 the right-hand side is 0 and the
    ratio never falls below it.
    """
    if not (isinstance(n, numbers.Integral) and n >= 2 and 0 < t < math.inf
            and math.isfinite(b)):
        raise ValueError(f"need an integer n >= 2, a finite t > 0 and a finite b; got n = {n!r}, "
                         f"t = {t!r}, b = {b!r}")
    # compared in log space, log(1 + e^x) = logaddexp(0, x), so that t = 1000 does not overflow
    log_ratio = np.logaddexp(0.0, t / (n - 1) + b) - np.logaddexp(0.0, t - b)
    return n > 2 and bool(log_ratio < math.log((n - 2) / 2))


# ---- Mini-batches (Thm 5.5, Thm 5.6) -------------------------------------------------------------

def within_batch_negative_similarity(m):
    """Thm 5.5: inside each batch of m the optimum is an (m-1)-simplex, negatives at -1/(m-1).
    A smaller batch pushes its negatives further apart than the full-batch -1/(n-1)."""
    if not isinstance(m, numbers.Integral) or m < 2:
        raise ValueError(f"m must be an integer >= 2, got {m!r}")
    return -1.0 / (m - 1)


def minibatch_variance_bounds(n, m):
    """Thm 5.5, eq. (11): at the optimum of the sum of the b = n/m fixed batch losses,

        (n-m) / ((m-1)(n-1)^2)  <=  Var[s_neg]  <=  n(n-m) / ((m-1)(n-1)^2).

    Where they come from: each batch is a centred (m-1)-simplex, so E[s_neg] = -1/(n-1) and only
    the cross-batch pairs are free. Low: batch simplices in orthogonal subspaces (cross-batch
    s = 0; needs d >= b(m-1)). High: all batches share one simplex (cross-batch s = 1 or
    -1/(m-1)). Both are 0 at m = n. n = 4, m = 2 gives [2/9, 8/9] (Fig. 2).
    The theorem assumes m divides n; for other n (a dropped last batch) the formula is read as
    a smooth interpolation.
    """
    if not (isinstance(n, numbers.Integral) and isinstance(m, numbers.Integral) and 2 <= m <= n):
        raise ValueError(f"need integers n >= m >= 2 (batches of m out of n pairs), got n = {n!r},"
                         f" m = {m!r}")
    low = (n - m) / ((m - 1) * (n - 1) ** 2)
    return low, n * low


def batch_simplices(n, m, d, shared=False):
    """An optimum of the fixed-batch objective (Thm 5.5): u_i = v_i, each batch I_k a regular
    (m-1)-simplex. shared=False puts the b simplices in orthogonal subspaces (the variance lower
    bound of eq. (11); needs d >= b(m-1)); shared=True gives every batch the same simplex (the
    upper bound; needs d >= m-1). m = n is the full-batch simplex ETF of Thm 5.1.
    Returns u (n, d) float64 with unit rows; use v = u.
    """
    if not (2 <= m <= n and n % m == 0 and d >= (m - 1 if shared else n - n // m)):
        raise ValueError(f"need 2 <= m <= n with m dividing n, and d >= m-1 for one shared simplex"
                         f" or d >= b(m-1) for b = n/m orthogonal ones; got n = {n}, m = {m}, "
                         f"d = {d}, shared = {shared}")
    # Gram of the simplex: G = (m/(m-1)) (I - 11^T/m); its top m-1 eigenvectors, scaled by
    # sqrt(m/(m-1)), give coordinates in R^{m-1}.
    gram = m / (m - 1) * (torch.eye(m, dtype=torch.float64) - 1.0 / m)  # (m, m)
    _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues: 0 first
    simplex = vectors[:, 1:] * math.sqrt(m / (m - 1))  # (m, m-1)
    u = torch.zeros(n, d, dtype=torch.float64)  # (n, d)
    for k in range(n // m):
        col = 0 if shared else k * (m - 1)
        u[k * m:(k + 1) * m, col:col + m - 1] = simplex
    return u


def infonce_similarity_gradient(S, tau):
    """Thm 5.6: the gradient of symmetric InfoNCE with respect to the similarity matrix.

    L(S) = 1/2 CE(rows of S/tau) + 1/2 CE(columns of S/tau), each a mean over the m anchors, so

        dL/ds_ij = (1/(2 m tau)) [ softmax_j(S_i. / tau) + softmax_i(S_.j / tau) - 2 [i = j] ].

    Off the diagonal both softmaxes are positive; a smaller m has fewer terms in each
    denominator and a larger 1/m, hence Thm 5.6: every in-batch negative is pushed harder.
    S: (m, m). Returns (m, m).
    """
    m = S.shape[0]
    rows = torch.softmax(S / tau, dim=1)  # (m, m)  row i sums to 1
    cols = torch.softmax(S / tau, dim=0)  # (m, m)  column j sums to 1
    eye = torch.eye(m, dtype=S.dtype, device=S.device)  # (m, m)
    return (rows + cols - 2 * eye) / (2 * m * tau)


# ---- The optimal embeddings, found numerically ---------------------------------------------------

def optimize_embeddings(loss_fn, n, d, batch_size=None, fixed_batches=True, steps=1000, lr=0.2,
                        seed=0):
    """Minimise loss_fn over n free unit-norm pairs in R^d: the "optimal encoder" of section 5.

    loss_fn(u, v) -> scalar, u, v: (m, d), e.g. partial(losses.simclr_loss, temperature=0.5).
    batch_size None: the full batch, L(U, V). Otherwise m = batch_size must divide n and each
    step minimises sum_k L(U_[I_k], V_[I_k]) over the b = n/m batches: Thm 5.5's fixed
    I_k = [m(k-1)+1 : mk] when fixed_batches, else a fresh random partition every step
    (reshuffling, as in practice). Free vectors normalised in the forward pass, Adam with the lr
    cosine-decayed to 0 so that the last steps settle into the minimum, float64, deterministic
    for a seed. Flat losses (SigLIP with large t and b, near eq. (10)'s boundary) need more
    steps. The tensors are tiny: torch.set_num_threads(1) runs faster, most on a busy CPU.
    Returns u, v: (n, d), unit rows, detached.
    """
    m = n if batch_size is None else batch_size
    if not (2 <= m <= n and n % m == 0 and d >= 1 and steps >= 1 and lr > 0):
        raise ValueError(f"need 2 <= m <= n with m dividing n (b = n/m equal batches), d >= 1, "
                         f"steps >= 1 and lr > 0; got n = {n}, m = {m}, d = {d}, steps = {steps},"
                         f" lr = {lr}")
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()  # (n, d)
    V = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()  # (n, d)
    opt = torch.optim.Adam([U, V], lr=lr)
    for step in range(steps):
        opt.param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        u, v = F.normalize(U, dim=1), F.normalize(V, dim=1)  # (n, d) each
        order = torch.arange(n) if fixed_batches else torch.randperm(n, generator=g)  # (n,)
        loss = sum(loss_fn(u[I], v[I]) for I in order.view(n // m, m))  # I: (m,)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return F.normalize(U.detach(), dim=1), F.normalize(V.detach(), dim=1)


# ---- A finished training run against the theory --------------------------------------------------

def compare_with_theory(stats, n, m):
    """Rows {'quantity', 'predicted', 'measured', 'note'}: the similarity_stats of a sample of
    pairs (floats or 0-d tensors; 'count' pairs) against section 5, for a run on n training
    pairs in batches of m. A real run has d << n and reshuffles, and its Var[s_neg] sits far
    above eq. (11): compare trends across runs, not values. The one exact statement is Thm 5.2,
    true for any f, so a violation means wrong statistics; it bounds the mean over the sample's
    own pairs, so it takes the sample's count, not n."""
    missing = [key for key in ("pos_mean", "neg_mean", "neg_var", "count") if key not in stats]
    if missing:
        raise ValueError(f"similarity stats lack {', '.join(missing)}")
    e_pos, e_neg, var_neg = (float(stats[key]) for key in ("pos_mean", "neg_mean", "neg_var"))
    count = int(stats["count"])
    bound = positive_similarity_bound(e_neg, count)
    low, high = minibatch_variance_bounds(n, m)
    # 1e-4: room for float32 statistics; the identity behind eq. (7) is exact.
    holds = e_pos <= bound + 1e-4
    place = "inside" if low <= var_neg <= high else ("above" if var_neg > high else "below")
    return [
        {"quantity": "E[s_neg]", "predicted": negative_similarity_optimum(n), "measured": e_neg,
         "note": "Thm 5.1/5.5 optimum -1/(n-1), free encoder with d >= n-1"},
        {"quantity": "E[s_pos]", "predicted": bound, "measured": e_pos,
         "note": (f"Thm 5.2: <= 1 + E[s_neg] + 1/({count}-1) (sampled pairs) "
                  + ("holds" if holds else "VIOLATED, impossible for any f: check the stats"))},
        {"quantity": "Var[s_neg]", "predicted": (low, high), "measured": var_neg,
         "note": f"eq. (11) at n = {n}, m = {m}: measured is {place}"},
        {"quantity": "within-batch s_neg", "predicted": within_batch_negative_similarity(m),
         "measured": None, "note": "Thm 5.5 optimum -1/(m-1) inside a batch (reference)"},
    ]


def _cell(x):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (tuple, list)):
        return "[" + ", ".join(_cell(y) for y in x) + "]"
    x = float(x)
    return f"{x:.6f}" if 1e-3 <= abs(x) < 1e3 else ("0" if x == 0 else f"{x:.2e}")


def format_table(rows):
    """A fixed-width text table of dict rows; columns are the keys in order of first use."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(key, "")) for key in columns] for row in rows]
    widths = [max(len(c), *(len(line[k]) for line in cells)) for k, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    return "\n".join(lines)


# ---- Experiments on free embeddings: the numbers behind the lab and the figures ------------------

def figure2_configurations():
    """Fig. 2: n = 4 pairs in R^3 with u_i = v_i, three optima. One dict per configuration:
    'name', 'u' (4, 3), 'm' (its batches are rows [0, m), [m, 2m), ...), and 'neg_mean' and
    'neg_var' by similarity_stats: E[s_neg] = -1/3 in all three; Var[s_neg] is 8/9 when both
    batches {1, 2}, {3, 4} use one antipodal pair, 2/9 when the two pairs lie on orthogonal lines
    (both optima of the fixed-batch loss), and 0 for the full-batch optimum, a tetrahedron."""
    result = []
    for name, m, shared in [("mini-batch optimum, maximum variance", 2, True),
                            ("mini-batch optimum, minimum variance", 2, False),
                            ("full-batch optimum, a tetrahedron", 4, False)]:
        u = batch_simplices(4, m, 3, shared=shared)  # (4, 3)
        stats = similarity_stats(u, u)
        result.append({"name": name, "u": u, "m": m, "neg_mean": float(stats["neg_mean"]),
                       "neg_var": float(stats["neg_var"])})
    return result


def variance_vs_batch(n=24, ms=(2, 3, 4, 6, 8, 12), steps=300, seed=0):
    """Thm 5.5 against the batch size: SimCLR (tau = 0.5) on n free pairs in R^n, trained on
    fixed batches and on batches reshuffled every step. One dict per m: eq. (11)'s 'low' and
    'high', and the measured Var[s_neg] of each, 'fixed' and 'reshuffled'. Fixed batches land
    inside eq. (11); reshuffled batches let every pair meet, and head for the full-batch simplex
    (Var = 0)."""
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
    """Ex. 5.4 over a (t, b) grid: one dict per point with eq. (10)'s prediction 'predicted' and
    the measured 'gap' = 1 - min_i s_pos of the full-batch SigLIP optimum of n free pairs in
    R^n. Where eq. (10) is false the optimum is the simplex (gap 0, Thm 5.1 (iii)); with
    within_view=True it is the simplex everywhere (Thm 5.1 (ii)). Large t and b make the loss
    flat: there a few hundred steps leave a small gap where the theory has none."""
    points = []
    for b in bs:
        for t in ts:
            loss_fn = partial(losses.siglip_loss, t=t, b=b, within_view=within_view)
            u, v = optimize_embeddings(loss_fn, n, n, steps=steps, seed=seed)
            points.append({"t": t, "b": b, "predicted": siglip_excessive_separation(t, b, n),
                           "gap": 1 - (u * v).sum(1).min().item()})
    return points


def vrns_sweep(lams, fixed_batches, n=32, m=8, steps=500, seed=0):
    """Def. 5.7: SimCLR (tau = 0.5) + lam L_VRNS on n free pairs in R^n, batches of m, one
    optimisation per lam. Returns dicts {'lam', 'neg_mean', 'neg_var'}. Reshuffled batches:
    E[s_neg] stays at -1/(n-1) (SimCLR alone holds it there: it drives sum_i u_i to 0) and
    Var[s_neg] falls with lam. Fixed batches: cross-batch pairs never meet in a loss, and the
    term lifts E[s_neg] instead."""
    rows = []
    for lam in lams:
        def loss_fn(u, v, lam=lam):
            return losses.simclr_loss(u, v, 0.5) + lam * losses.vrns_loss(u, v, n)

        u, v = optimize_embeddings(loss_fn, n, n, batch_size=m, fixed_batches=fixed_batches,
                                   steps=steps, seed=seed)
        stats = similarity_stats(u, v)
        rows.append({"lam": lam, "neg_mean": float(stats["neg_mean"]),
                     "neg_var": float(stats["neg_var"])})
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


def _simplex_gram(k):
    """S* of the (k-1)-simplex with u = v: 1 on the diagonal, -1/(k-1) off it. (k, k)"""
    return k / (k - 1) * torch.eye(k, dtype=torch.float64) - 1.0 / (k - 1)


def _lab_full_batch(seed):
    """Thm 5.1 for every loss of Tables 2-3 at n = d = 8: UV^T equals S* entrywise. Spectral CL
    is outside Def. 3.2 (psi = x^2 is not increasing on [-1, 0]): its penalty is least at s = 0,
    so UV^T = I when d >= n, and at d = n-1 a tight frame, |s_ij| = 1/(n-1) with free signs."""
    n, tau = 8, 0.5
    targets = {"S*": _simplex_gram(n), "I": torch.eye(n, dtype=torch.float64)}  # (n, n) each
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
    """Thm 5.3, then Thm 5.2 as the exact identity of positive_similarity_bound's proof, at
    n = d = 8. The excessively separated SigLIP optimum (t = 5, b = 2) has E[s_neg] below
    -1/(n-1), which by Thm 5.2 forces E[s_pos] below 1. The identity is checked there, on random
    pairs and on two equality cases (u = v, sum_i u_i = 0). A bound with 1/n in place of
    1/(n-1) would be off by 1/(n(n-1)) = 0.018."""
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
        u, v = optimize_embeddings(loss_fn, n, n, batch_size=m, steps=600, seed=seed)
        stats = similarity_stats(u, v)
        e_neg, var = float(stats["neg_mean"]), float(stats["neg_var"])
        low, high = minibatch_variance_bounds(n, m)
        S = u @ v.T  # (n, n)  its k-th diagonal block S_kk holds batch k's pairs
        block_gap = max((S[k:k + m, k:k + m] - _simplex_gram(m)).abs().max().item()
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


def _lab_figure2():
    """Fig. 2: E[s_neg] = -1/3 and Var[s_neg] = 8/9, 2/9, 0 for its three configurations."""
    rows = []
    for config, var in zip(figure2_configurations(), (8 / 9, 2 / 9, 0.0)):
        ok = abs(config["neg_mean"] + 1 / 3) < 1e-12 and abs(config["neg_var"] - var) < 1e-12
        rows.append(_row("Fig. 2", f"{config['name']}: E, Var", (-1 / 3, var),
                         (config["neg_mean"], config["neg_var"]), ok, "+- 1e-12"))
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
            _row("Thm 5.6", "min_{i!=j} dL/ds_ij at m=8", ">= 0", smallest, smallest >= 0,
                 ">= 0"),
            _row("Thm 5.6", "min_{i!=j} dL_m1/ds_ij - dL_m2/ds_ij", ">= 0",
                 smaller_minus_larger, smaller_minus_larger >= 0, ">= 0")]


def _lab_vrns(seed):
    """Def. 5.7 at n = d = 32, m = 8, 500 steps: L_VRNS alone puts every negative at its target
    -1/(n-1) (1e-3 away from a wrong -1/n); then vrns_sweep. Reshuffling alone heads slowly for
    the full-batch simplex; lam speeds it up."""
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
            + _lab_fixed_batches(seed) + _lab_figure2() + _lab_batch_gradient(seed)
            + _lab_vrns(seed))


# ---- Figures (--plot): the experiments above, drawn by figures.py --------------------------------

def plot_figures(out_dir, quick=False, seed=0):
    """Write the four figures as PNGs into out_dir (quick: coarse grids, few steps); print and
    return their paths. figures.py, and with it matplotlib, is imported here only."""
    import figures

    n, ms, steps = (12, (3, 6), 100) if quick else (24, (2, 3, 4, 6, 8, 12), 300)
    ts, bs, phase_steps = (((1.0, 10.0), (-2.0, 6.0), 100) if quick else
                           ((1.0, 4.0, 7.0, 10.0), (-2.0, 0.0, 2.0, 4.0, 6.0), 600))
    lams, vrns_steps = ((0.0, 10.0), 100) if quick else ((0.0, 0.3, 1.0, 3.0, 10.0, 30.0), 500)
    T, B = np.meshgrid(np.linspace(0.2, 11, 300), np.linspace(-3, 7, 300))  # (300, 300) each
    draw = {  # Ex. 5.4 at n = 8; Def. 5.7 at n = 32, m = 8
        "fig2_configurations.png": lambda: figures.figure2(figure2_configurations()),
        "thm55_variance_vs_batch.png": lambda: figures.variance_vs_batch(
            variance_vs_batch(n, ms, steps, seed), n, steps),
        "ex54_siglip_phase.png": lambda: figures.siglip_phase(
            T, B, np.vectorize(lambda t, b: siglip_excessive_separation(t, b, 8))(T, B),
            [siglip_phase(ts, bs, 8, within, phase_steps, seed) for within in (False, True)],
            8, phase_steps),
        "def57_vrns_sweep.png": lambda: figures.vrns_sweep(
            lams, *(vrns_sweep(lams, fixed, 32, 8, vrns_steps, seed) for fixed in (False, True)),
            negative_similarity_optimum(32), minibatch_variance_bounds(32, 8), 32, 8, vrns_steps)}
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, make in draw.items():
        start = time.time()
        paths.append(os.path.join(out_dir, name))
        make().savefig(paths[-1], dpi=110)
        print(f"{paths[-1]}: {time.time() - start:.1f} s")
    return paths


# ---- The command line ---------------------------------------------------------------------------

def _compare_run(out_dir):
    """Table for `--run`: reads out_dir/summary.json written by train.py."""
    with open(os.path.join(out_dir, "summary.json")) as f:
        summary = json.load(f)
    n, m = summary["n_train"], summary["args"]["batch_size"]
    table = format_table(compare_with_theory(summary["table1_stats"], n, m))
    return (f"{out_dir}: n = {n} training pairs, batch size m = {m}\n{table}\n"
            "The theorems assume a free encoder with d >= n-1 and fixed batches; a trained "
            "encoder has\nd << n and reshuffles, so compare trends across runs, not values.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", metavar="OUT_DIR", default=None,
                        help="compare a finished training run (OUT_DIR/summary.json) with the "
                             "theory instead of running the lab; default: run the lab")
    parser.add_argument("--plot", action="store_true",
                        help="write the theory's four figures as PNGs to --plot-dir instead of "
                             "running the lab (about a minute on one CPU thread)")
    parser.add_argument("--plot-dir", default="figures",
                        help="directory for --plot's PNGs (default: figures)")
    parser.add_argument("--quick", action="store_true",
                        help="with --plot: coarse grids and few steps, seconds instead of a "
                             "minute; for a smoke test, not for reading")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initial embeddings (default 0); every lab row should "
                             "pass for any seed")
    args = parser.parse_args(argv)
    if args.run is not None:
        try:
            print(_compare_run(args.run))
            return 0
        except KeyError as e:
            why = f"summary.json lacks key {e}"
        except (OSError, ValueError, TypeError) as e:
            why = f"{type(e).__name__}: {e}"
        print(f"theory.py --run {args.run}: {why}", file=sys.stderr)
        return 2
    # The tensors are tiny: a second thread only adds overhead, most when the cores are shared.
    torch.set_num_threads(1)
    start = time.time()
    if args.plot:
        plot_figures(args.plot_dir, quick=args.quick, seed=args.seed)
        print(f"{time.time() - start:.1f} s wall on 1 CPU thread")
        return 0
    rows = run_lab(args.seed)
    print(format_table(rows))
    print("\nnot 5.1: Spectral CL's psi = x^2 is not increasing on [-1, 0], outside Def. 3.2; its "
          "optimum puts\nnegatives at 0 (d >= n) or at +-1/(n-1) (d = n-1), not at -1/(n-1).")
    failed = sum(row["result"] == "FAIL" for row in rows)
    print(f"\n{len(rows) - failed}/{len(rows)} rows pass, seed {args.seed}, "
          f"{time.time() - start:.1f} s wall on 1 CPU thread")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
