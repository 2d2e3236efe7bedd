"""Evaluation: exact similarity statistics (Def. 4.1), linear probe and kNN accuracy.

Shape legend: n = embeddings (training-set size), d = embedding dimension.
"""
import torch
import torch.nn.functional as F


def similarity_stats(u, v):
    """Exact mean and variance of the paper's similarities (Def. 4.1) over ALL pairs, without
    ever building the n x n similarity matrix: O(n d^2) time, O(d^2) extra memory.

    u, v: (n, d), row i of each the two views of instance i (normalised here). Returns floats:
      pos_mean, pos_var       over the n positive pairs s_ii = u_i^T v_i
      neg_mean, neg_var       over the n(n-1) ordered cross-view negatives s_ij = u_i^T v_j, i != j
      within_mean, within_var over the 2 n(n-1) ordered within-view negatives u_i^T u_j, v_i^T v_j
      n
    Variances are population variances (divide by the pair count).

    The identities. Let S = U V^T, so s_ij = u_i^T v_j. Its total is
        sum_{i,j} s_ij = sum_i u_i^T sum_j v_j = (sum_i u_i)^T (sum_j v_j),
    so sum_{i!=j} s_ij = (sum u)^T (sum v) - sum_i s_ii. Its squared total is
        sum_{i,j} s_ij^2 = ||U V^T||_F^2 = tr(V U^T U V^T) = tr(U^T U V^T V) = <U^T U, V^T V>_F,
    two d x d Gram matrices instead of one n x n matrix, so
        sum_{i!=j} s_ij^2 = <U^T U, V^T V>_F - sum_i s_ii^2,
    and Var = E[s^2] - E[s]^2. Within-view pairs are the case V = U.
    At n = 50,000, d = 128 the n x n matrix would hold 2.5e9 entries (10 GB in float32); the Gram
    matrices hold 16,384. The sums run in float64 because E[s^2] - E[s]^2 cancels
    catastrophically in float32 when the variance is small.
    """
    if u.dim() != 2 or u.shape != v.shape or u.shape[0] < 2:
        raise ValueError(f"u and v must both have shape (n, d) with n >= 2; got {tuple(u.shape)} "
                         f"and {tuple(v.shape)}")
    u = F.normalize(u.detach().double(), dim=1)  # (n, d)
    v = F.normalize(v.detach().double(), dim=1)  # (n, d)
    n = u.shape[0]
    pairs = n * (n - 1)
    pos = (u * v).sum(1)  # (n,)
    su, sv = u.sum(0), v.sum(0)  # (d,), (d,)
    gu, gv = u.T @ u, v.T @ v  # (d, d), (d, d)
    neg_sum = su @ sv - pos.sum()
    neg_sq = (gu * gv).sum() - (pos ** 2).sum()
    norms_u, norms_v = (u * u).sum(1), (v * v).sum(1)  # (n,), (n,)  1, or 0 for a zero row
    within_sum = su @ su - norms_u.sum() + sv @ sv - norms_v.sum()
    within_sq = (gu * gu).sum() - (norms_u ** 2).sum() + (gv * gv).sum() - (norms_v ** 2).sum()
    neg_mean, within_mean = neg_sum / pairs, within_sum / (2 * pairs)
    return {
        "pos_mean": pos.mean().item(),
        "pos_var": pos.var(unbiased=False).item(),
        "neg_mean": neg_mean.item(),
        "neg_var": (neg_sq / pairs - neg_mean ** 2).item(),
        "within_mean": within_mean.item(),
        "within_var": (within_sq / (2 * pairs) - within_mean ** 2).item(),
        "n": n,
    }
