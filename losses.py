"""Contrastive losses of Lee, Lim, Lee & Sohn (ICML 2025), one pure function each.

Every function takes the two views' embeddings of one batch and returns a scalar tensor:

    u, v : (m, d)   row i of u and row i of v are a positive pair (two augmentations of image i)

Shape legend: m = pairs in the batch, d = embedding dimension, n = training-set size.
Every function L2-normalises u and v first (cosine similarities) and normalises the loss exactly
as the paper (1/m, 1/(m(m-1)), ...). Two kinds of functions live here:
  * the *families* of Def. 3.1 and Def. 3.2, written literally with user-supplied phi and psi,
    for reading the paper side by side and for checking the named losses;
  * the *named* losses (InfoNCE/CLIP, SimCLR, DCL, DHEL, SigLIP, Spectral CL) and the paper's
    auxiliary loss (Def. 5.7), written with log-sum-exp / cross-entropy so that they stay finite
    in float32 at temperature 0.01 (the literal exp(x / tau) overflows there: exp(2 / 0.01)).

Each function pastes alone into a file that imports only math, numbers, torch and F; it never
talks to torch.distributed (train.py gathers u and v first), and its one `if ...: raise` rejects
what would otherwise fail silently (mismatched shapes, m < 2, tau <= 0).

Try it (CPU, instant):
    python -c "import torch, losses; print(losses.simclr_loss(*torch.randn(2, 8, 16), 0.5))"
"""
import math
import numbers

import torch
import torch.nn.functional as F


# ---- The two families, written literally (teaching and testing; not overflow-safe) -----------

def infonce_family_loss(u, v, phi, psi, c1, c2):
    """Def. 3.1, eq. (2): L_info-sym = 1/2 L_info(U, V) + 1/2 L_info(V, U), with

        L_info(U, V) = (1/m) sum_i psi( c1 sum_{j!=i} phi((v_j - v_i)^T u_i)
                                      + c2 sum_{j!=i} phi((u_j - v_i)^T u_i) ).

    phi, psi: elementwise callables, e.g. phi = exp(x / tau), psi = log(1 + x) for InfoNCE.
    (c1, c2) = (1, 0) cross-view negatives only, (0, 1) within-view only, (1, 1) both.
    Written as the paper writes it, so exp(x / tau) overflows float32 once 2 / tau > 88:
    use the named losses below for training.
    """
    if u.dim() != 2 or u.shape != v.shape or len(u) < 2:
        raise ValueError(f"u, v must share one shape (m, d) with m >= 2, got "
                         f"{tuple(u.shape)} and {tuple(v.shape)}")
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)  # (m, d) each
    off = 1 - torch.eye(len(u), dtype=u.dtype, device=u.device)  # (m, m)  1 where j != i

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
    if u.dim() != 2 or u.shape != v.shape or len(u) < 2:
        raise ValueError(f"u, v must share one shape (m, d) with m >= 2, got "
                         f"{tuple(u.shape)} and {tuple(v.shape)}")
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)  # (m, d) each
    m = len(u)
    off = 1 - torch.eye(m, dtype=u.dtype, device=u.device)  # (m, m)  1 where i != j
    cross = (psi(u @ v.T) * off).sum()
    within = (psi(u @ u.T) * off).sum() + (psi(v @ v.T) * off).sum()
    return (-phi((u * v).sum(1)).mean() + c1 * cross / (m * (m - 1))
            + c2 * within / (2 * m * (m - 1)))


# ---- Def. 3.1 losses (Table 2), overflow-safe; each the mean of its u- and v-anchored halves ---

def infonce_loss(u, v, temperature):
    """InfoNCE / CLIP (Oord 2018; Radford 2021): Def. 3.1 with (c1, c2) = (1, 0).

    u-anchored half: -log( e^{u_i^T v_i / tau} / sum_j e^{u_i^T v_j / tau} ), i.e. just
    cross-entropy over the rows of U V^T / tau with target i; the v-anchored half is the same
    over its columns (CLIP's loss). tau around 0.1-0.5 in practice; the paper sweeps
    {0.1, ..., 0.5}.
    """
    if u.dim() != 2 or u.shape != v.shape or len(u) < 2 or not 0 < temperature < math.inf:
        raise ValueError(f"need u, v of one shape (m, d) with m >= 2 and a finite temperature "
                         f"> 0; got {tuple(u.shape)}, {tuple(v.shape)}, {temperature!r}")
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)  # (m, d) each
    logits = u @ v.T / temperature  # (m, m)  logits[i, j] = u_i^T v_j / tau
    # = 0.5 * F.cross_entropy(logits, arange(m)) + 0.5 * F.cross_entropy(logits.T, arange(m)),
    # written with log-sum-exp over rows and over columns: the cross-entropy of logits.T would
    # first copy the (m, m) matrix into row order.
    lse = 0.5 * torch.logsumexp(logits, 1) + 0.5 * torch.logsumexp(logits, 0)  # (m,)
    return (lse - logits.diagonal()).mean()


def simclr_loss(u, v, temperature):
    """SimCLR's NT-Xent (Chen 2020): Def. 3.1 with (c1, c2) = (1, 1).

    Denominator of anchor u_i: sum_j e^{u_i^T v_j / tau} + sum_{j!=i} e^{u_i^T u_j / tau}
    (2m - 1 terms). Just cross-entropy over the 2m x 2m similarity matrix of z = [u; v] without
    its diagonal, the target of row i being its other view; the mean over the 2m rows is the
    mean of both halves.
    """
    if u.dim() != 2 or u.shape != v.shape or len(u) < 2 or not 0 < temperature < math.inf:
        raise ValueError(f"need u, v of one shape (m, d) with m >= 2 and a finite temperature "
                         f"> 0; got {tuple(u.shape)}, {tuple(v.shape)}, {temperature!r}")
    m = len(u)
    z = F.normalize(torch.cat([u, v]), dim=1)  # (2m, d)
    # the self-similarities leave the softmax: masked in place, no (2m, 2m) mask or copy
    logits = (z @ z.T / temperature).fill_diagonal_(-math.inf)  # (2m, 2m)
    labels = torch.arange(2 * m, device=u.device).roll(m)  # (2m,)  m, ..., 2m-1, 0, ..., m-1
    return F.cross_entropy(logits, labels)


def dcl_loss(u, v, temperature):
    """Decoupled contrastive loss (Yeh 2022): SimCLR with the positive left out of the
    denominator. u-anchored half:

        -u_i^T v_i / tau + log( sum_{j!=i} e^{u_i^T v_j / tau} + sum_{j!=i} e^{u_i^T u_j / tau} )

    Unlike SimCLR it can be negative (the log no longer contains the positive term).
    """
    if u.dim() != 2 or u.shape != v.shape or len(u) < 2 or not 0 < temperature < math.inf:
        raise ValueError(f"need u, v of one shape (m, d) with m >= 2 and a finite temperature "
                         f"> 0; got {tuple(u.shape)}, {tuple(v.shape)}, {temperature!r}")
    m = len(u)
    z = F.normalize(torch.cat([u, v]), dim=1)  # (2m, d)
    logits = (z @ z.T / temperature).fill_diagonal_(-math.inf)  # (2m, 2m)  no self-pairs
    # the positives leave the denominator too: (i, m + i) holds u_i^T v_i, (m + i, i) v_i^T u_i
    logits.diagonal(m).fill_(-math.inf)
    logits.diagonal(-m).fill_(-math.inf)
    pos = (z[:m] * z[m:]).sum(1) / temperature  # (m,)  u_i^T v_i / tau, for both anchors
    return (torch.logsumexp(logits, dim=1).view(2, m) - pos).mean()  # rows: u-, then v-anchored


def dhel_loss(u, v, temperature):
    """Decoupled hyperspherical energy loss (Koromilas 2024) in the paper's form: Def. 3.1
    with (c1, c2) = (0, 1), -u_i^T v_i / tau + log sum_{j!=i} e^{u_i^T u_j / tau}; the
    v-anchored half uses v_i^T v_j (the paper's printed v-half swaps a u and v: erratum).
    The authors' code weights the terms differently; this follows the paper's Table 2.
    """
    if u.dim() != 2 or u.shape != v.shape or len(u) < 2 or not 0 < temperature < math.inf:
        raise ValueError(f"need u, v of one shape (m, d) with m >= 2 and a finite temperature "
                         f"> 0; got {tuple(u.shape)}, {tuple(v.shape)}, {temperature!r}")
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)  # (m, d) each
    pos = (u * v).sum(1) / temperature  # (m,)
    uu = (u @ u.T / temperature).fill_diagonal_(-math.inf)  # (m, m)  no self-pairs
    vv = (v @ v.T / temperature).fill_diagonal_(-math.inf)  # (m, m)
    return (0.5 * torch.logsumexp(uu, 1) + 0.5 * torch.logsumexp(vv, 1) - pos).mean()


# ---- Def. 3.2 losses (Table 3) ---------------------------------------------------------------

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
    if (u.dim() != 2 or u.shape != v.shape or len(u) < 2
            or not (0 < t < math.inf and math.isfinite(b))):
        raise ValueError(f"need u, v of one shape (m, d) with m >= 2, a finite t > 0 and a "
                         f"finite b; got {tuple(u.shape)}, {tuple(v.shape)}, t = {t!r}, b = {b!r}")
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)  # (m, d) each
    m = len(u)
    # a mask, not "all pairs minus the diagonal": at large t the positives' softplus(t s - b)
    # can dwarf the negatives' and the subtraction would cancel their digits
    off = 1 - torch.eye(m, dtype=u.dtype, device=u.device)  # (m, m)  1 where i != j
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
    so this loss sits outside Def. 3.2's assumptions and Thm 5.1 does not cover it: for d >= m
    its optimum makes the negatives orthogonal (s = 0), not a simplex at -1/(m-1).
    within_view=True adds 1/(2m(m-1)) sum_{i!=j} [(u_i^T u_j)^2 + (v_i^T v_j)^2].
    """
    if u.dim() != 2 or u.shape != v.shape or len(u) < 2:
        raise ValueError(f"u, v must share one shape (m, d) with m >= 2, got "
                         f"{tuple(u.shape)} and {tuple(v.shape)}")
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)  # (m, d) each
    m = len(u)
    off = 1 - torch.eye(m, dtype=u.dtype, device=u.device)  # (m, m)  1 where i != j
    loss = -(u * v).sum(1).mean() + ((u @ v.T) ** 2 * off).sum() / (m * (m - 1))
    if within_view:
        within = ((u @ u.T) ** 2 * off).sum() + ((v @ v.T) ** 2 * off).sum()
        loss = loss + within / (2 * m * (m - 1))
    return loss


# ---- The paper's auxiliary loss --------------------------------------------------------------

def vrns_loss(u, v, n):
    """Def. 5.7, the variance-reduction-for-negative-similarities term:

        L_VRNS = 1/(m(m-1)) sum_{i!=j} (u_i^T v_j + 1/(n-1))^2

    over the ordered cross-view negatives of the batch (no positive term). The target
    -1/(n-1) is the full-batch optimum of Thm 5.1 with n = the TRAINING-SET size (not m), so
    E[(s - delta)^2] = Var[s] + (E[s] - delta)^2 pulls the negatives' variance down while
    holding their mean where full-batch training would put it. Added as L + lam * L_VRNS;
    the paper uses lam = 30 on CIFAR and ImageNet-100, 40 on ImageNet.
    Cost: one (m, m) matmul (2 m^2 d FLOPs forward, twice that backward) and a few elementwise
    passes over the (m, m) matrix; the diagonal is zeroed in place, with no mask and no host
    synchronisation.
    """
    if (u.dim() != 2 or u.shape != v.shape
            or not (isinstance(n, numbers.Integral) and 2 <= len(u) <= n)):
        raise ValueError(f"need u, v of one shape (m, d) with m >= 2 and the training-set size "
                         f"n, an integer >= m; got {tuple(u.shape)}, {tuple(v.shape)}, n = {n!r}")
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)  # (m, d) each
    m = len(u)
    D = (u @ v.T + 1 / (n - 1)).fill_diagonal_(0)  # (m, m)  s_ij - delta; i = j is no negative
    return (D ** 2).sum() / (m * (m - 1))
