"""Sanity checks for metrics/disentangle.py on synthetic factors shaped like the data of docs/disentanglement.md
("Protocol and pitfalls"): 6 clipped random-walk colour channels (box +-0.2, N(0, 0.2) steps) + 3 Gaussian AR(1)
"joint angles", 12 episodes x 500 frames, split 8 fit / 4 test episodes (4k / 2k frames), 20-d codes."""
import functools
import math

import numpy as np
import pytest

from metrics import (active_dims, bin_factor, binned_entropy, completeness, disentanglement, group_labels,
                     grouped_disentanglement, mi_matrix, mig_from_mi, oracle_code, plot_importance, r2_scores,
                     rescale_importance, score_all, shuffled_code, split_episodes)

N_EP, T, L = 12, 500, 20
NAMES = [f"{m}_{c}" for m in ("self", "floor") for c in "rgb"] + ["hip", "knee", "ankle"]
GROUPS = {k: ("colour" if k < 6 else "state") for k in range(9)}
MATERIALS = {k: NAMES[k].split("_")[0] for k in range(6)}  # state factors: one group each
SCALARS = ("D", "C", "I_lin", "I_nl", "MIG", "MIG_sup", "D_grp", "D_mat")
FAST = dict(nonlinear=False)
GBR = dict(gbr_kwargs=dict(n_estimators=30))


def make_factors(n_ep=N_EP, t_len=T, seed=0):
    rng = np.random.default_rng(seed)
    col = np.empty((t_len, n_ep, 6))
    ang = np.empty((t_len, n_ep, 3))
    col[0], ang[0] = rng.uniform(-0.2, 0.2, (n_ep, 6)), rng.normal(0, 1, (n_ep, 3))
    for t in range(1, t_len):
        col[t] = np.clip(col[t - 1] + rng.normal(0, 0.2, (n_ep, 6)), -0.2, 0.2)
        ang[t] = 0.9 * ang[t - 1] + math.sqrt(1 - 0.81) * rng.normal(0, 1, (n_ep, 3))
    v = np.concatenate([col, ang], 2).transpose(1, 0, 2).reshape(-1, 9)
    return v, np.repeat(np.arange(n_ep), t_len)


V, EP = make_factors()
VSTD = (V - V.mean(0)) / V.std(0)


def _code(name):
    rng = np.random.default_rng(1)
    if name == "oracle":
        return oracle_code(V, L)
    if name == "shuffled":
        return shuffled_code(oracle_code(V, L), seed=2)
    if name == "mix":  # random smooth mixing: tanh of a random linear map
        return np.tanh(VSTD @ (rng.normal(0, 1, (9, L)) / 3) + rng.normal(0, 0.3, L))
    if name == "rotation":  # oracle padded with independent N(0,1) dims to 20-d, then a random rotation
        q, _ = np.linalg.qr(rng.normal(size=(L, L)))
        return oracle_code(VSTD, L, noise_std=1.0, seed=3) @ q
    if name == "cubed":
        return oracle_code(VSTD, L) ** 3
    raise KeyError(name)


@functools.lru_cache(maxsize=None)
def scores(name, nonlinear=False, n_boot=0):
    kw = dict(GBR, nonlinear=True) if nonlinear else dict(FAST)
    return score_all(_code(name), V, EP, NAMES, GROUPS, material_groups=MATERIALS, n_boot=n_boot, **kw)


def _check_ci(r):
    n = 0
    for key, (lo, hi) in ((k[:-3], r[k]) for k in r if k.endswith("_ci")):
        if np.isfinite(r[key]):
            assert lo - 1e-12 <= r[key] <= hi + 1e-12, (key, lo, r[key], hi)
            n += 1
    assert n >= 10


# ----------------------------------------------------------------------------- protocol
def test_synthetic_factors_look_like_the_doc():
    assert 0.35 < np.mean(np.abs(V[:, :6]) >= 0.2 - 1e-12) < 0.55  # ~45 % on the box edge
    assert 0.5 < np.corrcoef(V[1:T, 0], V[:T - 1, 0])[0, 1] < 0.75  # lag-1 ~0.62


def test_split_by_episode_never_shares_an_episode():
    for seed in range(5):
        fit, test = split_episodes(EP, seed=seed)
        assert not (set(EP[fit]) & set(EP[test]))
        assert np.all(fit ^ test) and len(set(EP[test])) == 4
    fit, test = split_episodes(EP, test_episodes=[0, 5])
    assert set(EP[test]) == {0, 5} and 0 not in set(EP[fit])
    r = scores("oracle")
    assert not set(r["fit_episodes"]) & set(r["test_episodes"])
    assert (r["n_fit"], r["n_test"]) == (4000, 2000)


def test_active_dims():
    rng = np.random.default_rng(0)
    mu = np.concatenate([rng.normal(0, 1, (1000, 3)), rng.normal(0, 0.01, (1000, 2))], 1)
    assert active_dims(mu) == 3
    logvar = np.zeros_like(mu)  # sigma = 1: KL = mu^2 / 2
    n, per = active_dims(mu, logvar, return_values=True)
    assert n == 3 and np.allclose(per, 0.5 * (mu ** 2).mean(0))
    assert active_dims(np.zeros((10, 4)), np.log(np.full((10, 4), 0.5))) == 4  # KL = 0.5 (0.5 - ln 0.5 - 1)


# ----------------------------------------------------------------------------- slow, obvious versions
def test_dci_matches_explicit_loops():
    R = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 0.0]])
    total = R.sum()
    d_slow = 0.0
    for j in range(4):
        row = sum(R[j])
        if row == 0:
            continue
        h = -sum(R[j, k] / row * math.log(R[j, k] / row, 3) for k in range(3) if R[j, k] > 0)
        d_slow += row / total * (1 - h)
    c_slow = []
    for k in range(3):
        col = sum(R[:, k])
        c_slow.append(1 - -sum(R[j, k] / col * math.log(R[j, k] / col, 4) for j in range(4) if R[j, k] > 0))
    assert disentanglement(R) == pytest.approx(d_slow, abs=1e-12)
    assert np.allclose(completeness(R), c_slow)
    # hand numbers: row 2 is uniform over 2 of 3 factors -> 1 - log3(2)
    assert disentanglement(R[1:2]) == pytest.approx(1 - math.log(2, 3))
    # grouped: factors {0, 1} -> "a", {2} -> "b"; row 2 becomes (0.5, 0.5) -> D_j = 0
    g = grouped_disentanglement(R, np.array(["a", "a", "b"]))
    assert g == pytest.approx((2.0 * 1 + 1.0 * 0) / 3)
    # rescaling: columns sum to R^2 (clipped); R^2 < 0.05 dropped
    Rr, kept = rescale_importance([[2.0, 1.0, 1.0], [2.0, 3.0, 0.0]], [0.8, -0.3, 0.04])
    assert np.allclose(Rr, [[0.4, 0.0, 0.0], [0.4, 0.0, 0.0]]) and kept.tolist() == [True, False, False]
    assert group_labels({1: "x"}, 3, ["p", "q", "r"]).tolist() == ["p", "x", "r"]


def test_binned_entropy_and_mig_by_hand():
    rng = np.random.default_rng(0)
    x = rng.normal(size=997)
    lo, width = x.min(), (x.max() - x.min()) / 20
    counts = {}
    for xi in x:
        b = min(int((xi - lo) / width), 19)
        counts[b] = counts.get(b, 0) + 1
    h_slow = -sum(c / len(x) * math.log(c / len(x)) for c in counts.values())
    lab = bin_factor(x)
    assert binned_entropy(lab) == pytest.approx(h_slow, abs=1e-12)
    assert binned_entropy(np.arange(2000) % 20) == pytest.approx(math.log(20))
    assert binned_entropy(lab, w=np.full(len(x), 3.0)) == pytest.approx(h_slow)
    mi, H = np.array([[1.0, 0.1], [0.4, 0.3], [0.2, 0.9]]), np.array([2.0, 1.5])
    m = mig_from_mi(mi, H)
    assert m["MIG"] == pytest.approx(((1.0 - 0.4) / 2.0 + (0.9 - 0.3) / 1.5) / 2)
    nmi = mi / H
    sup = np.mean([abs(nmi[j, 0] - nmi[j, 1]) for j in range(3)])
    assert m["MIG_sup"] == pytest.approx(sup)


def test_knn_mi_matches_sklearn_and_weighted_r2():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 3))
    labels = np.stack([bin_factor(x[:, 0] + 0.5 * rng.normal(size=1500)), bin_factor(rng.normal(size=1500))], 1)
    fast, ref = mi_matrix(x, labels), mi_matrix(x, labels, backend="sklearn")
    assert fast[0, 0] > 0.5 and np.abs(fast - ref).max() < 2e-3
    # frame weights = integer multiplicities are the same as repeating the frames (used by the bootstrap)
    v, p, w = rng.normal(size=(50, 2)), rng.normal(size=(50, 2)), rng.integers(0, 3, 50)
    idx = np.repeat(np.arange(50), w)
    assert np.allclose(r2_scores(v, p, w.astype(float)), r2_scores(v[idx], p[idx]))


# ----------------------------------------------------------------------------- required score ranges
def test_oracle_scores_high_and_ci_contains_point():
    r = scores("oracle", nonlinear=True, n_boot=100)
    for k in ("D", "C", "I_lin", "I_nl", "MIG", "D_grp", "D_mat", "D@colour", "D@state", "MIG@state"):
        assert r[k] >= 0.95, (k, r[k])
    assert r["active_dims"] == 9 and r["kept"].all()
    _check_ci(r)


@pytest.mark.parametrize("name", ["shuffled", "mix"])
def test_shuffled_scores_zero(name):
    if name == "shuffled":
        r = scores("shuffled", nonlinear=True)
    else:
        r = score_all(shuffled_code(_code("mix"), seed=5), V, EP, NAMES, GROUPS, material_groups=MATERIALS, **FAST)
    for k in [k for k in r if k in SCALARS or "@" in k]:
        assert not r[k] > 0.02, (k, r[k])


def test_random_smooth_mixing_entangled_but_informative():
    r = scores("mix")
    assert r["MIG"] <= 0.1 and r["D"] <= 0.3 and r["I_lin"] >= 0.8
    assert r["D_grp"] <= 0.3 and r["active_dims"] == L


def test_rotation_of_oracle_drops_d_and_mig():
    r = scores("rotation")
    assert r["D"] < 0.3 and r["MIG"] < 0.3 and r["I_lin"] >= 0.95


def test_monotone_map_keeps_mig():
    assert abs(scores("cubed")["MIG"] - scores("oracle")["MIG"]) <= 0.02


def test_permute_flip_rescale_invariance():
    z, base = _code("mix"), scores("mix")
    rng = np.random.default_rng(7)
    transforms = {"permute": z[:, rng.permutation(L)], "flip": z * rng.choice([-1.0, 1.0], L),
                  "rescale": z * rng.uniform(0.5, 2.0, L)}
    for name, zt in transforms.items():
        r = score_all(zt, V, EP, NAMES, GROUPS, material_groups=MATERIALS, **FAST)
        for k in [k for k in base if (k in SCALARS or "@" in k or k == "active_dims") and np.isfinite(base[k])]:
            assert abs(r[k] - base[k]) <= 0.01, (name, k, base[k], r[k])


def test_bootstrap_ci_contains_point_on_mixing():
    r = score_all(_code("mix"), V, EP, NAMES, GROUPS, material_groups=MATERIALS, n_boot=200, **FAST)
    _check_ci(r)
    assert r["MIG_ci"][0] < r["MIG_ci"][1] and r["I_lin_ci"][0] < r["I_lin_ci"][1]


def test_importance_heatmap_png(tmp_path):
    r = scores("mix")
    path = plot_importance(r["importance"], NAMES, r["latent_names"], tmp_path / "imp.png", title="mix",
                           r2=r["r2_lin"])
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
