"""theory.similarity_stats (exact, O(N d^2)) against the brute-force N x N computation; it pastes
alone."""
import pytest
import torch
import torch.nn.functional as F
from conftest import paste_alone

from theory import similarity_stats


def brute_force(u, v):
    u, v = F.normalize(u.double(), dim=1), F.normalize(v.double(), dim=1)
    N = len(u)
    off = ~torch.eye(N, dtype=torch.bool)
    pos = (u * v).sum(1)
    neg = (u @ v.T)[off]
    within = torch.cat([(u @ u.T)[off], (v @ v.T)[off]])
    return {"pos_mean": pos.mean(), "pos_var": pos.var(unbiased=False),
            "neg_mean": neg.mean(), "neg_var": neg.var(unbiased=False),
            "within_mean": within.mean(), "within_var": within.var(unbiased=False)}


@pytest.mark.parametrize("N,d", [(2, 3), (7, 2), (300, 16), (1000, 128)])
def test_matches_brute_force(N, d):
    g = torch.Generator().manual_seed(N)
    u = torch.randn(N, d, generator=g)
    v = u + 0.5 * torch.randn(N, d, generator=g)  # correlated views, like real positives
    got = similarity_stats(u, v)
    assert got["count"] == N and type(got["count"]) is int
    for key, value in brute_force(u, v).items():
        assert got[key].shape == () and got[key].dtype == torch.float64, key
        assert got[key].item() == pytest.approx(value.item(), rel=1e-9, abs=1e-12), key


def test_pastes_alone_and_leaves_the_graph_alone():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(50, 8, generator=g, requires_grad=True)
    v = torch.randn(50, 8, generator=g)
    got, pasted = similarity_stats(u, v), paste_alone(similarity_stats)(u, v)
    assert got.keys() == pasted.keys()
    for key in got:
        assert torch.equal(torch.as_tensor(got[key]), torch.as_tensor(pasted[key])), key
    assert not got["neg_var"].requires_grad  # statistics, never part of a loss


def test_small_variance_survives_float32_inputs():
    """Nearly identical negatives: E[s^2] - E[s]^2 would cancel in float32."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 64, generator=g)
    u = base + 1e-3 * torch.randn(500, 64, generator=g)
    v = base + 1e-3 * torch.randn(500, 64, generator=g)
    got = similarity_stats(u, v)["neg_var"].item()
    assert got == pytest.approx(brute_force(u, v)["neg_var"].item(), rel=1e-6)
    assert got > 0


def test_simplex_has_zero_negative_variance():
    N = 6
    e = torch.eye(N)
    s = F.normalize(e - e.mean(0), dim=1)
    got = similarity_stats(s, s)
    assert got["pos_mean"].item() == pytest.approx(1.0)
    assert got["neg_mean"].item() == pytest.approx(-1 / (N - 1))
    assert got["neg_var"].item() == pytest.approx(0.0, abs=1e-12)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        similarity_stats(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="N >= 2"):
        similarity_stats(torch.randn(1, 3), torch.randn(1, 3))

