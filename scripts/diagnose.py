"""Diagnoses a trained agent on its own training episodes: how well the world model predicts rewards (on observed
states and open-loop from recorded actions) and how the critic's values compare with the discounted returns that
actually followed. The checks of docs/learning.md's investigation, for a run that learns slower than expected.

    python scripts/diagnose.py runs/learning/cartpole_balance/seed_0               # its last 4 training episodes
    python scripts/diagnose.py RUN --episodes 8 --window 200 --horizons 1,5,10,15,20,40
    python scripts/diagnose.py RUN --gradients bf16 --threads 2           # one update's gradients, bf16 vs fp32
    python scripts/diagnose.py RUN --gradients bf16 --terms               # ... and per world-model loss term
    python scripts/diagnose.py RUN --source eval --episodes 10 --imagine  # its last evaluation, per episode
    python scripts/diagnose.py RUN --source eval --episodes 10 --imagine --frames imagination.png
    python scripts/diagnose.py RUN --source eval --episodes 10 --imagine_variants   # sampling or closed loop?
    python scripts/diagnose.py RUN --stalls --episodes 0                  # which episodes end standing still
    python scripts/diagnose.py RUN --actions --source eval --episodes 10  # does the policy hold a joint still?
    python scripts/diagnose.py RUN --reward_refit --episodes 0 --threads 2  # is the reward head behind its data?
    python scripts/diagnose.py RUN --first_updates --set opt_eps_keras=True  # the first training call, replayed
    python scripts/diagnose.py RUN/checkpoints/checkpoint_000040000.pt --source eval --episodes 10 --imagine

RUN is a run folder or a checkpoint file: its checkpoint.pt, or a snapshot that `--keep_checkpoints True` kept of an
earlier evaluation (RUN/checkpoints/checkpoint_<env step>.pt). With a checkpoint, every check reads only the
episodes written up to it (that evaluation's episodes are the last `--source eval` ones), so a snapshot is diagnosed
on what it had seen and done, not on the run's later episodes.

Rewards are per agent step (the sum over `action_repeat` env steps), as the model sees them. The realized return at
step t is sum_k discount^k r[t+k] up to the episode's end; it is compared with the critic only for steps whose
remaining episode is long enough for the cut-off tail to be below 5 % of the return's scale.

`--gradients bf16` (or `16`) asks whether reduced precision changes what an update would do at this checkpoint: on one
batch of the run's last episodes (batch_size x batch_length, sampled as in training) it computes the world-model, actor and critic
gradients of one update without applying them, in fp32 and under autocast, from the same weights and the same seeds,
and prints per part the gradient norms, the cosine between the two precisions' gradients for the same seed, and,
as the yardstick, the cosine between fp32 gradients of two different seeds (the sampling noise of an update).
`--terms` adds the same figures for each world-model loss term's share of each part it reaches (`encoder/image`,
`encoder/kl`, `rssm/reward`, ...): which term a disagreement comes from, and whether terms cancel (the part's norm
well below its terms' norms).

`--imagine` adds, per episode (sorted by return), what the actor's imagination expects from the states the episode
visited against what followed: rewards imagined with the actor and with the episode's own actions against the real
ones over the imagination horizon (`--imagine_steps` to look further), and the imagined lambda-return and the
critic's value against the realized discounted return. Imagination and values far above
the episode in its low-return episodes only is the world model misjudging the states those episodes reach, and the
actor then has no reason to avoid them (docs/learning.md, "Why cheetah_run fell after 30k"). `--source eval` reads
the run's evaluation episodes (the mean-action policy) instead of its training episodes. `--frames PNG` draws, for
the lowest- and highest-return episode, the real frames from agent step `--frames_start` on above two rollouts the
actor imagines from the same posterior state: what the world model believes happens next.

`--stalls` needs no checkpoint (only the episodes and `config.yaml`) and loads no model: per episode its return and
the share of its last `--stall_tail` agent steps (default 250, half a DMC episode) with a reward below
`--stall_reward` (0.02); an episode with at least `--stall_share` (40 %) of them *stalls*, i.e. ends lying on the floor or
standing still (cheetah_run's reward is ~0 whenever the body does not move forward). Then the count of stalled
episodes per 10k env steps (training episodes) or per evaluation. `--episodes 0` reads every episode.
`--actions` (no model either) prints per episode, for each action dimension, the mean action, the share of steps
with |a| > 0.95 and the number of sign changes between consecutive agent steps, then their averages per 10k env
steps or per evaluation: a policy stuck holding one joint to one side shows a mean far from 0 with few sign changes
(finger_spin seed 1 at 60k, docs/learning.md).

`--reward_refit` asks whether the reward head's errors on *still* steps (reward below `--stall_reward`) come from
too little training or from states new to it. On the posterior features of the chosen episodes (observed in
consecutive windows of the run's `batch_length`, as in training; the features stay fixed) it compares, on the
still steps and on the others: the run's head; the run's head trained on for `--refit_steps` more Adam steps on
all the episodes (the run's reward learning rate, batches of batch_size x batch_length steps); and a new head of the
same size fitted on all but the last `--held_out` episodes, on those and on the held-out ones. The run's head well
above the refitted one on the same steps is a head lagging behind its own data; the new head far off on the held-out
episodes only is a reward that does not carry over to the newest states.

`--first_updates` replays the run's first training call from fresh weights (the run's seed and config, no checkpoint
needed): `--updates` updates (default: the run's `prefill_updates`) sampled as in training from its random prefill
episodes, then the actor's mean action, its saturated share (|mean| > 0.9) and its std on every state of those
episodes. It asks what the actor does before it has seen much reward, e.g. whether it already sits in a corner of the
action box (docs/learning.md, "Adam's epsilon"); `--set KEY=VALUE` (repeatable) changes a config key for the
replay, to compare a variant from the same start (`--set opt_eps_keras=True`).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # rundata

BINS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)


def discounted_returns(reward: np.ndarray, discount: float) -> np.ndarray:
    """G[t] = sum_{k >= 0} discount^k reward[t + k] up to the end of the array (no bootstrap)."""
    out = np.zeros(len(reward), np.float64)
    running = 0.0
    for t in range(len(reward) - 1, -1, -1):
        running = reward[t] + discount * running
        out[t] = running
    return out


def stall_rows(rewards: list[np.ndarray], tail: int = 250, threshold: float = 0.02, share: float = 0.4) -> list[dict]:
    """Per episode (per-agent-step rewards): its return, the share of its last `tail` steps below `threshold`, and
    whether that share is at least `share` (the episode stalls)."""
    rows = []
    for reward in rewards:
        reward = np.asarray(reward, np.float64).reshape(-1)
        still = float(np.mean(reward[-tail:] < threshold)) if len(reward) else 0.0
        rows.append(dict(ret=float(reward.sum()), length=len(reward), still=still, stalled=bool(still >= share)))
    return rows


def episode_positions(lengths: list[int], source: str, action_repeat: int, per_eval: int, first_step: int = 0,
                      first_index: int = 0, group_steps: int = 10000) -> list[tuple[str, int]]:
    """(label, group) per episode: training episodes by the env step they end at (their lengths summed, prefill
    included, from `first_step`) in groups of `group_steps`; evaluation episodes by evaluation (`per_eval` each,
    numbered from 1 at episode index 0; `first_index` is the first episode's index)."""
    out, step = [], first_step
    for i, length in enumerate(lengths, first_index):
        if source == 'train':
            step += length * action_repeat
            out.append((f'{step}', (step - 1) // group_steps))
        else:
            out.append((f'{i // per_eval + 1}, {i % per_eval + 1}', i // per_eval))
    return out


def group_name(key: int, source: str, group_steps: int = 10000) -> str:
    if source == 'train':
        return f'{key * group_steps / 1000:g}k-{(key + 1) * group_steps / 1000:g}k env steps'
    return f'evaluation {key + 1}'


def groups_title(what: str, source: str, group_steps: int = 10000) -> str:
    return f'{what} per ' + (f'{group_steps} env steps:' if source == 'train' else 'evaluation:')


def position_label(source: str) -> str:
    return 'env step at its end' if source == 'train' else 'evaluation, episode'


def stall_report(rows: list[dict], source: str, action_repeat: int, per_eval: int, first_step: int = 0,
                 first_index: int = 0, group_steps: int = 10000) -> str:
    """One line per episode and the stalled count per group (groups as in `episode_positions`)."""
    lines, groups = [f'{position_label(source):>20} {"return":>8} {"still (tail)":>12}  stalled'], {}
    places = episode_positions([r['length'] for r in rows], source, action_repeat, per_eval, first_step,
                               first_index, group_steps)
    for row, (where, key) in zip(rows, places):
        groups.setdefault(key, []).append(row['stalled'])
        lines.append(f"{where:>20} {row['ret']:8.1f} {row['still']:12.0%}  {'yes' if row['stalled'] else ''}")
    lines.append(groups_title('stalled episodes', source, group_steps))
    for key, flags in sorted(groups.items()):
        lines.append(f'  {group_name(key, source, group_steps)}: {sum(flags)} of {len(flags)}')
    return '\n'.join(lines)


def action_rows(actions: list[np.ndarray], rewards: list[np.ndarray], saturated: float = 0.95) -> list[dict]:
    """Per episode (per-agent-step actions T x A and rewards): its return and, per action dimension, the mean action,
    the share of steps with |a| > `saturated` and the number of sign changes between consecutive steps (a policy
    holding one joint to one side: a mean far from 0 and few sign changes)."""
    rows = []
    for action, reward in zip(actions, rewards):
        action = np.asarray(action, np.float64).reshape(len(action), -1)
        changes = np.count_nonzero(np.diff(action >= 0, axis=0), axis=0)   # zeros for a one-step episode
        rows.append(dict(ret=float(np.sum(reward)), length=len(action), mean=action.mean(0),
                         saturated=np.mean(np.abs(action) > saturated, 0), changes=changes))
    return rows


def action_report(rows: list[dict], source: str, action_repeat: int, per_eval: int, first_step: int = 0,
                  first_index: int = 0, group_steps: int = 10000) -> str:
    """One line per episode (return; per action dimension: mean, saturated share, sign changes) and per group the
    averages of each (groups as in `episode_positions`)."""
    dims = len(rows[0]['mean']) if rows else 0
    head = f'{position_label(source):>20} {"return":>8} | ' + ' | '.join(
        f'a[{d}] mean  sat  changes' for d in range(dims))
    lines, groups = [head], {}

    def cells(mean, sat, changes):
        return ' | '.join(f'{m:+9.2f} {s:4.0%} {c:8.0f}' for m, s, c in zip(mean, sat, changes))

    places = episode_positions([r['length'] for r in rows], source, action_repeat, per_eval, first_step,
                               first_index, group_steps)
    for row, (where, key) in zip(rows, places):
        groups.setdefault(key, []).append(row)
        lines.append(f"{where:>20} {row['ret']:8.1f} | {cells(row['mean'], row['saturated'], row['changes'])}")
    lines.append(groups_title('averages', source, group_steps))
    for key, group in sorted(groups.items()):
        avg = [np.mean([r[k] for r in group], 0) for k in ('mean', 'saturated', 'changes')]
        lines.append(f"{group_name(key, source, group_steps):>20} {np.mean([r['ret'] for r in group]):8.1f} | "
                     f'{cells(*avg)}')
    return '\n'.join(lines)


def binned(true: np.ndarray, pred: np.ndarray, edges=BINS) -> list[tuple[float, float, int, float, float]]:
    """(low, high, count, mean true, mean predicted) per bin of the true value (the last bin includes its top)."""
    rows = []
    for i, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        mask = (true >= low) & ((true <= high) if last else (true < high))
        if mask.any():
            rows.append((low, high, int(mask.sum()), float(true[mask].mean()), float(pred[mask].mean())))
    return rows


def value_tail(discount: float) -> int:
    """Steps after which discount^k <= 5 %: a realized return needs this much of the episode left to be compared."""
    return int(np.ceil(np.log(0.05) / np.log(discount)))


def observe_window(wm, episode: dict, start: int, stop: int) -> tuple[dict, dict]:
    """The world model's posterior over agent steps start..stop-1 of `episode`, observed from a fresh state (the
    window's first step marked as an episode start); returns (outputs of `wm.observe`, the window's tensors)."""
    import torch
    data = {k: torch.as_tensor(episode[k][start:stop][None]) for k in ('image', 'action', 'reward', 'is_first')}
    data = {k: v if k == 'image' else v.float() for k, v in data.items()}
    data['is_first'][0, 0] = 1.0
    return wm.observe(data, sample=False), data


def diagnose(agent, episodes: list[dict], window: int, horizons: list[int], context: int = 10) -> dict:
    """Reward and value checks of `agent` (eval mode) on episodes (dicts of numpy arrays in the replay format)."""
    import torch

    wm, config = agent.wm, agent.config
    true_r, pred_r, values, realized = [], [], [], []
    open_err = {h: [] for h in horizons}
    tail = value_tail(config.discount)
    with torch.no_grad():
        for ep in episodes:
            length = len(ep['reward'])
            returns = discounted_returns(ep['reward'].astype(np.float64), config.discount)
            for start in range(0, length - window + 1, window):
                out, data = observe_window(wm, ep, start, start + window)    # each window from a fresh state
                feat = wm.rssm.feat(out['post'])
                # step 0 of a window has no information about the reward that led to it
                true_r.append(ep['reward'][start + 1:start + window])
                pred_r.append(wm.reward(feat)[0, 1:].numpy())
                steps = np.arange(start + 1, start + window)
                keep = steps + tail <= length
                values.append(agent.behavior.critic(feat)[0, 1:].numpy()[keep])
                realized.append(returns[steps[keep]])
                if context + max(horizons) <= window:
                    state = {k: v[:, context - 1] for k, v in out['post'].items()}
                    for t in range(1, max(horizons) + 1):
                        state = wm.rssm.img_step(state, wm.pad_action(data['action'][:, context - 1 + t]),
                                                 sample=False)
                        if t in open_err:
                            pred = float(wm.reward(wm.rssm.feat(state))[0])
                            open_err[t].append(abs(pred - float(ep['reward'][start + context - 1 + t])))
    true_r, pred_r = np.concatenate(true_r), np.concatenate(pred_r)
    values, realized = np.concatenate(values), np.concatenate(realized)
    def corr(a, b):
        return float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 and a.std() > 0 and b.std() > 0 else float('nan')

    return dict(steps=len(true_r), reward_mae=float(np.abs(true_r - pred_r).mean()), reward_corr=corr(true_r, pred_r),
                reward_bins=binned(true_r, pred_r),
                open_loop={h: float(np.mean(e)) for h, e in open_err.items() if e},
                value_steps=len(values), value_mean=float(values.mean()) if len(values) else float('nan'),
                return_mean=float(realized.mean()) if len(realized) else float('nan'),
                value_corr=corr(realized, values))


def visited_starts(wm, ep: dict, window: int, horizon: int, stride: int, context: int = 10):
    """The start states of the imagination checks: each `window` of the episode observed from a fresh state, and
    from it every `stride`-th step after the first `context` that leaves `horizon` steps. Yields (window start,
    the window's posterior and data, the start indices in the window, the posterior states there)."""
    for start in range(0, len(ep['reward']) - window + 1, window):
        out, data = observe_window(wm, ep, start, start + window)
        index = np.arange(context, window - horizon + 1, stride)
        yield start, out, data, index, {k: v[0, index] for k, v in out['post'].items()}


def rollout_rewards(agent, first: dict, data: dict, index: np.ndarray, horizon: int, actions: str, sample: bool):
    """Rewards r(s_0) ... r(s_{H-1}) (H, N) imagined from `first` with the actions of the episode ('episode',
    open loop) or of the actor acting on the imagined states ('actor': sampled, 'mean': its mean), latents sampled or
    at their mode."""
    import torch
    wm, behavior = agent.wm, agent.behavior
    state, rewards = first, [wm.reward(wm.rssm.feat(first))]
    for j in range(1, horizon):                             # action[i] is the one that led to step i
        if actions == 'episode':
            action = data['action'][0, index + j]
        else:
            dist = behavior.actor(behavior.actor_input(wm.rssm.feat(state), None))
            action = dist.rsample() if actions == 'actor' else dist.mode()
        state = wm.rssm.img_step(state, wm.pad_action(action), sample=sample)
        rewards.append(wm.reward(wm.rssm.feat(state)))
    return torch.stack(rewards)


def imagination_check(agent, episodes: list[dict], window: int, stride: int = 10, horizon: int | None = None
                      ) -> list[dict]:
    """Per episode: what the agent's imagination expects from the states it visited, against what followed.

    From the posterior state at every `stride`-th step of each `window` (observed from a fresh state, steps after the
    first 10), the actor is rolled `horizon` (default: the run's `imag_horizon`) steps through the world model as in
    training (sampled actions), and the model is also rolled open loop with the actions the episode took (prior
    means). The imagined rewards r(s_0) ... r(s_{H-1}) of both are compared with the episode's rewards over the same
    H steps, the imagined lambda-return at s_0 (the actor's objective) and the critic's value with the realized
    discounted return. Each row: return (the episode's sum of rewards), reward (its mean per agent step), predicted
    (the reward head on the observed states), imagined / replayed / followed (mean reward per step over the H steps
    imagined with the actor, with the episode's actions, and the H real steps), lambda_return, value, realized (means
    over the start states whose remaining episode covers the return's tail)."""
    import torch

    import tools
    wm, behavior, config = agent.wm, agent.behavior, agent.config
    horizon = horizon or config.imag_horizon
    tail = value_tail(config.discount)
    rows = []
    with torch.no_grad():
        for ep in episodes:
            length = len(ep['reward'])
            returns = discounted_returns(ep['reward'].astype(np.float64), config.discount)
            predicted, imagined, replayed, followed, lam, value, realized = [], [], [], [], [], [], []
            for start, out, data, index, first in visited_starts(wm, ep, window, horizon, stride):
                predicted.append(wm.reward(wm.rssm.feat(out['post']))[0, 1:].numpy())
                feats, _ = behavior.imagine(wm, first, horizon)                      # (H+1, N, F)
                reward = agent.reward_fn(feats)                                       # (H, N)
                target = tools.lambda_return(reward, behavior.slow_critic(feats[1:]),
                                             torch.full_like(reward, config.discount), config.discount_lambda)
                steps = start + index
                imagined.append(reward.mean(0).numpy())
                replayed.append(rollout_rewards(agent, first, data, index, horizon, 'episode', False).mean(0).numpy())
                followed.append(np.array([ep['reward'][t:t + horizon].mean() for t in steps]))
                keep = steps + tail <= length
                lam.append(target[0].numpy()[keep])
                value.append(behavior.critic(feats[0]).numpy()[keep])
                realized.append(returns[steps[keep]])
            mean = lambda parts: float(np.concatenate(parts).mean()) if sum(map(len, parts)) else float('nan')
            rows.append(dict(ret=float(ep['reward'].sum()), reward=float(ep['reward'][1:].mean()),
                             predicted=mean(predicted), imagined=mean(imagined), replayed=mean(replayed),
                             followed=mean(followed), lambda_return=mean(lam), value=mean(value),
                             realized=mean(realized)))     # nan: no start state with enough episode left
    return rows


# --imagine_variants: who picks the actions (the actor sampling, the actor's mean, the episode's own) x whether the
# latents are sampled (as in training) or taken at their mode.
VARIANTS = (('actor_sample', 'actor', True), ('actor_mean', 'mean', True), ('actor_mean_mode', 'mean', False),
            ('episode', 'episode', True), ('episode_mode', 'episode', False))


def imagination_variants(agent, episodes: list[dict], window: int, stride: int = 10, horizon: int | None = None,
                         seed: int = 0) -> list[dict]:
    """Per episode: the mean reward per agent step imagined from the visited states (`imagination_check`'s start
    states) in five ways, against the real rewards that followed: the actor picking the actions (sampled as in
    training, or its mean action as in evaluation) or the episode's own actions replayed open loop, with the latents
    sampled or at their mode. It tells whether imagination leaves the real trajectory because of the sampling or
    because the actor, acting on imagined states, steers elsewhere (docs/learning.md, "cheetah_run with
    categorical latents"). Seeded: the same call gives the same numbers."""
    import torch
    horizon = horizon or agent.config.imag_horizon
    torch.manual_seed(seed)
    rows = []
    with torch.no_grad():
        for ep in episodes:
            parts = {name: [] for name, _, _ in VARIANTS}
            followed = []
            for start, _, data, index, first in visited_starts(agent.wm, ep, window, horizon, stride):
                followed.append(np.array([ep['reward'][start + t:start + t + horizon].mean() for t in index]))
                for name, actions, sample in VARIANTS:
                    rewards = rollout_rewards(agent, first, data, index, horizon, actions, sample)
                    parts[name].append(rewards.mean(0).float().numpy())
            row = dict(ret=float(ep['reward'].sum()), followed=float(np.concatenate(followed).mean()))
            row.update({name: float(np.concatenate(v).mean()) for name, v in parts.items()})
            rows.append(row)
    return rows


def variants_report(rows: list[dict], horizon: int) -> str:
    lines = [f'imagination from visited states ({horizon} steps) by who picks the actions and how the latents are '
             'drawn, per episode by return; mean reward per agent step against the real rewards that followed',
             '  return | followed | actor sampled  actor mean  actor mean, latent modes | episode\'s actions  '
             'the same, latent modes']
    for r in sorted(rows, key=lambda r: r['ret']):
        lines.append(f"  {r['ret']:6.1f} | {r['followed']:.3f} | {r['actor_sample']:.3f}  {r['actor_mean']:.3f}  "
                     f"{r['actor_mean_mode']:.3f} | {r['episode']:.3f}  {r['episode_mode']:.3f}")
    return '\n'.join(lines)


def imagination_report(rows: list[dict], horizon: int) -> str:
    lines = [f'imagination from visited states ({horizon} steps), per episode by return; per agent step: reward, '
             'predicted on observed states, imagined with the actor (sampled actions) and with the episode\'s own '
             'actions vs the real rewards that followed; values: the imagined lambda-return and the critic vs the '
             'realized discounted return',
             '  return | reward  predicted | actor  replayed  followed | lambda-return  critic  realized']
    f = lambda x, spec: format(x, spec) if np.isfinite(x) else '–'.rjust(len(format(0.0, spec)))  # noqa: E731
    for r in sorted(rows, key=lambda r: r['ret']):
        lines.append(f"  {r['ret']:6.1f} | {r['reward']:.3f}  {f(r['predicted'], '.3f')} | {f(r['imagined'], '.3f')}  "
                     f"{f(r['replayed'], '.3f')}  {f(r['followed'], '.3f')} | {f(r['lambda_return'], '6.2f')}  "
                     f"{f(r['value'], '6.2f')}  {f(r['realized'], '6.2f')}")
    if any(not np.isfinite(r['realized']) for r in rows):
        lines.append('  (–: no visited state with enough of the episode left for a realized return)')
    return '\n'.join(lines)


FRAMES_HORIZON = 45   # agent steps drawn by --frames


def imagination_frames(agent, episode: dict, start: int, horizon: int = FRAMES_HORIZON, samples: int = 2,
                       every: int = 5, context: int = 150) -> np.ndarray:
    """An image (uint8, rows x 64 by columns x 64): the first row the episode's frames start, start + every, ...,
    start + horizon; below it `samples` rollouts of the actor imagined from the posterior state at `start`
    (observed from max(0, start - context)), decoded at the same steps."""
    import torch

    wm = agent.wm
    first = max(0, start - context)
    with torch.no_grad():
        post = observe_window(wm, episode, first, start + 1)[0]['post']
        state = {k: v[:, -1].expand(samples, *v.shape[2:]) for k, v in post.items()}
        feats, _ = agent.behavior.imagine(wm, state, horizon)                  # (H+1, samples, F)
        imagined = (wm.decoder(feats[::every]).float() + 0.5).clamp(0, 1).numpy()
    real = episode['image'][start:start + horizon + 1:every]
    rows = [np.concatenate(list(real), 1)]
    rows += [np.concatenate(list((imagined[:len(real), i] * 255).round().astype(np.uint8)), 1) for i in range(samples)]
    return np.concatenate(rows, 0)


GRADIENT_PARTS = ('encoder', 'decoder', 'rssm', 'reward', 'actor', 'critic')


def update_gradients(agent, data: dict, precision: str, seed: int, step: int = 0, terms: bool = False) -> dict:
    """{part: flat fp32 gradient} of one training update of `agent` on `data` (world model, then actor and critic
    from the posterior states of the same pass, as `Agent.update` computes them) under `precision`'s autocast,
    with the torch RNG seeded by `seed`; nothing is applied. With `terms`, also `'<part>/<term>'`: each weighted
    world-model loss term's gradient on each world-model part it reaches (the terms of a part sum to its gradient)."""
    import torch

    import tools
    cast = tools.autocast(argparse.Namespace(device=agent.config.device, precision=precision))   # '32': off
    wm, behavior = agent.wm, agent.behavior
    named = {part: [p for n, p in wm.named_parameters() if n.split('.')[0] == part] for part in GRADIENT_PARTS[:4]}
    named['actor'], named['critic'] = list(behavior.actor.parameters()), list(behavior.critic.parameters())

    def flat(loss, params):
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().float()
                          for g, p in zip(grads, params)])

    torch.manual_seed(seed)
    with torch.enable_grad():
        params = [p for part in GRADIENT_PARTS for p in named[part]]
        flags = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(True)
            with cast:
                loss, out, _ = wm.loss(data, step)
            grads = {part: flat(loss, named[part]) for part in GRADIENT_PARTS[:4]}
            if terms:
                for name, (value, weight) in out['loss_terms'].items():
                    for part in GRADIENT_PARTS[:4]:
                        g = flat(value * weight, named[part])
                        if bool(g.any()):
                            grads[f'{part}/{name}'] = g
            start = {k: v.detach() for k, v in out['post'].items()}
            with cast:
                actor_loss, critic_loss, _ = behavior.losses(wm, start, agent.reward_fn, out.get('behavior_context'))
            grads['actor'] = flat(actor_loss, named['actor'])
            grads['critic'] = flat(critic_loss, named['critic'])
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
    return grads


def gradient_agreement(agent, data: dict, precision: str = 'bf16', seeds=(0, 1, 2, 3), terms: bool = False) -> dict:
    """{part: dict(norm_fp32, norm_low, cos_same_seed, cos_fp32_seeds)}: mean gradient norms in fp32 and in
    `precision`, the mean cosine between the two precisions' gradients for the same seed, and the mean cosine between
    fp32 gradients of consecutive seeds (the update's own sampling noise; needs two seeds or more). With `terms`, the
    same for each world-model loss term's share of each part (`update_gradients`)."""
    full = [update_gradients(agent, data, '32', s, terms=terms) for s in seeds]
    low = [update_gradients(agent, data, precision, s, terms=terms) for s in seeds]

    def cos(a, b):
        a, b = a.double(), b.double()          # fp32 dot products of 10^6 entries round at ~1e-6
        return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))

    out, pairs = {}, list(zip(full, full[1:]))
    for part in [k for k in full[0] if all(k in g for g in full + low)]:
        out[part] = dict(norm_fp32=float(np.mean([float(g[part].norm()) for g in full])),
                         norm_low=float(np.mean([float(g[part].norm()) for g in low])),
                         cos_same_seed=float(np.mean([cos(a[part], b[part]) for a, b in zip(full, low)])),
                         cos_fp32_seeds=float(np.mean([cos(a[part], b[part]) for a, b in pairs])) if pairs
                         else float('nan'))
    return out


def training_batch(agent, episodes: list[dict], batch: int, length: int, seed: int = 0) -> dict:
    """One training batch (on the agent's device) of `batch` sequences of `length` agent steps sampled from
    `episodes` by the replay sampler the run trained with (`replay.Replay`, sequence starts marked as in training)."""
    import replay as replay_lib
    buffer = replay_lib.Replay(None, seed=seed, keys=('image', 'action', 'reward', 'is_first'),
                               mark_sequence_starts=not agent.config.release_compat)
    for ep in episodes:
        buffer.add_episode(ep)
    return agent.training_batch(buffer.sample(batch, length))


def prefill_episodes(run: str, prefill: int, keys) -> list[dict]:
    """A run's first training episodes (`keys` of each), in the order written, up to `prefill` agent steps: its random
    prefill. numpy only: scripts/official_first_updates.py calls it in a TensorFlow environment without torch."""
    episodes, steps = [], 0
    for path in sorted(glob.glob(os.path.join(run, 'train_eps', '*.npz'))):      # replay.list_episodes' order
        if steps >= prefill:
            break
        with np.load(path) as data:
            episodes.append({key: data[key] for key in keys if key in data.files})
        steps += len(episodes[-1]['reward']) - 1
    return episodes


def first_updates(config, action_size: int, episodes: list[dict], updates: int, every: int = 20) -> dict:
    """A fresh agent of `config` (seeded from its seed, as dreamer.py seeds a run) trained `updates` times on batches
    sampled from `episodes` as the run samples them; returns the actor's entropy and gradient norm every `every`
    updates and, afterwards, its mean action and std on every state of the episodes (posteriors of the whole
    episode, latents at their mode)."""
    import torch

    import agents
    import replay
    import tools
    tools.configure_torch(config)
    agent = agents.make_agent(config, action_size)
    buffer = replay.for_training(config)
    for ep in episodes:
        buffer.add_episode(ep)
    trace = []
    step = config.prefill          # the agent step of the first training call (schedules such as DisWM's eta)
    for i in range(updates):
        metrics = agent.update(buffer.sample(config.batch_size, config.batch_length), step)
        if i % every == 0 or i == updates - 1:
            trace.append((i + 1, float(metrics['actor_entropy']), float(metrics['actor_grad_norm'])))
    means, stds = [], []
    with torch.no_grad(), agent.autocast():
        for ep in episodes:
            data = agent.to_torch({k: v[None] for k, v in ep.items()})
            post = agent.wm.observe(data, sample=False)['post']
            dist = agent.behavior.actor(agent.wm.rssm.feat(post))
            means.append(dist.mean[0].float().cpu().numpy())
            stds.append(dist.std[0].float().cpu().numpy())
    mean, std = np.concatenate(means), np.concatenate(stds)
    return dict(trace=trace, mean=mean.mean(0), saturated=(np.abs(mean) > 0.9).mean(0), spread=mean.std(0),
                std=std.mean(0), states=len(mean))


def first_updates_report(result: dict) -> str:
    vec = lambda x: '(' + ', '.join(f'{v:.3f}' for v in x) + ')'
    lines = ['update | actor entropy | actor grad norm'] + [f'{i} | {e:.3f} | {g:.4g}' for i, e, g in result['trace']]
    lines.append(f"after: on {result['states']} states, mean action per dimension {vec(result['mean'])}, share with "
                 f"|mean| > 0.9 {vec(result['saturated'])}, std of the mean over states {vec(result['spread'])}, "
                 f"actor std {vec(result['std'])}")
    return '\n'.join(lines)


def first_updates_main(args) -> int:
    """--first_updates: the run's config and prefill episodes, fresh weights (no checkpoint read)."""
    import agents
    import tools
    run = run_folder(args.run)
    try:
        config = agents.run_config(os.path.join(run, 'checkpoint.pt'), {})
        for item in args.set:
            key, sep, text = item.partition('=')
            if not sep or key not in config:
                raise tools.ConfigError(f"--set expects KEY=VALUE with a key of the run's config, got '{item}'.")
            setattr(config, key, tools.parse_value(text, config[key], key))
        config.device, config.compile, config.threads = 'cpu', False, args.threads
        config = tools.finalize_config(config)
    except tools.ConfigError as e:
        print(f'Error: {e}', file=sys.stderr)
        return 2
    episodes = prefill_episodes(run, config.prefill, ('image', 'action', 'reward', 'is_first'))
    steps = sum(len(ep['reward']) - 1 for ep in episodes)
    if steps < max(config.prefill, config.batch_length):
        print(f"Error: '{run}/train_eps' holds {steps} agent steps, fewer than the run's prefill of {config.prefill}: "
              f"the run has not finished its random prefill yet.", file=sys.stderr)
        return 2
    updates = config.prefill_updates if args.updates is None else args.updates
    changed = ', '.join(args.set) or 'none'
    print(f'{run}: {updates} updates from fresh weights (seed {config.seed}) on its first {len(episodes)} training '
          f'episodes ({steps} agent steps); changed: {changed}')
    print(first_updates_report(first_updates(config, episodes[0]['action'].shape[-1], episodes, updates)))
    return 0


def reward_features(wm, episodes: list[dict], window: int):
    """Posterior features (n, F) of `episodes` observed in consecutive windows of `window` agent steps, each from a
    fresh state, without each window's first step (no information about the reward that led to it); returns
    (features, rewards (n,), episode index (n,))."""
    import torch
    feats, rewards, index = [], [], []
    with torch.no_grad():
        for i, ep in enumerate(episodes):
            for start in range(0, len(ep['reward']) - window + 1, window):
                out, _ = observe_window(wm, ep, start, start + window)
                feats.append(wm.rssm.feat(out['post'])[0, 1:].float())
                rewards.append(ep['reward'][start + 1:start + window].astype(np.float32))
                index.append(np.full(window - 1, i))
    return torch.cat(feats), np.concatenate(rewards), np.concatenate(index)


def fit_reward_head(head, feats, rewards: np.ndarray, steps: int, lr: float, batch: int, seed: int = 0,
                    eps: float = 1e-5):
    """`steps` Adam steps of the unit-variance Gaussian NLL of `head` on (feats,
    rewards), uniform minibatches of `batch` steps; trains `head` in place and returns it."""
    import torch

    import tools
    head.requires_grad_(True)
    opt = torch.optim.Adam(head.parameters(), lr=lr, eps=eps)
    target = torch.as_tensor(rewards)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(len(target), (batch,), generator=gen)
        loss = tools.gaussian_nll(head(feats[pick]), target[pick], 0).mean()     # the world model's reward loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.requires_grad_(False)
    return head


def reward_refit(agent, episodes: list[dict], held_out: int, steps: int, still: float = 0.02, seed: int = 0) -> list:
    """The `--reward_refit` rows: (name, steps of which, mse, still steps: count, mean true, mean predicted,
    other steps: count, mean true, mean predicted). The agent's own head is left as it was."""
    import copy

    import torch

    import networks
    config = agent.config
    window = min(config.batch_length, min(len(ep['reward']) for ep in episodes))
    feats, rewards, index = reward_features(agent.wm, episodes, window)
    batch = config.batch_size * config.batch_length
    fit_part = index < len(episodes) - held_out

    def predict(head):
        with torch.no_grad():
            return head(feats).float().numpy()

    def row(name, part, pred, mask):
        pred, true = pred[mask], rewards[mask]
        low = true < still
        mean = lambda x: float(x.mean()) if len(x) else float('nan')
        return (name, part, float(((pred - true) ** 2).mean()), int(low.sum()), mean(true[low]), mean(pred[low]),
                int((~low).sum()), mean(true[~low]), mean(pred[~low]))

    parts = [('all', np.ones(len(rewards), bool))] + ([(f'last {held_out}', ~fit_part)] if held_out else [])
    fit = dict(steps=steps, lr=config.model_lr, batch=batch, seed=seed, eps=config.opt_eps)
    refit = fit_reward_head(copy.deepcopy(agent.wm.reward).float(), feats, rewards, **fit)
    rows = []
    for name, head in (("the run's head", agent.wm.reward), (f'run head + {steps} steps', refit)):
        pred = predict(head)
        rows += [row(name, part, pred, mask) for part, mask in parts]
    if held_out and fit_part.any():
        torch.manual_seed(seed)
        new = networks.DenseHead(feats.shape[1], config.reward_layers, config.units)
        pred = predict(fit_reward_head(new, feats[torch.as_tensor(fit_part)], rewards[fit_part], **fit))
        rows.append(row(f'new head, {steps} steps', 'fitted on', pred, fit_part))
        rows.append(row(f'new head, {steps} steps', f'held out: last {held_out}', pred, ~fit_part))
    return rows


def reward_refit_report(rows: list, still: float) -> str:
    lines = [f'reward head on fixed posterior features; still = true reward below {still:g} per agent step',
             f"  {'head':<26} {'episodes':<20} {'mse':>7} | {'still steps':>11} {'true':>6} {'pred':>6} | "
             f"{'others':>6} {'true':>6} {'pred':>6}"]
    lines += [f'  {n:<26} {p:<20} {m:7.4f} | {k:11d} {t:6.3f} {q:6.3f} | {k2:6d} {t2:6.3f} {q2:6.3f}'
              for n, p, m, k, t, q, k2, t2, q2 in rows]
    return '\n'.join(lines)


def gradient_report(result: dict, precision: str) -> str:
    name = {'bf16': 'bf16', '16': 'fp16'}[precision]
    lines = [f'one update\'s gradients, {name} autocast vs fp32 (same weights, batch and seeds):',
             f'  part: norm fp32 / {name}; cosine {name} vs fp32 (same seed); cosine fp32 seed vs seed (noise)']
    lines += [f"  {part}: {r['norm_fp32']:.4g} / {r['norm_low']:.4g}; {r['cos_same_seed']:.4f}; "
              f"{r['cos_fp32_seeds']:.4f}" for part, r in result.items()]
    return '\n'.join(lines)


def report(result: dict) -> str:
    lines = [f"reward head on observed states ({result['steps']} agent steps): mean abs error "
             f"{result['reward_mae']:.3f}, correlation {result['reward_corr']:.3f}",
             '  reward bin: steps, mean true -> mean predicted']
    lines += [f'  [{low:g}, {high:g}): {n}, {t:.3f} -> {p:.3f}' for low, high, n, t, p in result['reward_bins']]
    if result['open_loop']:
        lines.append('open-loop reward error by steps ahead: ' +
                     ', '.join(f'{h}: {e:.3f}' for h, e in result['open_loop'].items()))
    lines.append(f"critic vs realized discounted return ({result['value_steps']} steps): mean value "
                 f"{result['value_mean']:.2f}, mean return {result['return_mean']:.2f}, correlation "
                 f"{result['value_corr']:.3f}")
    return '\n'.join(lines)


def episode_files(folder: str, last: int, before: str | None = None) -> list[str]:
    """The last `last` episodes (all for 0) of a run's `train_eps`/`eval_eps`, in the order they were written; with
    `before` (a file name), only those written before it."""
    import replay
    files = replay.list_episodes(folder, recursive=False)
    if before is not None:
        files = [f for f in files if os.path.basename(f) < before]
    return files[-last:] if last > 0 else files


def run_folder(path: str) -> str:
    """The run folder of a run folder, its checkpoint.pt or a --keep_checkpoints snapshot (RUN/checkpoints/*.pt)."""
    if not path.endswith('.pt'):
        return path
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder) == 'checkpoints' and not os.path.isdir(os.path.join(folder, 'train_eps')):
        folder = os.path.dirname(folder)
    return folder


def episodes_cut(run: str, counters: dict | None) -> str | None:
    """For a checkpoint that is not the run's last (a --keep_checkpoints snapshot): the name of the first training
    episode written after it. Episode names begin with the time they were written (replay.save_episode), and an
    evaluation's episodes are written after the training episodes before it and before the checkpoint saved with it,
    so the episodes named before this one are exactly the ones the snapshot had seen (its evaluation included).
    None: no later episode."""
    last = (counters or {}).get('last_episode')
    if not last:
        return None
    later = [name for name in (os.path.basename(f) for f in episode_files(os.path.join(run, 'train_eps'), 0))
             if name > last]
    return later[0] if later else None


def no_episodes(folder: str, cut: str | None) -> int:
    """The error (exit status 2) for a run with nothing to read, up to a snapshot's `cut` if any."""
    print(f"Error: no episodes in '{folder}'" + (f" written before '{cut}'" if cut else '') + '.', file=sys.stderr)
    return 2


def episodes_main(args) -> int:
    """--stalls and --actions: reports read from the episodes and config.yaml alone (no model)."""
    import rundata
    run = run_folder(args.run)
    config = rundata.read_config(run)
    what = ' and '.join(flag for flag, on in (('--stalls', args.stalls), ('--actions', args.actions)) if on)
    if not config:
        print(f"Error: no readable config.yaml in '{run}': {what} needs a dreamer.py run folder.", file=sys.stderr)
        return 2
    import replay
    cut = None
    if args.run.endswith('.pt'):        # a checkpoint given: only the episodes written up to it
        import agents
        from tools import ConfigError
        try:
            cut = episodes_cut(run, agents.read_checkpoint(agents.checkpoint_file(args.run)).get('counters'))
        except ConfigError as e:
            print(f'Error: {e}', file=sys.stderr)
            return 2
    folder = os.path.join(run, f'{args.source}_eps')
    every = episode_files(folder, 0, cut)  # all of them: the env step (or evaluation) of each counts what came before
    if not every:
        return no_episodes(folder, cut)
    # entry 0 of an episode is the reset observation's (reward 0, action 0)
    keys = ['reward'] + (['action'] if args.actions else [])
    data = [replay.load_episode(f, keys) for f in every]
    rewards = [ep['reward'][1:] for ep in data]
    repeat, per_eval = int(config.get('action_repeat', 1)), int(config.get('eval_episodes', 10))
    lengths = [len(r) for r in rewards]
    skipped = max(0, len(every) - args.episodes) if args.episodes > 0 else 0
    where = dict(first_step=sum(lengths[:skipped]) * repeat, first_index=skipped)
    if args.stalls:
        rows = stall_rows(rewards, args.stall_tail, args.stall_reward, args.stall_share)
        print(f"{run}: {len(rows) - skipped} of {len(rows)} {args.source} episodes; still = reward below "
              f"{args.stall_reward:g} per agent step; stalled = still in at least {args.stall_share:.0%} of the last "
              f"{args.stall_tail} agent steps")
        print(stall_report(rows[skipped:], args.source, repeat, per_eval, **where))
    if args.actions:
        rows = action_rows([ep['action'][1:] for ep in data], rewards)
        print(f"{run}: {len(rows) - skipped} of {len(rows)} {args.source} episodes; per action dimension: mean "
              f"action, share of steps with |a| > 0.95 (sat), sign changes between consecutive agent steps")
        print(action_report(rows[skipped:], args.source, repeat, per_eval, **where))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('run', help='a run folder (or its checkpoint.pt)')
    parser.add_argument('--episodes', type=int, default=4, help='the last N episodes')
    parser.add_argument('--source', default='train', choices=['train', 'eval'],
                        help='the run\'s training episodes (sampled actions) or its evaluation episodes')
    parser.add_argument('--window', type=int, default=200, help='agent steps observed from a fresh state')
    parser.add_argument('--horizons', default='1,5,10,15,20,40', help='open-loop steps ahead')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--gradients', default=None, choices=['bf16', '16'],
                        help='instead of the reward and value checks: one update\'s gradients in this precision '
                             'against fp32 on a batch of the last episodes (batch_size x batch_length of the run)')
    parser.add_argument('--seeds', type=int, default=4, help='--gradients: seeds (RNG streams) compared')
    parser.add_argument('--terms', action='store_true',
                        help='--gradients: also each world-model loss term\'s share of each world-model part')
    parser.add_argument('--frames', default=None, metavar='PNG',
                        help='with --imagine: also write the lowest- and highest-return episodes\' frames from '
                             '--frames_start on, each above two imagined rollouts from the same state, to this PNG')
    parser.add_argument('--frames_start', type=int, default=150, help='--frames: the agent step imagination starts at')
    parser.add_argument('--imagine_steps', type=int, default=None,
                        help='--imagine: steps imagined from each state (default: the run\'s imag_horizon)')
    parser.add_argument('--imagine_variants', action='store_true',
                        help='also, per episode: the rewards imagined from the visited states with the actor '
                             'sampling, the actor\'s mean action or the episode\'s own actions, latents sampled or '
                             'at their mode, against what followed (is it the sampling or the closed loop?)')
    parser.add_argument('--stalls', action='store_true',
                        help='only (no model loaded): per episode its return and whether it ends standing still '
                             '(see the module docstring); --episodes 0 for all')
    parser.add_argument('--actions', action='store_true',
                        help='only (no model loaded): per episode its return and, per action dimension, the mean '
                             'action, the share of saturated steps and the sign changes (a policy stuck holding a '
                             'joint); with --stalls, both reports')
    parser.add_argument('--stall_tail', type=int, default=250, help='--stalls: the last N agent steps looked at')
    parser.add_argument('--stall_reward', type=float, default=0.02, help='--stalls: a step below this is still')
    parser.add_argument('--stall_share', type=float, default=0.4,
                        help='--stalls: an episode stalls when at least this share of its tail is still')
    parser.add_argument('--reward_refit', action='store_true',
                        help='only: the run\'s reward head against the same head trained on and a new head fitted '
                             'without the last --held_out episodes, on still and other steps (see above)')
    parser.add_argument('--refit_steps', type=int, default=3000, help='--reward_refit: Adam steps of each fit')
    parser.add_argument('--held_out', type=int, default=12, help='--reward_refit: the last N episodes held out')
    parser.add_argument('--imagine', action='store_true',
                        help='also, per episode: the actor\'s imagined rewards and returns from the visited states '
                             'against what followed (model exploitation: imagination better than the episodes)')
    parser.add_argument('--first_updates', action='store_true',
                        help='only (no checkpoint read): the run\'s first training call replayed from fresh weights '
                             'on its prefill episodes, then where the actor\'s mean action sits (see above)')
    parser.add_argument('--updates', type=int, default=None,
                        help='--first_updates: updates (default: the run\'s prefill_updates)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='--first_updates: a config key changed for the replay (repeatable)')
    args = parser.parse_args(argv)
    if args.first_updates:
        return first_updates_main(args)
    if args.stalls or args.actions:
        return episodes_main(args)
    import torch

    import agents
    from tools import ConfigError
    torch.set_num_threads(args.threads)
    try:
        # Eager networks whatever the run used: compiling would cost minutes here and the checks do not need it.
        state = agents.read_checkpoint(agents.checkpoint_file(args.run))
        agent, config, ckpt = agents.load_agent(args.run, dict(device='cpu', compile=False), state)
    except ConfigError as e:
        print(f'Error: {e}', file=sys.stderr)
        return 2
    run = run_folder(ckpt)
    cut = episodes_cut(run, state.get('counters'))
    del state
    folder = os.path.join(run, f'{args.source}_eps')
    files = episode_files(folder, args.episodes, cut)
    if not files:
        return no_episodes(folder, cut)
    if cut:
        print(f'{ckpt}: a checkpoint before the run\'s last episodes: only the episodes written up to it '
              f'(before {cut})')
    episodes = [dict(np.load(f)) for f in files]
    if args.gradients:
        length = min(config.batch_length, sum(len(ep['reward']) for ep in episodes))
        data = training_batch(agent, episodes, config.batch_size, length)
        print(f'{ckpt}: {len(files)} episodes, a batch of {config.batch_size} x {length}, {args.seeds} seeds')
        result = gradient_agreement(agent, data, args.gradients, range(args.seeds), args.terms)
        print(gradient_report(result, args.gradients))
        return 0
    if args.reward_refit:
        held_out = min(args.held_out, len(files) - 1)
        print(f'{ckpt}: {len(files)} {args.source} episodes, the last {held_out} held out for the new head, '
              f'{args.refit_steps} Adam steps per fit')
        print(reward_refit_report(reward_refit(agent, episodes, held_out, args.refit_steps, args.stall_reward),
                                  args.stall_reward))
        return 0
    window = min(args.window, min(len(ep['reward']) for ep in episodes))
    horizons = [int(h) for h in args.horizons.split(',') if h]
    print(f'{ckpt}: {len(files)} episodes, windows of {window} agent steps')
    print(report(diagnose(agent, episodes, window, horizons)))
    steps = args.imagine_steps or config.imag_horizon
    if args.imagine_variants:
        print(variants_report(imagination_variants(agent, episodes, window, horizon=steps), steps))
    if args.imagine:
        print(imagination_report(imagination_check(agent, episodes, window, horizon=steps), steps))
        if args.frames:
            from PIL import Image
            ordered = sorted(episodes, key=lambda ep: float(ep['reward'].sum()))
            picks = ordered[:1] + ordered[-1:] if len(ordered) > 1 else ordered
            start = min(args.frames_start, min(len(ep['reward']) for ep in picks) - FRAMES_HORIZON - 1)
            strips = [imagination_frames(agent, ep, start) for ep in picks]
            gap = np.full((8, strips[0].shape[1], 3), 255, np.uint8)
            Image.fromarray(np.concatenate([x for s in strips for x in (s, gap)][:-1], 0)).save(args.frames)
            print(f'frames: {args.frames} (returns ' + ', '.join(f"{float(ep['reward'].sum()):.1f}" for ep in picks) +
                  f'; agent steps {start}-{start + FRAMES_HORIZON}: each episode\'s real frames above two imagined '
                  'rollouts)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
