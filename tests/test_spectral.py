"""PIC finds the second eigenvector of D^-1 A, and the object side is picked by motion, not size."""
import numpy as np
import torch

from vosbatch.ops.spectral import affinity, bipartition_soft, second_eigenvector


def _random_affinity(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    x[: n // 3] += 2.5  # two loose clusters: a clear but not trivial gap
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a = np.clip(x @ x.T, 0, None)
    return a


def test_power_iteration_matches_dense_eigensolver():
    for seed in range(3):
        a = _random_affinity(60, seed)
        res = second_eigenvector(torch.from_numpy(a)[None], tol=1e-12, max_iter=5000, seed=seed)
        d = a.sum(1)
        s = a / np.sqrt(d)[:, None] / np.sqrt(d)[None]
        w, v = np.linalg.eigh(s)
        ref = v[:, -2] / np.sqrt(d)  # eigenvector of D^-1 A
        ref /= np.linalg.norm(ref)
        got = res.vectors[0].numpy()
        assert abs(got @ ref) > 0.999, (seed, abs(got @ ref))
        assert bool(res.converged[0])
        # it really is an eigenvector of W = D^-1 A
        wv = (a / d[:, None]) @ got
        lam = wv @ got
        assert np.linalg.norm(wv - lam * got) < 1e-3
        assert abs(float(res.eigenvalues[0]) - w[-2]) < 1e-6  # λ₂, what the relaxed normalised cut is read from


def test_the_relaxed_cut_is_small_for_two_separate_groups_and_large_for_one_blob():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)) * 0.3
    x[:20, 0] += 3.0  # a group of 20 far from the other 40
    apart = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1))
    blob = np.exp(-((x[:, None, 1:] - x[None, :, 1:]) ** 2).sum(-1))  # the same nodes without the separating axis
    res = second_eigenvector(torch.from_numpy(np.stack([apart, blob])), tol=1e-10, max_iter=5000)
    cut = 1.0 - res.eigenvalues.numpy()
    assert cut[0] < 0.05 < 0.5 < cut[1], cut


def test_iteration_cap_is_respected():
    a = torch.from_numpy(_random_affinity(50, 0))[None]
    res = second_eigenvector(a, tol=0.0, max_iter=7)
    assert int(res.iterations[0]) == 7 and not bool(res.converged[0])


def test_unreliable_motion_drops_out_of_affinity():
    psi = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    phi = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    full = affinity(psi, phi, phi, torch.ones(1, 2), torch.ones(1, 2), 1.0, 1.0)
    dropped = affinity(psi, phi, phi, torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), 1.0, 1.0)
    assert torch.isclose(full[0, 0, 1], torch.tensor(2.0 / 3.0))  # (0 + 1 + 1) / 3
    assert torch.isclose(dropped[0, 0, 1], torch.tensor(0.0))  # only appearance remains: orthogonal


def test_foreground_side_follows_motion_even_when_object_is_large():
    n = 100
    v = torch.cat([torch.full((70,), 1.0), torch.full((30,), -1.0)])[None]  # 70% of nodes on one side
    saliency = torch.cat([torch.full((70,), 5.0), torch.full((30,), 0.2)])[None]  # ... and it moves
    border = torch.zeros(n, dtype=torch.bool)
    torch.manual_seed(0)
    soft = bipartition_soft(v + 0.01 * torch.randn(1, n), saliency, border)
    assert (soft[0, :70] > 0.5).all() and (soft[0, 70:] < 0.5).all()
    soft_flipped = bipartition_soft(-v + 0.01 * torch.randn(1, n), saliency, border)
    assert (soft_flipped[0, :70] > 0.5).all() and (soft_flipped[0, 70:] < 0.5).all()
    # the split lands between the groups, not on a node: both sides are clearly decided
    assert soft[0, :70].min() > 0.8 and soft[0, 70:].max() < 0.2


def test_affinity_matches_eq2_elementwise_with_partial_reliability():
    torch.manual_seed(0)
    b, n = 2, 40
    psi, pn, pp = torch.randn(b, n, 5), torch.randn(b, n, 3), torch.randn(b, n, 3)
    rn, rp = (torch.rand(b, n) > 0.3).float(), torch.rand(b, n)
    got = affinity(psi, pn, pp, rn, rp, alpha_psi=0.1, alpha_phi=1.0, s=0.2)
    cos = lambda x: torch.nn.functional.cosine_similarity(x[:, :, None], x[:, None, :], dim=-1)  # noqa: E731
    wn, wp = rn[:, :, None] * rn[:, None, :], rp[:, :, None] * rp[:, None, :]
    ref = (0.1 * cos(psi) + wn * cos(pn) + wp * cos(pp)) / (0.1 + wn + wp)
    ref = torch.where(ref >= 0.2, ref, torch.zeros_like(ref))  # g_s
    assert got.dtype == torch.float32 and got.shape == (b, n, n)
    assert torch.allclose(got, ref, atol=1e-5)
    assert (got[ref == 0] == 0).all() and (got >= 0).all()
