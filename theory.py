"""The theory of Lee, Lim, Lee & Sohn (ICML 2025), section 5: the statistics and the formulas.

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

    python theory.py 50000 128       # the predictions at n = 50,000 pairs in batches of m = 128
    python theory.py --run runs/RUN  # a finished training run (RUN/summary.json) vs the theory

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

import numpy as np
import torch
import torch.nn.functional as F


# ---- The statistics the paper is about (Def. 4.1), measured by every check and every run ---------

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
        raise ValueError(f"need 2 <= m <= n, m dividing n, d >= m-1 (shared) or b(m-1) (b = n/m "
                         f"orthogonal simplices); got n = {n}, m = {m}, d = {d}, shared = {shared}")
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
        raise ValueError(f"need 2 <= m <= n with m dividing n, d >= 1, steps >= 1 and lr > 0; "
                         f"got n = {n}, m = {m}, d = {d}, steps = {steps}, lr = {lr}")
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


# ---- Beside numbers: Fig. 2's three optima, and a finished training run --------------------------

def figure2_configurations():
    """Fig. 2: n = 4 pairs in R^3 with u_i = v_i, three optima, each a dict of 'name', 'u' (4, 3),
    'm' (batches: rows [0, m), [m, 2m), ...), 'neg_mean' and 'neg_var': E[s_neg] = -1/3 in all
    three; Var[s_neg] = 8/9 when batches {1, 2}, {3, 4} share one antipodal pair, 2/9 when the
    pairs lie on orthogonal lines (both fixed-batch optima), 0 for the full-batch tetrahedron."""
    result = []
    for name, m, shared in [("mini-batch optimum, maximum variance", 2, True),
                            ("mini-batch optimum, minimum variance", 2, False),
                            ("full-batch optimum, a tetrahedron", 4, False)]:
        u = batch_simplices(4, m, 3, shared=shared)  # (4, 3)
        stats = similarity_stats(u, u)
        result.append({"name": name, "u": u, "m": m, "neg_mean": float(stats["neg_mean"]),
                       "neg_var": float(stats["neg_var"])})
    return result


def compare_with_theory(stats, n, m):
    """Rows {'quantity', 'predicted', 'measured', 'note'}: the similarity_stats of a sample of
    pairs (floats or 0-d tensors; 'count' pairs) of a run on n training pairs in batches of m,
    against section 5 (a trained encoder's Var[s_neg] sits far above eq. (11)). Thm 5.2 holds
    for any f: a violation means wrong statistics. It bounds the mean over the sample's own
    pairs, so it takes the sample's count, not n."""
    e_pos, e_neg, var_neg = (float(stats[key]) for key in ("pos_mean", "neg_mean", "neg_var"))
    count = int(stats["count"])
    bound = positive_similarity_bound(e_neg, count)
    low, high = minibatch_variance_bounds(n, m)
    holds = e_pos <= bound + 1e-4  # room for float32 statistics; eq. (7)'s identity is exact
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


# ---- Plumbing (skip on a first reading) ----

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("n", type=int, nargs="?", help="training-set size n (pairs), e.g. 50000")
    p.add_argument("m", type=int, nargs="?", help="batch size m (pairs), 2 <= m <= n")
    p.add_argument("--run", metavar="RUN", help="instead: a finished train.py run's Table 1 "
                   "statistics (RUN/summary.json) against the theory")
    args = p.parse_args(argv)
    if args.run is None:
        if args.n is None or args.m is None or not 2 <= args.m <= args.n:
            p.error("give N M with 2 <= M <= N (e.g. 50000 128), or --run RUN")
        low, high = minibatch_variance_bounds(args.n, args.m)
        print(f"E[s_neg] optimum -1/(n-1) = {negative_similarity_optimum(args.n):.6g} (Thm 5.1)\n"
              f"in-batch s_neg optimum -1/(m-1) = {within_batch_negative_similarity(args.m):.6g}\n"
              f"Var[s_neg] in [{low:.6g}, {high:.6g}] (eq. (11), fixed batches)")
        return 0
    try:
        with open(os.path.join(args.run, "summary.json")) as f:
            s = json.load(f)
        rows = compare_with_theory(s["table1_stats"], s["n_train"], s["args"]["batch_size"])
    except (OSError, KeyError, TypeError, ValueError) as e:
        print(f"theory.py --run {args.run}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print_rows(rows)
    return 0


def print_rows(rows):
    """compare_with_theory's rows, one a line (for a trained encoder: trends, not values)."""
    for r in rows:
        predicted, measured = ("-" if r[k] is None else ", ".join(
            f"{x:.4g}" for x in np.atleast_1d(r[k])) for k in ("predicted", "measured"))
        print(f"{r['quantity']:<19} predicted {predicted:<20} measured {measured:<8} {r['note']}")


if __name__ == "__main__":
    sys.exit(main())
