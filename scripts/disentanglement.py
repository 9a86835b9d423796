"""Scores how disentangled the encoders of DisWM checkpoints are on held-out episodes (docs/disentanglement.md).

    MUJOCO_GL=egl .venv/bin/python scripts/collect_videos.py --task dmc2gym_reacher_easy --policy random \\
        --heldout True --episodes 30 --out data/reacher_easy/heldout
    .venv/bin/python scripts/disentanglement.py --task dmc2gym_reacher_easy --episodes data/reacher_easy/heldout \\
        --checkpoints checkpoints runs/diswm_reacher/checkpoint.pt runs/dv2_reacher --out results/disent_reacher \\
        [--pca 20] [--bootstrap 100] [--no-nonlinear] [--frames_per_episode 125] [--colour_set all|each|train|test]

Each checkpoint is one of
- a pretraining folder holding `encoder.pt` (+ `meta.json`): the pretrained action-free video model's beta-VAE
  encoder (the DisWM teacher);
- a run's `checkpoint.pt` (or its folder): the world-model encoder `wm.encoder.*`. A beta-VAE encoder (DisWM, APV,
  DV2 Finetune with --beta_vae) is scored on its mean; a DreamerV2 conv encoder (1024-d at depth 32, 1536-d at 48) on
  a PCA of its embedding fitted on the fit episodes (`--pca` components, the row names the size), and the test R^2 of a
  ridge probe on the full embedding is reported as `I_full`.
Rows added always: `oracle` (the factors themselves), `shuffled` (the oracle's rows permuted: the null) and, unless
`--no-random-init`, a random-init beta-VAE encoder (seed 0; the entangled baseline trained encoders must beat).

Factors: the RGB of every material that covers >= `--min_coverage` of the pixels on average over the loaded frames
(the others are never on screen), and the joint positions (`factor_state`). Frames are subsampled evenly to at most
`--frames_per_episode` per episode (consecutive frames are nearly identical; this keeps the run under 10 minutes on
2 CPU cores). Fit / test split by episode (stratified by colour set and policy, `--test_frac` of each stratum to
test, seed `--split_seed`); every encoder uses the same split. Scores come from `metrics.disentangle.score_all`
(DCI-Lasso D, C, I_lin; GBR I_nl; MIG-kNN, MIG-sup; D_grp over the colour / state groups; D_mat over materials;
active dims from the encoder's logvar; 95 % bootstrap CIs over test episodes).

Writes `<out>/disentanglement.md`, `<out>/disentanglement.csv` and `<out>/importance_<block>_<row>.png` (one heat map
per encoder and block) and prints the table.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from tools import ConfigError  # noqa: E402

MIN_COVERAGE = 0.005
FACTOR_KEYS = ('factor_color', 'factor_color_names', 'factor_state', 'factor_state_names', 'material_names',
               'material_coverage')
MAIN_COLUMNS = ('D', 'C', 'I_lin', 'I_nl', 'MIG', 'MIG_sup', 'D_grp', 'D_mat')
GROUP_COLUMNS = ('D', 'C', 'I_lin', 'I_nl', 'MIG')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='Disentanglement scores (DCI, MIG, colour/state separation) of DisWM '
                                            'encoders on held-out episodes with ground-truth factors.',
                                allow_abbrev=False)
    p.add_argument('--task', required=True, help='task of the episodes, e.g. dmc2gym_reacher_easy (checked against '
                                                 '<episodes>/collections.jsonl)')
    p.add_argument('--episodes', required=True, help='folder of held-out episodes (collect_videos.py --heldout True)')
    p.add_argument('--checkpoints', nargs='*', default=[],
                   help='pretraining folders (encoder.pt + meta.json) and/or run checkpoints (checkpoint.pt or run '
                        'folder)')
    p.add_argument('--names', nargs='*', default=None, help='row labels for --checkpoints (default: from the path)')
    p.add_argument('--out', required=True, help='output folder (disentanglement.md / .csv, heat maps)')
    p.add_argument('--pca', type=int, default=20, help='PCA size for wide (DreamerV2 conv) embeddings (default 20)')
    p.add_argument('--bootstrap', type=int, default=100, help='bootstrap replicates over test episodes (0: no CIs)')
    p.add_argument('--no-nonlinear', dest='nonlinear', action='store_false',
                   help='skip the gradient-boosting probe (I_nl)')
    p.add_argument('--no-random-init', dest='random_init', action='store_false',
                   help='skip the random-init beta-VAE encoder row')
    p.add_argument('--frames_per_episode', type=int, default=250,
                   help='at most this many evenly spaced frames per episode (default 250: about every 2nd of 501; '
                        '0 = all)')
    p.add_argument('--colour_set', default='each',
                   help="'each' (one block per colour set, default), 'all' (both sets pooled: the colour set then "
                        "correlates the channels of all materials, which lowers MIG even for the oracle) or one set "
                        "name (train / test)")
    p.add_argument('--min_coverage', type=float, default=MIN_COVERAGE,
                   help='keep a material if it covers at least this fraction of pixels on average (default 0.005)')
    p.add_argument('--test_frac', type=float, default=1 / 3, help='fraction of episodes in the test split')
    p.add_argument('--split_seed', type=int, default=0, help='seed of the fit/test episode split')
    p.add_argument('--batch', type=int, default=256, help='frames per encoder forward pass')
    p.add_argument('--threads', type=int, default=2, help='torch / BLAS threads')
    p.add_argument('--device', default='cpu')
    return p


# --------------------------------------------------------------------------------------------------------------------
# Episodes and factors
# --------------------------------------------------------------------------------------------------------------------
def load_heldout(folder: str, frames_per_episode: int | None = None) -> dict:
    """Loads every held-out episode in `folder`; keeps at most `frames_per_episode` evenly spaced frames of each.
    Returns dict with images (N, 64, 64, 3) uint8, color (N, M*3), state (N, S), coverage (N, M), episode (N,)
    episode index, colour_set / policy per episode, and the names."""
    import replay as replay_lib

    paths = replay_lib.list_episodes(folder, recursive=True)
    if not paths:
        raise ConfigError(f"No .npz episodes in '{folder}': collect them with scripts/collect_videos.py --heldout "
                          f"True --out {folder}.")
    parts = {k: [] for k in ('image', 'color', 'state', 'coverage', 'episode')}
    sets, policies, frames_total, names = [], [], 0, None
    for i, path in enumerate(paths):
        ep = replay_lib.load_episode(path)
        missing = [k for k in FACTOR_KEYS if k not in ep]
        if missing:
            raise ConfigError(f"'{path}' has no factor keys ({', '.join(missing)}): collect the evaluation episodes "
                              f"with scripts/collect_videos.py --heldout True.")
        these = (ep['factor_color_names'].tolist(), ep['factor_state_names'].tolist(), ep['material_names'].tolist())
        if names is None:
            names = these
        elif these != names:
            raise ConfigError(f"'{path}' has other factors than the first episode: mixed tasks in '{folder}'?")
        T = len(ep['image'])
        frames_total += T
        idx = np.arange(T)
        if frames_per_episode and T > frames_per_episode:
            idx = np.unique(np.round(np.linspace(0, T - 1, frames_per_episode)).astype(int))
        parts['image'].append(ep['image'][idx])
        parts['color'].append(ep['factor_color'][idx].astype(np.float64))
        parts['state'].append(ep['factor_state'][idx].astype(np.float64))
        parts['coverage'].append(ep['material_coverage'][idx].astype(np.float64))
        parts['episode'].append(np.full(len(idx), i))
        sets.append(str(ep['colour_set']) if 'colour_set' in ep else 'unknown')
        policies.append(str(ep['policy']) if 'policy' in ep else 'unknown')
    data = {k: np.concatenate(v) for k, v in parts.items()}
    data.update(colour_set=np.array(sets), policy=np.array(policies), paths=paths, frames_total=frames_total,
                color_names=names[0], state_names=names[1], material_names=names[2])
    return data


def select_factors(data: dict, mask: np.ndarray, min_coverage: float) -> dict:
    """Factor matrix of the frames in `mask`: RGB of the materials whose mean coverage there is >= min_coverage,
    then the state; constant factors are dropped. Returns v (N, K), names, groups, materials, kept / dropped info."""
    coverage = data['coverage'][mask].mean(0)
    materials = data['material_names']
    visible = [m for m, c in zip(materials, coverage) if c >= min_coverage]
    col = [3 * materials.index(m) + c for m in visible for c in range(3)]
    v = np.concatenate([data['color'][mask][:, col], data['state'][mask]], 1)
    names = [data['color_names'][j] for j in col] + list(data['state_names'])
    groups = ['colour'] * len(col) + ['state'] * len(data['state_names'])
    mats = [data['color_names'][j].rsplit('_', 1)[0] for j in col] + ['state'] * len(data['state_names'])
    const = np.ptp(v, 0) == 0
    keep = ~const
    pick = lambda seq: [x for x, k in zip(seq, keep) if k]  # noqa: E731
    return dict(v=v[:, keep], names=pick(names), groups=pick(groups), materials=pick(mats),
                constant=[n for n, c in zip(names, const) if c], visible=visible,
                coverage={m: float(c) for m, c in zip(materials, coverage)})


def stratified_test_episodes(episode, strata: dict, test_frac: float, seed: int) -> list[int]:
    """Test episodes: round(test_frac * n) of each stratum (colour set x policy), at least one overall and at least
    one episode left to fit."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(episode)
    by = {}
    for e in uniq:
        by.setdefault(strata[int(e)], []).append(int(e))
    test = []
    for key in sorted(by):
        eps = by[key]
        n = int(round(test_frac * len(eps)))
        test += rng.choice(eps, n, replace=False).tolist() if n else []
    if not test:
        test = [int(rng.choice(uniq))]
    if len(test) >= len(uniq):
        test = test[:len(uniq) - 1]
    if not test:
        raise ConfigError('Need at least 2 episodes to split into fit and test episodes.')
    return sorted(test)


# --------------------------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------------------------
def _sub_state(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _encoder_from_state(enc_state: dict, where: str):
    """A BetaVAEEncoder or ConvEncoder rebuilt from its state dict (sizes read from the weights)."""
    import networks

    if 'head.weight' in enc_state:
        module = networks.BetaVAEEncoder(int(enc_state['head.weight'].shape[0]) // 2,
                                         in_channels=int(enc_state['convs.0.weight'].shape[1]))
        kind = 'beta_vae'
    elif 'convs.0.weight' in enc_state:
        module = networks.ConvEncoder(int(enc_state['convs.0.weight'].shape[0]),
                                      in_channels=int(enc_state['convs.0.weight'].shape[1]))
        kind = 'conv'
    else:
        raise ConfigError(f"'{where}' holds no encoder this script knows (no convs.0.weight / head.weight).")
    try:
        module.load_state_dict(enc_state)
    except RuntimeError as e:
        raise ConfigError(f"The encoder in '{where}' does not fit {type(module).__name__}: {e}") from None
    return module.eval(), kind


def load_encoder(path: str) -> dict:
    """Encoder of a pretraining folder (encoder.pt) or of a run's checkpoint.pt. Returns dict(module, kind
    ('beta_vae' | 'conv'), source ('pretrained video model' | method name), path)."""
    import torch

    if os.path.isdir(path) and os.path.exists(os.path.join(path, 'encoder.pt')):
        enc_path = os.path.join(path, 'encoder.pt')
        state = torch.load(enc_path, map_location='cpu', weights_only=True)
        module, kind = _encoder_from_state(state, enc_path)
        meta_path = os.path.join(path, 'meta.json')
        meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
        if meta.get('z_dim') not in (None, getattr(module, 'z_dim', None)):
            raise ConfigError(f"'{meta_path}' says z_dim {meta['z_dim']} but encoder.pt has {module.z_dim}.")
        return dict(module=module, kind=kind, source='pretrained video model', path=path,
                    note=f"{meta.get('updates', '?')} updates" if meta else '')
    import agents

    ckpt = os.path.join(path, 'checkpoint.pt') if os.path.isdir(path) else path
    if not os.path.isfile(ckpt):
        raise ConfigError(f"'{path}' is neither a pretraining folder (encoder.pt, meta.json) nor a run's "
                          f"checkpoint.pt (or a run folder holding one).")
    state = agents.read_checkpoint(ckpt)   # the encoder alone: no agent (and no task env) is needed to score it
    if not isinstance(state, dict) or 'agent' not in state:
        raise ConfigError(f"'{ckpt}' is not a dreamer.py checkpoint (no 'agent' weights).")
    enc_state = _sub_state(state['agent'], 'wm.encoder.')
    if not enc_state:
        raise ConfigError(f"'{ckpt}' has no world-model encoder (wm.encoder.*).")
    module, kind = _encoder_from_state(enc_state, ckpt)
    config = state.get('config') or {}
    method = config.get('method_name', 'dreamerv2' if kind == 'conv' else 'beta-VAE')
    steps = (state.get('counters') or {}).get('step')
    return dict(module=module, kind=kind, source=f'{method} world-model encoder', path=ckpt,
                note=f'step {steps}' if steps is not None else '')


def default_label(enc: dict) -> str:
    """'<source> (<run or pretraining folder>)'; a numbered snapshot folder (checkpoints/100) reads 'pt@100'."""
    if not enc['path']:
        return enc['source']
    folder = os.path.normpath(os.path.dirname(enc['path']) if enc['path'].endswith('.pt') else enc['path'])
    name = os.path.basename(folder)
    if name.isdigit() and os.path.basename(os.path.dirname(folder)) == 'checkpoints':
        name = f'{os.path.basename(os.path.dirname(os.path.dirname(folder)))}@{name}'
    return f"{enc['source']} ({name})"


def random_init_encoder(z_dim: int = 20, seed: int = 0) -> dict:
    import torch

    import networks

    torch.manual_seed(seed)
    return dict(module=networks.BetaVAEEncoder(z_dim).eval(), kind='beta_vae', source='random-init beta-VAE',
                path='', note=f'seed {seed}')


def encode(module, images: np.ndarray, batch: int = 256, device: str = 'cpu'):
    """Encoder outputs for uint8 frames (N, 64, 64, 3): (mean or embed (N, L) float64, logvar (N, L) or None)."""
    import torch

    import models

    module = module.to(device)
    means, logvars = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = models.preprocess_image(torch.as_tensor(images[start:start + batch], device=device))
            out = module(x, sample=False)
            means.append((out['mean'] if 'mean' in out else out['embed']).double().cpu().numpy())
            if 'logvar' in out:
                logvars.append(out['logvar'].double().cpu().numpy())
    return np.concatenate(means), (np.concatenate(logvars) if logvars else None)


def pca_fit_transform(x: np.ndarray, fit: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """PCA-n of x fitted on the rows `fit`; returns (codes (N, n), explained variance fraction)."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(n, x.shape[1], int(fit.sum())), svd_solver='randomized', random_state=seed)
    pca.fit(x[fit])
    return pca.transform(x), float(pca.explained_variance_ratio_.sum())


def ridge_information(x: np.ndarray, v: np.ndarray, fit: np.ndarray, test: np.ndarray) -> float:
    """I on a full (wide) embedding: mean over factors of the test R^2 (clipped at 0) of a RidgeCV probe (alpha by
    efficient leave-one-out on the fit frames) on the embedding standardised on the fit frames."""
    from sklearn.linear_model import RidgeCV

    from metrics.disentangle import r2_scores, standardise

    z = standardise(x, fit)
    vm, vs = v[fit].mean(0), v[fit].std(0)
    m = RidgeCV(alphas=np.logspace(-2, 5, 15)).fit(z[fit], (v[fit] - vm) / vs)
    return float(np.clip(r2_scores(v[test], m.predict(z[test]) * vs + vm), 0, None).mean())


# --------------------------------------------------------------------------------------------------------------------
# Scoring and report
# --------------------------------------------------------------------------------------------------------------------
def slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9]+', '_', text).strip('_').lower()[:60] or 'row'


def score_block(block: str, mask, data, rows, args, out_dir, log=print) -> list[dict]:
    """Scores every row (dict label, code (N_all, L), logvar or None, ...) on the frames in `mask`."""
    from metrics.disentangle import oracle_code, plot_importance, score_all, shuffled_code

    fac = select_factors(data, mask, args.min_coverage)
    v, ep = fac['v'], data['episode'][mask]
    strata = {int(e): (str(data['colour_set'][e]), str(data['policy'][e])) for e in np.unique(ep)}
    test_eps = stratified_test_episodes(ep, strata, args.test_frac, args.split_seed)
    fit = ~np.isin(ep, test_eps)
    test = ~fit
    log(f"[{block}] {mask.sum()} frames of {len(np.unique(ep))} episodes ({fit.sum()} fit / {test.sum()} test, test "
        f"episodes {test_eps}); {v.shape[1]} factors: colour of {fac['visible']} + {len(data['state_names'])} state"
        f"{'; constant, dropped: ' + str(fac['constant']) if fac['constant'] else ''}")
    common = dict(factor_names=fac['names'], groups=fac['groups'], material_groups=fac['materials'],
                  test_episodes=test_eps, nonlinear=args.nonlinear, n_boot=args.bootstrap)
    all_rows = [dict(label='oracle', source='the factors', code=None, logvar=None, dim=v.shape[1], kind='oracle'),
                dict(label='shuffled', source='oracle rows permuted (null)', code=None, logvar=None, dim=v.shape[1],
                     kind='shuffled')] + rows
    results = []
    for row in all_rows:
        tic = time.time()
        extra = {}
        if row['kind'] == 'oracle':
            z, logvar = oracle_code(v), None
        elif row['kind'] == 'shuffled':
            z, logvar = shuffled_code(v, seed=0), None
        else:
            z = row['code'][mask]
            logvar = row['logvar'][mask] if row['logvar'] is not None else None
            if z.shape[1] > args.pca:
                if args.full_info:
                    extra['I_full'] = ridge_information(z, v, fit, test)
                z, explained = pca_fit_transform(z, fit, args.pca)
                extra['pca_explained'] = explained
        res = score_all(z, v, ep, latent_names=[f'z{j}' for j in range(z.shape[1])], logvar=logvar, **common)
        res.update(extra)
        blank_single_group(res, fac)
        res['seconds'] = time.time() - tic
        label = row['label']
        if row['kind'] not in ('oracle', 'shuffled') and row['dim'] > args.pca:
            label = f"{label} (PCA-{z.shape[1]} of {row['dim']}-d)"
        png = os.path.join(out_dir, f'importance_{slug(block)}_{slug(label)}.png')
        plot_importance(res['importance'], fac['names'], res['latent_names'], png,
                        title=f"{args.task} [{block}]\n{label}\nD {res['D']:.2f}  C {res['C']:.2f}  "
                              f"I_lin {res['I_lin']:.2f}  MIG {res['MIG']:.2f}",
                        r2=res['r2_lin'])
        results.append(dict(block=block, label=label, row=row, res=res, png=png, fac=fac, test_eps=test_eps,
                            n_fit=int(fit.sum()), n_test=int(test.sum())))
        log(f"  {label:<44s} D {res['D']:.3f} C {res['C']:.3f} I_lin {res['I_lin']:.3f} I_nl {res['I_nl']:.3f} "
            f"MIG {res['MIG']:.3f} MIG_sup {res['MIG_sup']:.3f} D_grp {res['D_grp']:.3f} "
            + (f"I_full {extra['I_full']:.3f} " if 'I_full' in extra else '') + f"({res['seconds']:.0f} s)")
    return results


def blank_single_group(res: dict, fac: dict) -> None:
    """D_grp (D_mat) compares how latents split their importance between groups; when the probes can read factors
    of only one group (the others' R^2 < min_r2 are dropped), it is 1 by construction and says nothing: set NaN."""
    kept = np.asarray(res['kept'], bool)
    for key, labels in (('D_grp', fac['groups']), ('D_mat', fac['materials'])):
        if len({g for g, k in zip(labels, kept) if k}) < 2:
            res[key] = float('nan')
            res[f'{key}_ci'] = (float('nan'), float('nan'))
            res.setdefault('notes', []).append(f'{key}: factors of fewer than 2 groups readable (R^2 >= 0.05)')


def _fmt(res: dict, key: str, ci: bool = True) -> str:
    val = res.get(key, float('nan'))
    if val is None or (isinstance(val, float) and math.isnan(val)):
        return '–'
    text = f'{val:.2f}'
    lo_hi = res.get(f'{key}_ci')
    if ci and lo_hi is not None and not any(math.isnan(x) for x in lo_hi):
        text += f' [{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]'
    return text


def _active(r: dict) -> str:
    if r['row']['kind'] in ('oracle', 'shuffled'):
        return '–'
    rule = 'KL' if r['row']['logvar'] is not None else 'var'
    return f"{r['res']['active_dims']}/{len(r['res']['latent_names'])} ({rule})"


def markdown_table(results: list[dict]) -> str:
    head = ['encoder', *MAIN_COLUMNS, 'active dims', 'I_full']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in results:
        res = r['res']
        i_full = f"{res['I_full']:.2f}" if 'I_full' in res else '–'
        lines.append('| ' + ' | '.join([r['label'], *(_fmt(res, k) for k in MAIN_COLUMNS), _active(r), i_full]) + ' |')
    return '\n'.join(lines)


def group_table(results: list[dict]) -> str:
    groups = [g for g in dict.fromkeys(results[0]['fac']['groups'])]
    head = ['encoder'] + [f'{k}@{g}' for g in groups for k in GROUP_COLUMNS]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in results:
        lines.append('| ' + ' | '.join([r['label']] + [_fmt(r['res'], f'{k}@{g}', ci=False) for g in groups
                                                       for k in GROUP_COLUMNS]) + ' |')
    return '\n'.join(lines)


def r2_table(results: list[dict]) -> str:
    names = results[0]['fac']['names']
    head = ['encoder'] + names
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in results:
        lines.append('| ' + ' | '.join([r['label']] + [f'{x:.2f}' for x in r['res']['r2_lin']]) + ' |')
    return '\n'.join(lines)


def _counts(values) -> dict:
    names, counts = np.unique(np.asarray(values), return_counts=True)
    return dict(zip(names.tolist(), counts.tolist()))


def write_reports(out_dir: str, blocks: dict, args, data: dict, seconds: float) -> tuple[str, str]:
    md_path, csv_path = os.path.join(out_dir, 'disentanglement.md'), os.path.join(out_dir, 'disentanglement.csv')
    n_eps = len(data['paths'])
    lines = [f'# Disentanglement: {args.task}', '',
             f"Episodes: `{args.episodes}` ({n_eps} episodes, {data['frames_total']} frames; "
             f"{len(data['episode'])} frames scored: at most {args.frames_per_episode} evenly spaced frames per "
             f"episode). Colour sets: {_counts(data['colour_set'])}; policies: {_counts(data['policy'])}.",
             f"Probes: DCI-Lasso (D, C, I_lin = test R^2), {'GBR (I_nl), ' if args.nonlinear else ''}MIG-kNN; "
             f"{args.bootstrap} bootstrap replicates over test episodes (95 % CI in brackets). Split by episode, "
             f"stratified by colour set and policy (seed {args.split_seed}). Wall time {seconds:.0f} s.", '']
    for block, results in blocks.items():
        fac, first = results[0]['fac'], results[0]
        dropped = {m: round(c, 4) for m, c in fac['coverage'].items() if m not in fac['visible']}
        lines += [f'## Block `{block}`', '',
                  f"{first['n_fit']} fit / {first['n_test']} test frames; test episodes {first['test_eps']}.",
                  f"Factors ({len(fac['names'])}): colour of the visible materials "
                  f"{ {m: round(fac['coverage'][m], 4) for m in fac['visible']} } (mean pixel coverage) and the state "
                  f"{list(data['state_names'])}. Dropped (coverage < {args.min_coverage}): {dropped}."
                  + (f" Constant, dropped: {fac['constant']}." if fac['constant'] else ''), '',
                  markdown_table(results), '', 'Colour-only and state-only sub-scores:', '', group_table(results), '',
                  'Per-factor test R^2 of the Lasso probe:', '', r2_table(results), '',
                  'Heat maps: ' + ', '.join(f"[{r['label']}]({os.path.basename(r['png'])})" for r in results), '']
        for r in results:
            row = r['row']
            notes = '; '.join(r['res'].get('notes', []))
            if row['kind'] not in ('oracle', 'shuffled'):
                lines.append(f"- {r['label']}: {row['source']}, {row['dim']}-d, `{row['path']}` {row['note']}"
                             + (f"; PCA explains {r['res']['pca_explained']:.0%} of the variance"
                                if 'pca_explained' in r['res'] else '') + (f"; {notes}" if notes else ''))
            elif notes:
                lines.append(f"- {r['label']}: {notes}")
        lines.append('')
    with open(md_path, 'w') as f:
        f.write('\n'.join(lines))
    keys = [*MAIN_COLUMNS, 'active_dims']
    group_keys = sorted({k for results in blocks.values() for r in results for k in r['res']
                         if '@' in k and not k.endswith('_ci')})
    with open(csv_path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['block', 'encoder', 'source', 'path', 'code_dim', 'latents', 'n_fit', 'n_test', 'n_factors']
                   + [c for k in keys for c in (k, f'{k}_lo', f'{k}_hi')] + ['I_full', 'pca_explained']
                   + group_keys + ['seconds'])
        for block, results in blocks.items():
            for r in results:
                res, row = r['res'], r['row']
                vals = []
                for k in keys:
                    ci = res.get(f'{k}_ci', (float('nan'), float('nan')))
                    vals += [res[k], ci[0], ci[1]]
                w.writerow([block, r['label'], row['source'], row.get('path', ''), row['dim'],
                            len(res['latent_names']), r['n_fit'], r['n_test'], len(r['fac']['names'])] + vals
                           + [res.get('I_full', ''), res.get('pca_explained', '')]
                           + [res.get(k, '') for k in group_keys] + [f"{res['seconds']:.1f}"])
    return md_path, csv_path


def check_task(folder: str, task: str) -> None:
    path = os.path.join(folder, 'collections.jsonl')
    if not os.path.exists(path):
        return
    with open(path) as f:
        tasks = {json.loads(line).get('task') for line in f if line.strip()}
    if tasks and task not in tasks:
        raise ConfigError(f"'{folder}' holds episodes of {sorted(tasks)}, not {task}.")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.full_info = True
    start = time.time()
    try:
        import torch
        torch.set_num_threads(args.threads)
        check_task(args.episodes, args.task)
        if args.names is not None and len(args.names) != len(args.checkpoints):
            raise ConfigError(f'--names has {len(args.names)} labels for {len(args.checkpoints)} checkpoints.')
        encoders = [load_encoder(p) for p in args.checkpoints]
        data = load_heldout(args.episodes, args.frames_per_episode)
        print(f"Loaded {len(data['paths'])} episodes from {args.episodes}: {data['frames_total']} frames, scoring "
              f"{len(data['episode'])} (at most {args.frames_per_episode} per episode).")
        if args.random_init:
            encoders.append(random_init_encoder())
        labels = list(args.names) if args.names else [None] * len(args.checkpoints)
        rows = []
        for i, enc in enumerate(encoders):
            tic = time.time()
            code, logvar = encode(enc['module'], data['image'], args.batch, args.device)
            label = labels[i] if i < len(labels) and labels[i] else default_label(enc)
            rows.append(dict(label=label, source=enc['source'], path=enc['path'], note=enc['note'], code=code,
                             logvar=logvar, dim=code.shape[1], kind=enc['kind']))
            print(f"Encoded {len(code)} frames with {label}: {code.shape[1]}-d ({time.time() - tic:.1f} s)")
        sets = sorted(set(data['colour_set'].tolist()))
        if args.colour_set == 'all':
            block_masks = {'all': np.ones(len(data['episode']), bool)}
        elif args.colour_set == 'each':
            block_masks = {s: data['colour_set'][data['episode']] == s for s in sets}
        elif args.colour_set in sets:
            block_masks = {args.colour_set: data['colour_set'][data['episode']] == args.colour_set}
        else:
            raise ConfigError(f"--colour_set {args.colour_set!r}: use all, each or one of {sets}.")
        os.makedirs(args.out, exist_ok=True)
        blocks = {}
        for block, mask in block_masks.items():
            blocks[block] = score_block(block, mask, data, rows, args, args.out)
    except ConfigError as e:
        print(f'Error: {e}', file=sys.stderr)
        return 2
    seconds = time.time() - start
    md_path, csv_path = write_reports(args.out, blocks, args, data, seconds)
    for block, results in blocks.items():
        print(f'\n[{block}]\n' + markdown_table(results))
    print(f'\nWrote {md_path}, {csv_path} and {sum(len(r) for r in blocks.values())} heat maps in {seconds:.0f} s.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
