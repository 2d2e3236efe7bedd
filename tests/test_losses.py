"""Each named loss against a slow loop over the paper's formula (float64), plus properties:
every public function pastes and runs alone, and runs on the meta device without creating a
tensor elsewhere (no CPU tensor moved to the GPU, no data-dependent shape that syncs the host)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import losses
from conftest import paste_alone

TEMPERATURE_LOSSES = [losses.infonce_loss, losses.simclr_loss, losses.dcl_loss, losses.dhel_loss]


def unit(x):
    return F.normalize(x, dim=1)


# ---- slow references: one Python loop per sum, as the paper prints them --------------------

def loop_infonce_family(u, v, tau, cross, within, positive_in_denominator, log1p):
    """Mean of the u- and v-anchored halves of the Def. 3.1 losses, term by term."""
    u, v = unit(u), unit(v)
    m = len(u)

    def half(a, b):
        total = 0.0
        for i in range(m):
            pos = math.exp(float(a[i] @ b[i]) / tau)
            den = pos if positive_in_denominator else 0.0
            for j in range(m):
                if j != i and cross:
                    den += math.exp(float(a[i] @ b[j]) / tau)
                if j != i and within:
                    den += math.exp(float(a[i] @ a[j]) / tau)
            total += -math.log(pos / den) if log1p else -math.log(pos) + math.log(den)
        return total / m

    return 0.5 * half(u, v) + 0.5 * half(v, u)


def loop_infonce(u, v, tau):
    return loop_infonce_family(u, v, tau, True, False, True, True)


def loop_simclr(u, v, tau):
    return loop_infonce_family(u, v, tau, True, True, True, True)


def loop_dcl(u, v, tau):
    return loop_infonce_family(u, v, tau, True, True, False, False)


def loop_dhel(u, v, tau):
    return loop_infonce_family(u, v, tau, False, True, False, False)


def loop_siglip(u, v, t, b, within_view):
    u, v = unit(u), unit(v)
    m = len(u)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    total = sum(sp(-t * float(u[i] @ v[i]) + b) for i in range(m)) / m
    for i in range(m):
        for j in range(m):
            if i != j:
                total += sp(t * float(u[i] @ v[j]) - b) / m
                if within_view:
                    uu, vv = float(u[i] @ u[j]), float(v[i] @ v[j])
                    total += (sp(t * uu - b) + sp(t * vv - b)) / (2 * m)
    return total


def loop_spectral(u, v, within_view):
    u, v = unit(u), unit(v)
    m = len(u)
    total = -sum(float(u[i] @ v[i]) for i in range(m)) / m
    for i in range(m):
        for j in range(m):
            if i != j:
                total += float(u[i] @ v[j]) ** 2 / (m * (m - 1))
                if within_view:
                    total += (float(u[i] @ u[j]) ** 2 + float(v[i] @ v[j]) ** 2) / (2 * m * (m - 1))
    return total


def loop_vrns(u, v, n):
    u, v = unit(u), unit(v)
    m = len(u)
    terms = [(float(u[i] @ v[j]) + 1 / (n - 1)) ** 2 for i in range(m) for j in range(m) if i != j]
    return sum(terms) / (m * (m - 1))


LOOPS = {
    losses.infonce_loss: loop_infonce,
    losses.simclr_loss: loop_simclr,
    losses.dcl_loss: loop_dcl,
    losses.dhel_loss: loop_dhel,
}


def embeddings(m, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g, dtype=dtype), torch.randn(m, d, generator=g, dtype=dtype)


# ---- values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", TEMPERATURE_LOSSES)
@pytest.mark.parametrize("m,d,tau", [(2, 3, 0.5), (5, 4, 0.1), (9, 16, 0.3), (16, 2, 1.0)])
def test_temperature_losses_match_loops(loss, m, d, tau):
    u, v = embeddings(m, d, seed=m * d)
    assert loss(u, v, tau).item() == pytest.approx(LOOPS[loss](u, v, tau), rel=1e-10)


@pytest.mark.parametrize("within_view", [False, True])
@pytest.mark.parametrize("m,d,t,b", [(2, 3, 1.0, 0.0), (6, 5, 10.0, 10.0), (11, 8, 4.0, -2.0)])
def test_siglip_matches_loop(m, d, t, b, within_view):
    u, v = embeddings(m, d, seed=m)
    got = losses.siglip_loss(u, v, t, b, within_view=within_view).item()
    assert got == pytest.approx(loop_siglip(u, v, t, b, within_view), rel=1e-10)


@pytest.mark.parametrize("within_view", [False, True])
@pytest.mark.parametrize("m,d", [(2, 3), (7, 4), (12, 32)])
def test_spectral_matches_loop(m, d, within_view):
    u, v = embeddings(m, d, seed=m)
    got = losses.spectral_loss(u, v, within_view=within_view).item()
    assert got == pytest.approx(loop_spectral(u, v, within_view), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("m,d,n", [(2, 3, 2), (6, 5, 50), (10, 8, 50_000)])
def test_vrns_matches_loop(m, d, n):
    u, v = embeddings(m, d, seed=m)
    assert losses.vrns_loss(u, v, n).item() == pytest.approx(loop_vrns(u, v, n), rel=1e-10)


FAMILY_CASES = [  # (named loss, psi, c1, c2) of Table 2
    (losses.infonce_loss, torch.log1p, 1, 0),
    (losses.simclr_loss, torch.log1p, 1, 1),
    (losses.dcl_loss, torch.log, 1, 1),
    (losses.dhel_loss, torch.log, 0, 1),
]


@pytest.mark.parametrize("loss,psi,c1,c2", FAMILY_CASES)
def test_named_losses_equal_def_3_1_family(loss, psi, c1, c2):
    u, v = embeddings(8, 6, seed=3)
    tau = 0.2
    family = losses.infonce_family_loss(u, v, lambda x: torch.exp(x / tau), psi, c1, c2)
    assert loss(u, v, tau).item() == pytest.approx(family.item(), rel=1e-10)


def test_named_additive_losses_equal_def_3_2_family():
    u, v = embeddings(7, 5, seed=4)
    m, t, b = 7, 5.0, 2.0
    phi = lambda x: -F.softplus(-t * x + b)  # noqa: E731
    psi = lambda x: (m - 1) * F.softplus(t * x - b)  # noqa: E731
    for c2, within in [(0, False), (1, True)]:
        family = losses.independently_additive_loss(u, v, phi, psi, 1, c2)
        named = losses.siglip_loss(u, v, t, b, within_view=within)
        assert named.item() == pytest.approx(family.item(), rel=1e-10)
        family = losses.independently_additive_loss(u, v, lambda x: x, lambda x: x ** 2, 1, c2)
        assert losses.spectral_loss(u, v, within_view=within).item() == pytest.approx(family.item())


@pytest.mark.parametrize("loss", TEMPERATURE_LOSSES)
def test_gradients_match_loop_family(loss):
    """Autograd of the fused loss equals autograd of the literal Def. 3.1 form."""
    psi, c1, c2 = {l: (p, a, b) for l, p, a, b in FAMILY_CASES}[loss]
    u, v = embeddings(6, 4, seed=5)
    u1, v1 = u.clone().requires_grad_(), v.clone().requires_grad_()
    u2, v2 = u.clone().requires_grad_(), v.clone().requires_grad_()
    loss(u1, v1, 0.3).backward()
    losses.infonce_family_loss(u2, v2, lambda x: torch.exp(x / 0.3), psi, c1, c2).backward()
    torch.testing.assert_close(u1.grad, u2.grad)
    torch.testing.assert_close(v1.grad, v2.grad)


# ---- closed forms ----------------------------------------------------------------------------

@pytest.mark.parametrize("m", [2, 5, 64])
def test_collapsed_embeddings_closed_forms(m):
    """All 2m embeddings equal: every logit is 1/tau, so the softmax is uniform."""
    u = torch.ones(m, 3, dtype=torch.float64)
    assert losses.simclr_loss(u, u, 0.1).item() == pytest.approx(math.log(2 * m - 1))
    assert losses.infonce_loss(u, u, 0.1).item() == pytest.approx(math.log(m))
    assert losses.dcl_loss(u, u, 0.1).item() == pytest.approx(math.log(2 * m - 2))
    assert losses.dhel_loss(u, u, 0.1).item() == pytest.approx(math.log(m - 1))
    assert losses.vrns_loss(u, u, 100).item() == pytest.approx((1 + 1 / 99) ** 2)


def simplex(m, dtype=torch.float64):
    """m unit vectors in R^m with pairwise inner product -1/(m-1) (centred standard basis)."""
    e = torch.eye(m, dtype=dtype)
    return unit(e - e.mean(0))


@pytest.mark.parametrize("loss", TEMPERATURE_LOSSES)
def test_aligned_simplex_is_a_minimum(loss):
    """Thm 5.1: u_i = v_i on a regular simplex minimises every Def. 3.1 loss."""
    m = 6
    s = simplex(m)
    best = loss(s, s, 0.5).item()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        du, dv = 0.05 * torch.randn(2, m, m, generator=g, dtype=torch.float64)
        assert loss(s + du, s + dv, 0.5).item() > best


def test_aligned_simplex_minimises_siglip_within_and_spectral():
    m = 6
    s = simplex(m)
    g = torch.Generator().manual_seed(1)
    for fn in [lambda a, b: losses.siglip_loss(a, b, 2.0, 0.0, within_view=True),
               lambda a, b: losses.spectral_loss(a, b, within_view=True)]:
        best = fn(s, s).item()
        for _ in range(20):
            du, dv = 0.05 * torch.randn(2, m, m, generator=g, dtype=torch.float64)
            assert fn(s + du, s + dv).item() > best


def test_vrns_is_second_moment_about_target():
    u, v = embeddings(9, 4, seed=6)
    n = 1000
    s = unit(u) @ unit(v).T
    neg = s[~torch.eye(9, dtype=torch.bool)]
    expected = neg.var(unbiased=False) + (neg.mean() + 1 / (n - 1)) ** 2
    assert losses.vrns_loss(u, v, n).item() == pytest.approx(expected.item(), rel=1e-10)


# ---- properties ------------------------------------------------------------------------------

ALL_LOSSES = {
    "infonce": lambda u, v: losses.infonce_loss(u, v, 0.3),
    "simclr": lambda u, v: losses.simclr_loss(u, v, 0.3),
    "dcl": lambda u, v: losses.dcl_loss(u, v, 0.3),
    "dhel": lambda u, v: losses.dhel_loss(u, v, 0.3),
    "siglip": lambda u, v: losses.siglip_loss(u, v, 5.0, 1.0),
    "siglip_within": lambda u, v: losses.siglip_loss(u, v, 5.0, 1.0, within_view=True),
    "spectral": lambda u, v: losses.spectral_loss(u, v),
    "spectral_within": lambda u, v: losses.spectral_loss(u, v, within_view=True),
    "vrns": lambda u, v: losses.vrns_loss(u, v, 100),
}


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_symmetric_permutation_and_scale_invariant(name):
    fn = ALL_LOSSES[name]
    u, v = embeddings(7, 5, seed=7)
    ref = fn(u, v).item()
    assert fn(v, u).item() == pytest.approx(ref, rel=1e-12)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert fn(u[perm], v[perm]).item() == pytest.approx(ref, rel=1e-12)
    scale = torch.rand(7, 1, dtype=torch.float64) * 10 + 0.1
    assert fn(u * scale, v * scale.flip(0)).item() == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_gradcheck(name):
    u, v = embeddings(4, 3, seed=8)
    assert torch.autograd.gradcheck(ALL_LOSSES[name], (u.requires_grad_(), v.requires_grad_()))


@pytest.mark.parametrize("loss", TEMPERATURE_LOSSES)
def test_finite_at_tiny_temperature_float32(loss):
    u, v = embeddings(512, 128, seed=9, dtype=torch.float32)
    v = u + 0.01 * v  # near-aligned positives: exp(2 / 0.01) would overflow float32
    u.requires_grad_()
    value = loss(u, v, 0.01)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(u.grad).all()


def test_siglip_finite_at_large_t():
    u, v = embeddings(64, 16, seed=10, dtype=torch.float32)
    assert torch.isfinite(losses.siglip_loss(u, v, 1000.0, -500.0, within_view=True))


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_LOSSES)
def test_rejects_bad_shapes(name):
    fn = ALL_LOSSES[name]
    with pytest.raises(ValueError, match="m >= 2"):
        fn(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="shape"):
        fn(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="shape"):
        fn(torch.randn(4), torch.randn(4))


@pytest.mark.parametrize("loss", TEMPERATURE_LOSSES)
@pytest.mark.parametrize("tau", [0.0, -0.1, float("nan"), float("inf")])
def test_rejects_bad_temperature(loss, tau):
    with pytest.raises(ValueError, match="temperature"):
        loss(torch.randn(4, 3), torch.randn(4, 3), tau)


def test_rejects_bad_siglip_and_vrns_arguments():
    u, v = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="t > 0"):
        losses.siglip_loss(u, v, 0.0, 1.0)
    with pytest.raises(ValueError, match="finite b"):
        losses.siglip_loss(u, v, 1.0, float("nan"))
    with pytest.raises(ValueError, match="training-set size"):
        losses.vrns_loss(u, v, 3)
    with pytest.raises(ValueError, match="training-set size"):
        losses.vrns_loss(u, v, 100.0)


# ---- copyable: each function pastes alone and stays on its inputs' device ---------------------

PUBLIC = {  # name -> a call on (u, v) that exercises every branch
    "infonce_family_loss": lambda fn, u, v: fn(u, v, lambda x: torch.exp(x / 0.3), torch.log1p,
                                               1, 1),
    "independently_additive_loss": lambda fn, u, v: fn(u, v, lambda x: x, lambda x: x ** 2, 1, 1),
    "infonce_loss": lambda fn, u, v: fn(u, v, 0.3),
    "simclr_loss": lambda fn, u, v: fn(u, v, 0.3),
    "dcl_loss": lambda fn, u, v: fn(u, v, 0.3),
    "dhel_loss": lambda fn, u, v: fn(u, v, 0.3),
    "siglip_loss": lambda fn, u, v: fn(u, v, 5.0, 1.0) + fn(u, v, 5.0, 1.0, within_view=True),
    "spectral_loss": lambda fn, u, v: fn(u, v) + fn(u, v, within_view=True),
    "vrns_loss": lambda fn, u, v: fn(u, v, 100),
}


def test_every_public_function_is_listed():
    public = {name for name, obj in vars(losses).items()
              if callable(obj) and not name.startswith("_")
              and getattr(obj, "__module__", None) == "losses"}
    assert public == set(PUBLIC)


@pytest.mark.parametrize("name", PUBLIC)
def test_pastes_and_runs_alone(name):
    """The function's source alone, in a file importing only math, numbers, np, torch and F."""
    fn, pasted = getattr(losses, name), paste_alone(getattr(losses, name))
    for seed, (m, d) in enumerate([(2, 3), (7, 5)]):
        u, v = embeddings(m, d, seed=seed)
        assert PUBLIC[name](pasted, u, v).item() == PUBLIC[name](fn, u, v).item()
    with pytest.raises(ValueError, match="shape"):
        PUBLIC[name](pasted, torch.randn(4, 3), torch.randn(4, 5))


class OffDeviceTensors(TorchFunctionMode):
    """Records every torch call that returns a tensor off the meta device."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.calls.append(getattr(func, "__name__", repr(func)))
        return out


@pytest.mark.parametrize("name", PUBLIC)
def test_runs_on_the_inputs_device_without_host_reads(name):
    """On the meta device a tensor has no data: a host read (.item(), a boolean index) raises,
    and a tensor built on the CPU (then moved, a host-to-device copy on a GPU) is recorded."""
    u, v = torch.randn(2, 8, 4, device="meta").requires_grad_()
    with OffDeviceTensors() as mode:
        loss = PUBLIC[name](getattr(losses, name), u, v)
        loss.backward()
    assert loss.device.type == "meta" and mode.calls == []
