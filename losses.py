"""Contrastive losses of Lee, Lim, Lee & Sohn (ICML 2025), one pure function each.

Every function takes the two views' embeddings of one batch and returns a scalar tensor:

    u, v : (m, d)   row i of u and row i of v are a positive pair (two augmentations of image i)

Shape legend: m = pairs in the batch, d = embedding dimension, n = training-set size.
All similarities are cosine similarities, so every function L2-normalises u and v first; the
losses are therefore invariant to a positive rescaling of any row. The normalisation of each loss
(1/m, 1/(m(m-1)), ...) is exactly the paper's, so values can be compared with its formulas.

Two kinds of functions live here:
  * the *families* of Def. 3.1 and Def. 3.2, written literally with user-supplied phi and psi,
    for reading the paper side by side and for checking the named losses;
  * the *named* losses (InfoNCE/CLIP, SimCLR, DCL, DHEL, SigLIP, Spectral CL) and the paper's
    auxiliary loss (Def. 5.7), written with log-sum-exp / cross-entropy so that they stay finite
    in float32 at temperature 0.01 (the literal exp(x / tau) overflows there: exp(2 / 0.01)).

Nothing here reads flags, moves tensors between devices or talks to torch.distributed: under
data parallelism the training loop gathers u and v first and passes plain tensors.

Try it (CPU, instant):
    python -c "import torch, losses; print(losses.simclr_loss(*torch.randn(2, 8, 16), 0.5))"
"""
import math
import numbers

import torch
import torch.nn.functional as F


def _normalized_pair(u, v):
    """Check shapes and return the L2-normalised views. A zero row has no direction: it stays 0."""
    if not (isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor)):
        raise ValueError(f"u and v must be tensors, got {type(u).__name__} and {type(v).__name__}")
    if u.dim() != 2 or u.shape != v.shape:
        raise ValueError(f"u and v must both have shape (m, d); got {tuple(u.shape)} and "
                         f"{tuple(v.shape)}")
    if u.shape[0] < 2:
        raise ValueError(f"a contrastive loss needs m >= 2 pairs per batch, got m = {u.shape[0]}")
    return F.normalize(u, dim=1), F.normalize(v, dim=1)


def _check_positive(name, value):
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _off_diagonal(m, device):
    return ~torch.eye(m, dtype=torch.bool, device=device)  # (m, m), True where i != j


# --------------------------------------------------------------------------------------------
# The two families, written literally (teaching and testing; not overflow-safe)
# --------------------------------------------------------------------------------------------

def infonce_family_loss(u, v, phi, psi, c1, c2):
    """Def. 3.1, eq. (2): L_info-sym = 1/2 L_info(U, V) + 1/2 L_info(V, U), with

        L_info(U, V) = (1/m) sum_i psi( c1 sum_{j!=i} phi((v_j - v_i)^T u_i)
                                      + c2 sum_{j!=i} phi((u_j - v_i)^T u_i) ).

    phi, psi: elementwise callables, e.g. phi = exp(x / tau), psi = log(1 + x) for InfoNCE.
    (c1, c2) = (1, 0) cross-view negatives only, (0, 1) within-view only, (1, 1) both.
    Written as the paper writes it, so exp(x / tau) overflows float32 once 2 / tau > 88:
    use the named losses below for training.
    """
    u, v = _normalized_pair(u, v)
    off = _off_diagonal(u.shape[0], u.device)  # (m, m)

    def half(a, b):  # L_info(A, B): anchors a_i, positives b_i
        pos = (a * b).sum(1, keepdim=True)  # (m, 1)  a_i^T b_i
        cross = phi(a @ b.T - pos) * off  # (m, m)  phi((b_j - b_i)^T a_i), j != i
        within = phi(a @ a.T - pos) * off  # (m, m)  phi((a_j - b_i)^T a_i), j != i
        return psi(c1 * cross.sum(1) + c2 * within.sum(1)).mean()

    return 0.5 * half(u, v) + 0.5 * half(v, u)


def independently_additive_loss(u, v, phi, psi, c1, c2):
    """Def. 3.2, eq. (3):

        L_ind-add = -(1/m) sum_i phi(u_i^T v_i)
                    + c1 / (m(m-1))  sum_{i!=j} psi(u_i^T v_j)
                    + c2 / (2m(m-1)) sum_{i!=j} [psi(u_i^T u_j) + psi(v_i^T v_j)]

    phi concave increasing (rewards positives), psi convex increasing (penalises negatives).
    """
    u, v = _normalized_pair(u, v)
    m = u.shape[0]
    off = _off_diagonal(m, u.device)  # (m, m)
    pos = (u * v).sum(1)  # (m,)
    cross = (psi(u @ v.T) * off).sum()
    within = (psi(u @ u.T) * off).sum() + (psi(v @ v.T) * off).sum()
    return -phi(pos).mean() + c1 * cross / (m * (m - 1)) + c2 * within / (2 * m * (m - 1))


# --------------------------------------------------------------------------------------------
# Def. 3.1 losses (Table 2), overflow-safe. Each is the mean of the u- and v-anchored halves.
# --------------------------------------------------------------------------------------------

def infonce_loss(u, v, temperature):
    """InfoNCE / CLIP (Oord 2018; Radford 2021): Def. 3.1 with (c1, c2) = (1, 0).

    u-anchored half: -log( e^{u_i^T v_i / tau} / sum_j e^{u_i^T v_j / tau} ), i.e. just
    cross-entropy over the rows of U V^T / tau with target i; the v-anchored half is the same
    over its columns (CLIP's loss). tau around 0.1-0.5 in practice; the paper sweeps
    {0.1, ..., 0.5}.
    """
    _check_positive("temperature", temperature)
    u, v = _normalized_pair(u, v)
    logits = u @ v.T / temperature  # (m, m)  logits[i, j] = u_i^T v_j / tau
    # = 0.5 * F.cross_entropy(logits, arange(m)) + 0.5 * F.cross_entropy(logits.T, arange(m)),
    # written with log-sum-exp over rows and columns: the transposed cross-entropy copies the
    # (m, m) matrix, which took forward + backward at m = 1024 from 1.36x to 1.57x the time of
    # one cross-entropy on 2 CPU cores (bench.py).
    lse = 0.5 * torch.logsumexp(logits, 1) + 0.5 * torch.logsumexp(logits, 0)  # (m,)
    return (lse - logits.diagonal()).mean()


def _two_view_logits(u, v, temperature):
    """Similarities of all 2m embeddings z = [u; v], self-similarities masked with -inf.
    Masked in place on the fresh matrix, with no (2m, 2m) mask or copy: simclr's forward +
    backward at m = 1024, d = 128 on 2 CPU cores went from 1.15x to 1.01x the time of a bare
    cross-entropy on the same logits."""
    z = torch.cat([u, v])  # (2m, d)
    return (z @ z.T / temperature).fill_diagonal_(-math.inf)  # (2m, 2m)


def simclr_loss(u, v, temperature):
    """SimCLR's NT-Xent (Chen 2020): Def. 3.1 with (c1, c2) = (1, 1).

    Denominator of anchor u_i: sum_j e^{u_i^T v_j / tau} + sum_{j!=i} e^{u_i^T u_j / tau}
    (2m - 1 terms). Just cross-entropy over the 2m x 2m similarity matrix without its diagonal,
    the target of row i being its other view; averaging the 2m rows is the mean of both halves.
    """
    _check_positive("temperature", temperature)
    u, v = _normalized_pair(u, v)
    m = u.shape[0]
    logits = _two_view_logits(u, v, temperature)  # (2m, 2m)
    labels = torch.cat([torch.arange(m, 2 * m), torch.arange(m)]).to(u.device)  # (2m,)
    return F.cross_entropy(logits, labels)


def dcl_loss(u, v, temperature):
    """Decoupled contrastive loss (Yeh 2022): SimCLR with the positive left out of the
    denominator. u-anchored half:

        -u_i^T v_i / tau + log( sum_{j!=i} e^{u_i^T v_j / tau} + sum_{j!=i} e^{u_i^T u_j / tau} )

    Unlike SimCLR it can be negative (the log no longer contains the positive term).
    """
    _check_positive("temperature", temperature)
    u, v = _normalized_pair(u, v)
    m = u.shape[0]
    logits = _two_view_logits(u, v, temperature)  # (2m, 2m)
    # the positives leave the denominator too: (i, m + i) holds u_i^T v_i, (m + i, i) v_i^T u_i.
    # Masked in place, not gathered and copied: at m = 1024, d = 128 on 2 CPU cores forward +
    # backward went from 1.32x to 1.18x the time of a bare cross-entropy on the same logits.
    logits.diagonal(m).fill_(-math.inf)
    logits.diagonal(-m).fill_(-math.inf)
    pos = (u * v).sum(1) / temperature  # (m,)  u_i^T v_i / tau, for both anchors
    return (torch.logsumexp(logits, dim=1).view(2, m) - pos).mean()  # rows: u-, then v-anchored


def dhel_loss(u, v, temperature):
    """Decoupled hyperspherical energy loss (Koromilas 2024) in the paper's form: Def. 3.1
    with (c1, c2) = (0, 1), -u_i^T v_i / tau + log sum_{j!=i} e^{u_i^T u_j / tau}; the
    v-anchored half uses v_i^T v_j (the paper's printed v-half swaps a u and v: erratum).
    The authors' code weights the terms differently; this follows the paper's Table 2.
    """
    _check_positive("temperature", temperature)
    u, v = _normalized_pair(u, v)
    off = _off_diagonal(u.shape[0], u.device)  # (m, m)
    pos = (u * v).sum(1) / temperature  # (m,)
    uu = (u @ u.T / temperature).masked_fill(~off, -math.inf)  # (m, m)
    vv = (v @ v.T / temperature).masked_fill(~off, -math.inf)  # (m, m)
    u_half = (torch.logsumexp(uu, 1) - pos).mean()
    v_half = (torch.logsumexp(vv, 1) - pos).mean()
    return 0.5 * u_half + 0.5 * v_half


# --------------------------------------------------------------------------------------------
# Def. 3.2 losses (Table 3)
# --------------------------------------------------------------------------------------------

def siglip_loss(u, v, t, b, within_view=False):
    """SigLIP (Zhai 2023) in the paper's sign convention (Ex. 5.4):

        L = (1/m) sum_i log(1 + e^{-t u_i^T v_i + b})
            + (1/m) sum_{i!=j} log(1 + e^{t u_i^T v_j - b})

    i.e. Def. 3.2 with phi(x) = -log(1 + e^{-tx + b}), psi(x) = (m-1) log(1 + e^{tx - b}).
    The original SigLIP writes the logit as t x + b', so b' = -b (its init t = 10, b' = -10 is
    t = 10, b = 10 here). softplus keeps it finite for any t.
    within_view=True adds the c2 = 1 term (the paper's remedy for excessive separation, Thm 5.1):
    (1/(2m)) sum_{i!=j} [log(1 + e^{t u_i^T u_j - b}) + log(1 + e^{t v_i^T v_j - b})].
    """
    _check_positive("t", t)
    if not math.isfinite(b):
        raise ValueError(f"b must be a finite number, got {b!r}")
    u, v = _normalized_pair(u, v)
    m = u.shape[0]
    off = _off_diagonal(m, u.device)  # (m, m)
    pos = (u * v).sum(1)  # (m,)
    loss = F.softplus(b - t * pos).mean() + (F.softplus(t * (u @ v.T) - b) * off).sum() / m
    if within_view:
        within = F.softplus(t * (u @ u.T) - b) + F.softplus(t * (v @ v.T) - b)  # (m, m)
        loss = loss + (within * off).sum() / (2 * m)
    return loss


def spectral_loss(u, v, within_view=False):
    """Spectral contrastive loss (HaoChen 2021) in the paper's form (Table 3; the printed first
    sum has u_i^T v_j, an erratum for u_i^T v_i):

        L = -(1/m) sum_i u_i^T v_i + 1/(m(m-1)) sum_{i!=j} (u_i^T v_j)^2

    HaoChen's original has a factor 2 on the positive term and unnormalised outputs; here
    embeddings are unit-norm like every other loss. psi(x) = x^2 is not increasing on [-1, 0],
    so this loss sits outside Def. 3.2's assumptions (PAPER.md section 7).
    within_view=True adds 1/(2m(m-1)) sum_{i!=j} [(u_i^T u_j)^2 + (v_i^T v_j)^2].
    """
    u, v = _normalized_pair(u, v)
    m = u.shape[0]
    off = _off_diagonal(m, u.device)  # (m, m)
    loss = -(u * v).sum(1).mean() + ((u @ v.T) ** 2 * off).sum() / (m * (m - 1))
    if within_view:
        within = ((u @ u.T) ** 2 * off).sum() + ((v @ v.T) ** 2 * off).sum()
        loss = loss + within / (2 * m * (m - 1))
    return loss


# --------------------------------------------------------------------------------------------
# The paper's auxiliary loss
# --------------------------------------------------------------------------------------------

def vrns_loss(u, v, n):
    """Def. 5.7, the variance-reduction-for-negative-similarities term:

        L_VRNS = 1/(m(m-1)) sum_{i!=j} (u_i^T v_j + 1/(n-1))^2

    over the ordered cross-view negatives of the batch (no positive term). The target
    -1/(n-1) is the full-batch optimum of Thm 5.1 with n = the TRAINING-SET size (not m), so
    E[(s - delta)^2] = Var[s] + (E[s] - delta)^2 pulls the negatives' variance down while
    holding their mean where full-batch training would put it. Added as L + lam * L_VRNS;
    the paper uses lam = 30 on CIFAR and ImageNet-100, 40 on ImageNet.
    """
    u, v = _normalized_pair(u, v)
    m = u.shape[0]
    if not (isinstance(n, numbers.Integral) and n >= m):
        raise ValueError(f"n must be the training-set size, an integer >= the batch size m = {m};"
                         f" got {n!r}")
    delta = -1.0 / (int(n) - 1)
    # sum_{i!=j} (s_ij - delta)^2 = sum_{i!=j} s_ij^2 - 2 delta sum_{i!=j} s_ij + m(m-1) delta^2
    # with the identities of eval.similarity_stats: sum_{i,j} s_ij^2 = <U^T U, V^T V>_F and
    # sum_{i,j} s_ij = (sum_i u_i)^T (sum_j v_j). O(m d^2) instead of O(m^2 d), and no (m, m)
    # matrix: forward + backward at d = 128 on 2 CPU cores took 1.9 ms instead of 5.8 at
    # m = 1024 (a simclr step +12% instead of +24%), the same 0.7 ms at m = 2d = 256, 0.13 ms
    # more at m = 128. In float32, subtracting the diagonal (at most m) costs at most ~m x 6e-8
    # absolute in the sum of squares, ~6e-8 / m in the loss.
    pos = (u * v).sum(1)  # (m,)  s_ii
    sq = (u.T @ u * (v.T @ v)).sum() - (pos ** 2).sum()  # sum_{i!=j} s_ij^2, via (d, d) Grams
    lin = u.sum(0) @ v.sum(0) - pos.sum()  # sum_{i!=j} s_ij
    return (sq - 2 * delta * lin) / (m * (m - 1)) + delta ** 2
