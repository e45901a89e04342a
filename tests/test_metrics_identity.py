import numpy as np
import pytest

from g2face_eval.metrics import identity as I


def _brute_rank(p, pl, g, gl):
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    ranks = []
    for i in range(len(p)):
        best = {}
        for j in range(len(g)):
            s = float(p[i] @ g[j])
            best[gl[j]] = max(best.get(gl[j], -np.inf), s)
        true = best[pl[i]]
        ranks.append(1 + sum(1 for k, s in best.items() if k != pl[i] and s > true))
    return np.array(ranks)


def test_ranks_match_bruteforce():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(12, 16))
    gl = np.repeat(np.arange(12), 3)[rng.permutation(36)]  # 3 gallery images per identity, shuffled
    g = centers[gl] + 0.8 * rng.normal(size=(36, 16))
    pl = rng.integers(0, 12, size=40)
    p = centers[pl] + 0.8 * rng.normal(size=(40, 16))
    r = I.identification_ranks(p, pl, g, gl, chunk=7)
    np.testing.assert_array_equal(r, _brute_rank(p, pl, g, gl))
    hits = I.identification_hits(p, pl, g, gl)
    np.testing.assert_array_equal(hits[1], r == 1)
    np.testing.assert_array_equal(hits[5], r <= 5)


def test_hand_made_identification():
    g = np.array([[1, 0], [0, 1], [-1, 0]], float)
    gl = ["a", "b", "c"]
    p = np.array([[1, 0.1], [0.9, 1.0], [-1, -0.2]])  # a: rank1; b: a scores 0.9/1.35 < b 1/1.35 -> rank1...
    pl = ["a", "a", "b"]
    r = I.identification_ranks(p, pl, g, gl)
    # probe 0 nearest a -> 1; probe 1: sims a=.67, b=.74 -> rank 2; probe 2: c=.98, a=-.98, b=-.2 -> b rank 2
    np.testing.assert_array_equal(r, [1, 2, 2])
    with pytest.raises(ValueError):
        I.identification_ranks(p, ["a", "a", "z"], g, gl)


def test_tie_goes_to_attacker():
    g = np.array([[1, 0], [1, 0]], float)
    r = I.identification_ranks(np.array([[1.0, 0.0]]), ["y"], g, ["x", "y"])
    assert r[0] == 1


def test_a_tie_in_exact_arithmetic_is_a_tie_despite_round_off():
    """Three identities at cosine exactly 0 with the probe, the true one among them: their float64 products
    differ by ~1e-17, which must not rank the true identity below the others (found by a review)."""
    p = np.array([[0.1, 0.7, 0.2]])
    g = np.array([[0.7, -0.1, 0.0], [0.0, 0.2, -0.7], [-0.2, 0.0, 0.1]])   # each orthogonal to p
    sims = (p / np.linalg.norm(p)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    assert np.abs(sims).max() < 1e-15 and sims[0, 1] < min(sims[0, 0], sims[0, 2])   # round-off orders them
    assert I.identification_ranks(p, ["b"], g, ["a", "b", "c"])[0] == 1
    with pytest.raises(ValueError, match="non-empty gallery"):
        I.identification_ranks(p, ["a"], np.zeros((0, 3)), np.array([], dtype=str))


def test_success_rates_and_ber():
    sim = np.array([0.1, 0.5, 0.29, 0.3])
    np.testing.assert_array_equal(I.protection_success(sim, 0.3), [True, False, True, False])
    np.testing.assert_array_equal(I.recovered_success(sim, 0.3), [False, True, False, True])
    assert I.protection_success_rate(sim, 0.3) == 0.5
    assert I.mean_similarity(sim) == pytest.approx(0.2975)
    a = np.array([[1, 0, 1, 1], [0, 0, 0, 0]])
    b = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_allclose(I.bit_error_rate(a, b), [0.5, 0.0])
    with pytest.raises(ValueError):
        I.bit_error_rate(a, a * 2)
    x = np.array([[3.0, 4.0], [1.0, 0.0]])
    np.testing.assert_allclose(I.cosine_similarity(x, np.array([[3.0, 4.0], [0.0, 2.0]])), [1.0, 0.0])
