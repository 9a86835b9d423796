"""Disentanglement metrics for DisWM (docs/disentanglement.md, "Protocol and pitfalls").

Arrays: ``latents`` (N, L) encoder means, ``factors`` (N, K) ground truth, ``episode_ids`` (N,).
Main entry point: :func:`score_all`. Everything is split by episode: probes are fitted on the fit
episodes, every score is read on the test episodes, bootstrap CIs resample test episodes.

* DCI-Lasso: ``LassoCV`` (GroupKFold by episode) on standardised code and factors. Importances |w|;
  each column is rescaled to sum to its factor's test R^2 (clipped at 0); factors with R^2 < ``min_r2``
  are dropped (zero column). D = sum_j rho_j (1 - H_K(P_j)), C = mean over kept factors of
  1 - H_L(column). Entropies use log base K (all factors) and L (all latents).
* I_lin / I_nl: mean over factors of the test R^2 (clipped at 0) of the Lasso / a small
  ``GradientBoostingRegressor``.
* MIG-kNN: factor in ``n_bins`` equal-width bins (on the test frames), latent continuous, I(z_j; v_k)
  by the kNN estimator of ``mutual_info_classif`` (Ross 2014; k = 10, fixed jitter seed), normalised by
  the factor's binned entropy (nats). The estimator is re-implemented for 1-D latents (~15x faster here,
  same numbers, checked in the tests); ``mi_backend='sklearn'`` calls sklearn itself. MIG = mean over
  factors of the top1 - top2 gap; MIG_sup = mean over all latents of the gap across factors.
* D_grp: D of the rescaled importances summed into groups (``groups``: factor index -> group name).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.feature_selection import mutual_info_classif
from sklearn.linear_model import LassoCV
from sklearn.model_selection import GroupKFold

GBR_DEFAULTS = dict(n_estimators=60, max_depth=3, learning_rate=0.1, subsample=0.5, random_state=0)


# ----------------------------------------------------------------------------- protocol helpers
def split_episodes(episode_ids, test_frac=1 / 3, seed=0, test_episodes=None):
    """Boolean masks (fit, test) over frames; whole episodes go to one side. Test episodes are drawn
    with ``seed`` (``round(test_frac * n_episodes)``, at least 1, leaving at least 1 to fit) unless given."""
    ids = np.asarray(episode_ids)
    uniq = np.unique(ids)
    if test_episodes is None:
        if len(uniq) < 2:
            raise ValueError("need at least 2 episodes to split by episode")
        n_test = min(max(int(round(test_frac * len(uniq))), 1), len(uniq) - 1)
        test_episodes = np.random.default_rng(seed).choice(uniq, n_test, replace=False)
    test = np.isin(ids, np.asarray(test_episodes))
    return ~test, test


def standardise(x, fit_mask):
    """(x - mean) / std with both taken on the fit rows; constant columns get std 1."""
    x = np.asarray(x, dtype=np.float64)
    mu, sd = x[fit_mask].mean(0), x[fit_mask].std(0)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def active_dims(mu, logvar=None, threshold=0.01, return_values=False):
    """Active latent dims. With ``logvar``: mean per-dim KL(N(mu, sigma^2) || N(0, 1)) > threshold (nats).
    Without: variance of the mean across frames > threshold (Burda et al. 2016). Both use raw units."""
    mu = np.asarray(mu, dtype=np.float64)
    if logvar is None:
        per = mu.var(0)
    else:
        lv = np.asarray(logvar, dtype=np.float64)
        per = 0.5 * (mu ** 2 + np.exp(lv) - lv - 1.0).mean(0)
    n = int((per > threshold).sum())
    return (n, per) if return_values else n


def oracle_code(factors, n_latents=None, noise_std=0.0, seed=0):
    """The factors used as the code, padded with zero (or N(0, noise_std)) columns to ``n_latents``."""
    v = np.asarray(factors, dtype=np.float64)
    pad = 0 if n_latents is None else n_latents - v.shape[1]
    if pad < 0:
        raise ValueError("n_latents < number of factors")
    extra = np.random.default_rng(seed).normal(0.0, noise_std, (len(v), pad)) if noise_std else np.zeros((len(v), pad))
    return np.concatenate([v, extra], 1)


def shuffled_code(latents, seed=0):
    """Null code: latent rows permuted across all frames (breaks the frame-to-factor pairing)."""
    z = np.asarray(latents)
    return z[np.random.default_rng(seed).permutation(len(z))]


# ----------------------------------------------------------------------------- DCI
def _norm_entropy(p, base):
    """Entropy of each row of p (rows sum to 1 or are all 0), log base ``base``; 0 for base <= 1."""
    if base <= 1:
        return np.zeros(p.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return h / np.log(base)


def _rows_normalised(r):
    s = r.sum(1, keepdims=True)
    return np.divide(r, s, out=np.zeros_like(r), where=s > 0), s[:, 0]


def disentanglement(R, base=None):
    """DCI-D of an importance matrix R (L latents x K factors); 0 if R is all zero."""
    R = np.asarray(R, dtype=np.float64)
    p, mass = _rows_normalised(R)
    if mass.sum() <= 0:
        return 0.0
    d = 1.0 - _norm_entropy(p, R.shape[1] if base is None else base)
    return float((mass / mass.sum() * d).sum())


def completeness(R, base=None):
    """Per-factor DCI-C of R (L x K); NaN for all-zero columns."""
    R = np.asarray(R, dtype=np.float64)
    p, mass = _rows_normalised(R.T)
    c = 1.0 - _norm_entropy(p, R.shape[0] if base is None else base)
    return np.where(mass > 0, c, np.nan)


def rescale_importance(weights, r2, min_r2=0.05):
    """Columns of |w| rescaled to sum to the factor's clipped test R^2; factors with R^2 < min_r2 -> 0.
    Returns (R, kept)."""
    w = np.abs(np.asarray(weights, dtype=np.float64))
    r2 = np.clip(np.asarray(r2, dtype=np.float64), 0.0, None)
    kept = (r2 >= min_r2) & (w.sum(0) > 0)
    col = w.sum(0)
    R = np.divide(w, col, out=np.zeros_like(w), where=col > 0) * np.where(kept, r2, 0.0)
    return R, kept


def group_labels(groups, n_factors, factor_names=None):
    """Group name per factor from a mapping {factor index (or name) -> group} or a length-K sequence.
    Factors missing from a mapping form their own group (named after the factor)."""
    names = list(factor_names) if factor_names is not None else [f"v{k}" for k in range(n_factors)]
    if isinstance(groups, Mapping):
        lab = [groups.get(k, groups.get(names[k], names[k])) for k in range(n_factors)]
    else:
        lab = list(groups)
        if len(lab) != n_factors:
            raise ValueError("groups sequence must have one entry per factor")
    return np.asarray([str(g) for g in lab])


def grouped_disentanglement(R, labels):
    """D of R with columns summed into groups (``labels``: group name per factor); log base = #groups."""
    uniq = list(dict.fromkeys(labels))
    G = np.stack([np.asarray(R)[:, np.asarray(labels) == g].sum(1) for g in uniq], 1)
    return disentanglement(G, base=len(uniq))


def r2_scores(v, pred, w=None):
    """Per-factor R^2 of pred for v (N x K), optionally with frame weights w (N,); 0 where v is constant."""
    v, pred = np.asarray(v, float), np.asarray(pred, float)
    w = np.ones(len(v)) if w is None else np.asarray(w, float)
    mean = w @ v / w.sum()
    sst = w @ (v - mean) ** 2
    sse = w @ (v - pred) ** 2
    return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), 0.0)


def fit_probes(z_fit, v_fit, groups_fit, z_test, n_alphas=30, n_folds=5, nonlinear=True,
               gbr_kwargs=None, gbr_max_fit=5000, random_state=0):
    """Fit per-factor Lasso (CV grouped by episode) and optionally GBR probes on standardised code.
    Returns dict: weights (L, K) |w| of the Lasso on standardised z and v, pred_lin (N_test, K),
    pred_nl (N_test, K) or None, alpha (K,). Predictions are in the factors' original units."""
    z_fit, z_test, v_fit = (np.asarray(a, dtype=np.float64) for a in (z_fit, z_test, v_fit))
    vm, vs = v_fit.mean(0), v_fit.std(0)
    vs = np.where(vs > 0, vs, 1.0)
    y = (v_fit - vm) / vs
    n_splits = min(n_folds, len(np.unique(groups_fit)))
    cv = list(GroupKFold(n_splits=n_splits).split(z_fit, groups=groups_fit))
    K, L = y.shape[1], z_fit.shape[1]
    weights, alpha = np.zeros((L, K)), np.zeros(K)
    pred_lin = np.zeros((len(z_test), K))
    pred_nl = np.zeros((len(z_test), K)) if nonlinear else None
    rng = np.random.default_rng(random_state)
    sub = rng.choice(len(z_fit), gbr_max_fit, replace=False) if len(z_fit) > gbr_max_fit else slice(None)
    for k in range(K):
        if np.ptp(y[:, k]) == 0:
            continue
        m = LassoCV(alphas=n_alphas, cv=cv, max_iter=5000).fit(z_fit, y[:, k])
        weights[:, k], alpha[k] = np.abs(m.coef_), m.alpha_
        pred_lin[:, k] = m.predict(z_test)
        if nonlinear:
            g = GradientBoostingRegressor(**{**GBR_DEFAULTS, **(gbr_kwargs or {})})
            pred_nl[:, k] = g.fit(z_fit[sub], y[sub, k]).predict(z_test)
    pred_lin = pred_lin * vs + vm
    if nonlinear:
        pred_nl = pred_nl * vs + vm
    return dict(weights=weights, pred_lin=pred_lin, pred_nl=pred_nl, alpha=alpha)


# ----------------------------------------------------------------------------- MIG
def bin_factor(v, n_bins=20):
    """Equal-width bin labels 0..n_bins-1 over the range of v (1-D); a constant v gets all 0."""
    v = np.asarray(v, dtype=np.float64)
    lo, hi = v.min(), v.max()
    if hi <= lo:
        return np.zeros(len(v), dtype=int)
    return np.digitize(v, np.linspace(lo, hi, n_bins + 1)[1:-1])


def binned_entropy(labels, w=None):
    """Plug-in entropy (nats) of integer labels, optionally with frame weights."""
    cnt = np.bincount(np.asarray(labels), weights=w)
    p = cnt[cnt > 0] / cnt.sum()
    return float(-(p * np.log(p)).sum())


def knn_mi_terms(x, labels, n_neighbors=10, random_state=0):
    """Per-frame terms of the Ross (2014) kNN estimator of I(x; label) in nats, x continuous 1-D: the
    estimator of ``mutual_info_classif`` (x scaled to unit std, 1e-10 jitter against ties, k = min(k,
    class size - 1), singleton classes excluded -> NaN). Their mean, clipped at 0, is the MI estimate.
    The jitter is one fixed vector per ``random_state`` for every column, so permuting or sign-flipping
    latents leaves the estimate unchanged even on tied values. 1-D neighbours by sorting: ~15x faster
    than ``mutual_info_classif`` here, same numbers (tests/test_disentangle.py)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    sd = x.std()
    x = x / sd if sd > 0 else x.copy()
    x = x + 1e-10 * max(1.0, np.abs(x).mean()) * np.random.default_rng(random_state).standard_normal(n)
    _, cls, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    n_c = counts[cls]
    k = np.minimum(n_neighbors, n_c - 1)
    # k-th neighbour within the class: in 1-D it lies within +-k sorted positions of the same class
    order = np.lexsort((x, cls))
    xs, cs = x[order], cls[order]
    d = np.full((n, 2 * n_neighbors), np.inf)
    for o in range(1, min(n_neighbors, n - 1) + 1):
        gap = np.where(cs[o:] == cs[:-o], xs[o:] - xs[:-o], np.inf)
        d[:-o, o - 1] = gap
        d[o:, n_neighbors + o - 1] = gap
    d.sort(1)
    radius = np.empty(n)
    radius[order] = d[np.arange(n), np.maximum(k[order], 1) - 1]
    valid = n_c > 1
    xv, r = x[valid], np.nextafter(radius[valid], 0)
    m = cKDTree(xv[:, None]).query_ball_point(xv[:, None], r, return_length=True)  # |x - x_i| <= r, self incl.
    terms = np.full(n, np.nan)
    terms[valid] = digamma(valid.sum()) + digamma(k[valid]) - digamma(n_c[valid]) - digamma(m)
    return terms


def mi_matrix(z, labels, n_neighbors=10, random_state=0, backend="knn", return_terms=False):
    """I(z_j; labels_k) in nats, (L, K); labels (N, K) ints. backend 'knn': :func:`knn_mi_terms`;
    'sklearn': ``mutual_info_classif`` (slow). ``return_terms`` (knn only) also returns the per-frame
    terms (L, K, N) for the bootstrap."""
    z, labels = np.asarray(z, dtype=np.float64), np.asarray(labels)
    if backend == "sklearn":
        return np.stack([mutual_info_classif(z, labels[:, k], discrete_features=False, n_neighbors=n_neighbors,
                                             random_state=random_state) for k in range(labels.shape[1])], 1)
    L, K = z.shape[1], labels.shape[1]
    mi = np.zeros((L, K))
    terms = np.empty((L, K, len(z))) if return_terms else None
    for j in range(L):
        for k in range(K):
            t = knn_mi_terms(z[:, j], labels[:, k], n_neighbors, random_state)
            mi[j, k] = max(0.0, float(np.nanmean(t))) if np.isfinite(t).any() else 0.0
            if return_terms:
                terms[j, k] = t
    return (mi, terms) if return_terms else mi


def mig_from_mi(mi, H):
    """MIG from an MI matrix (L, K) and factor entropies H (K,). Factors with H = 0 are skipped.
    Returns dict MIG, MIG_sup, mig_per_factor (K,), mig_per_latent (L,)."""
    mi, H = np.asarray(mi, float), np.asarray(H, float)
    ok = H > 0
    nmi = np.divide(mi, H, out=np.zeros_like(mi), where=ok)
    per_f = np.full(mi.shape[1], np.nan)
    if ok.any():
        top = -np.sort(-nmi[:, ok], 0)
        per_f[ok] = top[0] - (top[1] if len(top) > 1 else 0.0)
    top = -np.sort(-nmi[:, ok], 1) if ok.any() else np.zeros((mi.shape[0], 1))
    per_l = top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0.0)
    mig = float(np.nanmean(per_f)) if ok.any() else 0.0
    return dict(MIG=mig, MIG_sup=float(per_l.mean()), mig_per_factor=per_f, mig_per_latent=per_l)


# ----------------------------------------------------------------------------- bootstrap and score_all
def bootstrap_episodes(episode_ids, stat_fn, n_boot=200, seed=0, level=0.95):
    """Percentile CIs over episodes. Each replicate draws episodes with replacement and calls
    ``stat_fn(w)`` with per-frame weights w (N,) = multiplicity of the frame's episode; stat_fn returns a
    dict of scalars. Returns {key: (lo, hi)}."""
    uniq, inv = np.unique(np.asarray(episode_ids), return_inverse=True)
    rng = np.random.default_rng(seed)
    samples = {}
    for _ in range(n_boot):
        mult = np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))
        for key, val in stat_fn(mult[inv].astype(np.float64)).items():
            samples.setdefault(key, []).append(val)
    a = (1.0 - level) / 2.0
    return {k: (float(np.nanquantile(v, a)), float(np.nanquantile(v, 1 - a))) if not np.all(np.isnan(v))
            else (np.nan, np.nan) for k, v in samples.items()}


def _summary(weights, r2_lin, r2_nl, mi, H, grp, mat, min_r2):
    """Scalar scores (dict) and per-factor arrays from the probes' sufficient statistics."""
    R, kept = rescale_importance(weights, r2_lin, min_r2)
    c = completeness(R)
    nan = float("nan")
    m = mig_from_mi(mi, H) if mi is not None else dict(MIG=nan, MIG_sup=nan, mig_per_factor=np.full(len(r2_lin), nan),
                                                         mig_per_latent=np.full(R.shape[0], nan))
    i_lin = np.clip(r2_lin, 0, None)
    i_nl = np.clip(r2_nl, 0, None) if r2_nl is not None else np.full(len(r2_lin), nan)
    s = dict(D=disentanglement(R), C=float(c[kept].mean()) if kept.any() else 0.0, I_lin=float(i_lin.mean()),
             I_nl=float(i_nl.mean()), MIG=m["MIG"], MIG_sup=m["MIG_sup"],
             D_grp=grouped_disentanglement(R, grp) if grp is not None else nan,
             D_mat=grouped_disentanglement(R, mat) if mat is not None else nan)
    if grp is not None:
        for g in dict.fromkeys(grp):
            idx = grp == g
            s[f"D@{g}"] = disentanglement(R[:, idx])
            s[f"C@{g}"] = float(c[idx & kept].mean()) if (idx & kept).any() else 0.0
            s[f"I_lin@{g}"] = float(i_lin[idx].mean())
            s[f"I_nl@{g}"] = float(i_nl[idx].mean())
            s[f"MIG@{g}"] = float(np.nanmean(m["mig_per_factor"][idx])) if mi is not None else nan
    return s, dict(importance=R, kept=kept, C_per_factor=c, mig_per_factor=m["mig_per_factor"],
                   mig_per_latent=m["mig_per_latent"])


def score_all(latents, factors, episode_ids, factor_names=None, groups=None, *, material_groups=None,
              logvar=None, latent_names=None, test_episodes=None, test_frac=1 / 3, split_seed=0,
              nonlinear=True, mig=True, n_boot=0, boot_seed=0, level=0.95, n_bins=20, n_neighbors=10,
              min_r2=0.05, n_alphas=30, n_folds=5, gbr_kwargs=None, gbr_max_fit=5000, random_state=0,
              mi_backend="knn"):
    """All scores for one code. latents (N, L) encoder means (raw; standardised here on the fit split),
    factors (N, K), episode_ids (N,). ``groups`` / ``material_groups``: {factor index or name -> group}
    (or a length-K sequence) for D_grp / D_mat. ``logvar`` (N, L) switches active dims to the KL rule.
    ``nonlinear=False`` skips the GBR probe (I_nl = NaN), ``mig=False`` skips MIG (NaN; for wide codes).
    ``n_boot > 0`` adds '<key>_ci' = (lo, hi) for every scalar score (test episodes resampled; probes
    kept; MIG from the per-frame kNN terms of the full test set, reweighted, over the point-estimate
    entropies; a resampled plug-in entropy would be biased low and push MIG up).

    Returns a flat dict. Scalars: D, C, I_lin, I_nl, MIG, MIG_sup, D_grp, D_mat, active_dims, n_fit,
    n_test, and per group g of ``groups``: D@g, C@g, I_lin@g, I_nl@g, MIG@g. Arrays: importance (L, K;
    rescaled, dropped factors zero), importance_raw (L, K; |w|), kept (K,), r2_lin (K,), r2_nl (K,),
    C_per_factor, mig_per_factor (K,), mig_per_latent (L,), mi (L, K; nats), entropy (K,), alpha (K,),
    active_per_dim (L,). Lists: factor_names, latent_names, fit_episodes, test_episodes."""
    z_raw, v, ep = np.asarray(latents, np.float64), np.asarray(factors, np.float64), np.asarray(episode_ids)
    if z_raw.ndim != 2 or v.ndim != 2 or not len(z_raw) == len(v) == len(ep):
        raise ValueError("latents (N, L), factors (N, K) and episode_ids (N,) must share N")
    if not (np.isfinite(z_raw).all() and np.isfinite(v).all()):
        raise ValueError("latents and factors must be finite")
    L, K = z_raw.shape[1], v.shape[1]
    factor_names = list(factor_names) if factor_names is not None else [f"v{k}" for k in range(K)]
    latent_names = list(latent_names) if latent_names is not None else [f"z{j}" for j in range(L)]
    fit, test = split_episodes(ep, test_frac, split_seed, test_episodes)
    z = standardise(z_raw, fit)
    zt, vt = z[test], v[test]
    pr = fit_probes(z[fit], v[fit], ep[fit], zt, n_alphas=n_alphas, n_folds=n_folds, nonlinear=nonlinear,
                    gbr_kwargs=gbr_kwargs, gbr_max_fit=gbr_max_fit, random_state=random_state)
    r2_lin = r2_scores(vt, pr["pred_lin"])
    r2_nl = r2_scores(vt, pr["pred_nl"]) if nonlinear else None
    mi = H = labels = terms = None
    if mig:
        labels = np.stack([bin_factor(vt[:, k], n_bins) for k in range(K)], 1)
        H = np.array([binned_entropy(labels[:, k]) for k in range(K)])
        res = mi_matrix(zt, labels, n_neighbors, random_state, return_terms=n_boot > 0)
        mi, terms = res if n_boot > 0 else (res, None)
        if mi_backend == "sklearn":
            mi = mi_matrix(zt, labels, n_neighbors, random_state, backend="sklearn")
    grp = group_labels(groups, K, factor_names) if groups is not None else None
    mat = group_labels(material_groups, K, factor_names) if material_groups is not None else None
    s, arr = _summary(pr["weights"], r2_lin, r2_nl, mi, H, grp, mat, min_r2)
    n_act, per_dim = active_dims(z_raw, logvar, return_values=True)
    out = dict(s, active_dims=n_act, n_fit=int(fit.sum()), n_test=int(test.sum()), **arr,
               importance_raw=pr["weights"], r2_lin=r2_lin, r2_nl=r2_nl if nonlinear else np.full(K, np.nan),
               mi=mi, entropy=H, alpha=pr["alpha"], active_per_dim=per_dim, factor_names=factor_names,
               latent_names=latent_names, fit_episodes=np.unique(ep[fit]).tolist(),
               test_episodes=np.unique(ep[test]).tolist())
    if n_boot > 0:
        T = V = None
        if mig:
            V = (~np.isnan(terms)).astype(np.float64)  # (L, K, N_test)
            T = np.where(V > 0, terms, 0.0)

        def stat(w):
            mi_b = np.clip((T @ w) / np.maximum(V @ w, 1e-12), 0.0, None) if mig else None
            r2n = r2_scores(vt, pr["pred_nl"], w) if nonlinear else None
            return _summary(pr["weights"], r2_scores(vt, pr["pred_lin"], w), r2n, mi_b, H, grp, mat, min_r2)[0]

        for key, ci in bootstrap_episodes(ep[test], stat, n_boot, boot_seed, level).items():
            out[f"{key}_ci"] = ci
    return out


# ----------------------------------------------------------------------------- figure
def plot_importance(importance, factor_names, latent_names=None, path="importance.png", title=None, r2=None):
    """Heat-map PNG of an importance matrix (L latents x K factors); ``r2`` (K,) is appended to the
    factor labels. Uses the Agg canvas directly (no pyplot state). Returns path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    R = np.asarray(importance, dtype=np.float64)
    L, K = R.shape
    latent_names = list(latent_names) if latent_names is not None else [f"z{j}" for j in range(L)]
    xl = [f"{n} ({q:.2f})" for n, q in zip(factor_names, r2)] if r2 is not None else list(factor_names)
    fig = Figure(figsize=(max(4.0, 0.3 * K + 2.5), max(3.0, 0.28 * L + 2.0)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(R, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(R.max(), 1e-12), interpolation="nearest")
    ax.set_xticks(range(K), xl, rotation=90, fontsize=7)
    ax.set_yticks(range(L), latent_names, fontsize=7)
    ax.set_xlabel("factor (test R²)" if r2 is not None else "factor")
    ax.set_ylabel("latent")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="importance (|w| rescaled to R²)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
