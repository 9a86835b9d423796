"""ParallelEnvs (env/parallel.py): N envs in worker processes give exactly the data of N sequential envs, and the
workers fail loudly and end cleanly. Short reacher episodes, CPU rendering; each worker start costs ~1-2 s."""
import gc
import os
import signal
import textwrap
import time
import types

import numpy as np
import pytest

import env
from distracting_control import color_boxes
from env.parallel import EnvWorkerDied, EnvWorkerError, ParallelEnvs, _pack_error, stack_obs

TASK = 'dmc2gym_reacher_easy'
COLOR = {'train_base': [0.7, 0.3, 0.5], 'test_base': [0.5, 0.7, 0.3], 'max_delta': 0.2, 'step_std': 0.2}
SEEDS = [5, 6]
STEPS = 6


def make_config(time_limit=40):
    return types.SimpleNamespace(action_repeat=2, time_limit=time_limit, size=[64, 64], camera=None,
                                 release_compat=False, color=COLOR)


def fixed_actions(steps=STEPS):
    """actions[t] is the (n_envs, 2) batch of agent step t; env i gets a different sequence than env j."""
    return np.random.default_rng(0).uniform(-1, 1, (steps, len(SEEDS), 2)).astype(np.float32)


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def all_gone_by(pids, deadline: float) -> bool:
    """Whether every process has exited (and been reaped) by `deadline` (time.perf_counter); the machine may be
    loaded by other tests, so the exit is polled rather than expected at one instant."""
    while not all(gone(pid) for pid in pids):
        if time.perf_counter() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope='module')
def sequential():
    """Per env: first obs, then (obs, reward, done) of each step, from a plain `env.make_env` per seed."""
    actions, runs = fixed_actions(), []
    for i, seed in enumerate(SEEDS):
        environment = env.make_env(TASK, make_config(), seed, 'train')
        first = environment.reset()
        runs.append((first, [environment.step(actions[t, i])[:3] for t in range(STEPS)]))
        environment.close()
    return runs


@pytest.mark.parametrize('workers', [True, False], ids=['workers', 'in-process'])
def test_same_observations_and_rewards_as_sequential_envs(workers, sequential):
    with ParallelEnvs(TASK, make_config(), SEEDS, 'train', workers=workers) as envs:
        assert envs.in_process is (not workers) and envs.num_envs == len(envs) == 2 and envs.action_size == 2
        pids = envs.pids
        assert (all(pid not in (None, os.getpid()) for pid in pids) and len(set(pids)) == 2) if workers \
            else pids == [None, None]
        for i, obs in enumerate(envs.reset()):
            first = sequential[i][0]
            assert obs['image'].dtype == np.uint8 and np.array_equal(obs['image'], first['image'])
            assert np.array_equal(obs['color'], first['color']) and obs['is_first']
        for t, batch in enumerate(fixed_actions()):
            obs, rewards, dones, infos = envs.step(batch)
            assert rewards.shape == dones.shape == (2,) and len(obs) == len(infos) == 2
            for i in range(2):
                ref_obs, ref_reward, ref_done = sequential[i][1][t]
                assert rewards[i] == ref_reward and dones[i] == ref_done
                assert np.array_equal(obs[i]['image'], ref_obs['image'])
                assert np.array_equal(obs[i]['color'], ref_obs['color'])
                assert infos[i]['discount'] == 1.0
        assert not np.array_equal(obs[0]['image'], obs[1]['image'])  # two different seeds, two different envs


def test_set_distractor_reaches_every_worker():
    boxes = color_boxes(COLOR)
    with ParallelEnvs(TASK, make_config(), [0, 1], 'train') as envs:
        assert all(boxes['train'].contains(obs['color']) for obs in envs.reset())
        envs.set_distractor('test')
        obs, *_ = envs.step(np.zeros((2, 2), np.float32))
        assert all(boxes['train'].contains(o['color']) for o in obs)  # takes effect at the next reset only
        for obs in envs.reset():
            assert boxes['test'].contains(obs['color']) and not boxes['train'].contains(obs['color'])
        envs.set_distractor('train')
        assert all(boxes['train'].contains(obs['color']) for obs in envs.reset([1, 0]))


def test_worker_exception_is_reraised_with_its_traceback():
    with ParallelEnvs(TASK, make_config(), [0, 1], 'train') as envs:
        with pytest.raises(ValueError, match='Unknown colour set') as info:
            envs.set_distractor('bogus')  # raised by DMCEnv._check_set inside worker 0 (and 1)
        cause = info.value.__cause__
        assert isinstance(cause, EnvWorkerError) and cause.index == 0 and cause.seed == 0
        assert 'Traceback (most recent call last)' in cause.traceback and '_check_set' in cause.traceback
        assert 'env/dmc.py' in cause.traceback and 'Worker traceback' in str(cause)

        envs.reset([0])  # env 1 never started an episode: only its step fails, env 0 steps normally
        with pytest.raises(RuntimeError, match='call reset') as info:
            envs.step(np.zeros((2, 2), np.float32))
        assert info.value.__cause__.index == 1 and 'wrappers.py' in info.value.__cause__.traceback
        obs, rewards, dones, _ = envs.step(np.zeros((1, 2), np.float32), indices=[0])  # still usable
        assert len(obs) == 1 and not dones[0]
        with pytest.raises(ValueError, match=r'shape \(2, 2\)'):
            envs.step(np.zeros((2, 3), np.float32))


def test_unpicklable_worker_exception_still_sends_its_traceback():
    class Local(Exception):  # a local class cannot be pickled
        pass

    try:
        raise Local('boom')
    except Local as error:
        summary, traceback_text, payload = _pack_error(error)
    assert payload is None and summary == 'Local: boom' and 'raise Local' in traceback_text


def test_env_creation_error_in_a_worker_is_raised_and_cleans_up():
    with pytest.raises(ValueError, match='Unknown colour set') as info:
        ParallelEnvs(TASK, make_config(), [0, 1], 'bogus')
    assert 'make_env' in info.value.__cause__.traceback
    with pytest.raises(ValueError, match='Closest valid tasks'):  # a misspelled task fails before any worker starts
        ParallelEnvs('dmc2gym_reacher_eazy', make_config(), [0, 1], 'train')


def test_dead_worker_is_reported_by_index_and_closes_everything():
    envs = ParallelEnvs(TASK, make_config(), [0, 1], 'train')
    envs.reset()
    pids = envs.pids
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(EnvWorkerDied, match=r'worker 1 .*SIGKILL') as info:
        envs.step(np.zeros((2, 2), np.float32))
    assert info.value.index == 1 and envs.closed and all(gone(pid) for pid in pids)
    with pytest.raises(RuntimeError, match='closed'):
        envs.reset()
    envs.close()  # idempotent


def test_stuck_worker_times_out_and_close_kills_it():
    envs = ParallelEnvs(TASK, make_config(), [0, 1], 'train', timeout=60)
    envs.reset()
    pids = envs.pids
    os.kill(pids[0], signal.SIGSTOP)  # a worker that never answers (SIGTERM stays pending on a stopped process)
    envs.timeout = 0.5
    start = time.perf_counter()
    with pytest.raises(EnvWorkerDied, match='worker 0 .*did not answer'):
        envs.step(np.zeros((2, 2), np.float32))
    assert envs.closed and all_gone_by(pids, start + 10)


def test_garbage_collection_closes_workers():
    envs = ParallelEnvs(TASK, make_config(), [0, 1], 'train')
    pids = envs.pids
    del envs
    gc.collect()
    assert all(gone(pid) for pid in pids)


def episode_count_policy(obs, state, training=True):
    """A stand-in for `agent.policy` whose per-env state must be reset by `is_first`: the step within the episode
    (state) and the image both shape the action, so a state carried across an episode boundary changes the data."""
    count = np.zeros(len(obs['is_first'])) if state is None else np.where(obs['is_first'], 0, state)
    brightness = obs['image'].reshape(len(count), -1).mean(-1) / 255
    action = np.stack([np.sin(count + brightness), np.cos(2 * count - brightness)], -1).astype(np.float32)
    return action, count + 1


def docstring_example():
    """The batched acting loop of the ParallelEnvs docstring (the indented block after its last paragraph)."""
    doc = ParallelEnvs.__doc__
    block = doc[doc.index('also run as a test in `tests/test_parallel.py`:') :].split('\n', 1)[1]
    return textwrap.dedent(block)


def run_docstring_example(config, agent, n, steps):
    """Runs the docstring's loop as written; returns the episodes it finished (`finish_episode` collects them)."""
    from env.driver import EpisodeRecorder
    finished = []
    namespace = {'ParallelEnvs': ParallelEnvs, 'stack_obs': stack_obs, 'np': np, 'EpisodeRecorder': EpisodeRecorder,
                 'finish_episode': finished.append, 'config': config, 'agent': agent, 'n': n, 'steps': steps}
    exec(compile(docstring_example(), 'ParallelEnvs docstring', 'exec'), namespace)
    assert namespace['envs'].closed
    return finished


def test_batched_acting_loop_of_the_docstring_gives_the_sequential_episodes():
    from env.driver import run_episode
    assert 'envs.step(action)' in docstring_example() and 'envs.close()' in docstring_example()
    config = make_config(time_limit=8)  # 4 agent steps per episode: 2 episodes per env in 9 batched steps
    config.task, config.seed = TASK, SEEDS[0]  # the example seeds env i with config.seed + i
    finished = run_docstring_example(config, types.SimpleNamespace(policy=episode_count_policy), n=2, steps=18)
    assert len(finished) == 4
    by_env = [finished[0::2], finished[1::2]]  # envs finish together (same time limit), env 0 first
    for i, seed in enumerate(SEEDS):
        environment = env.make_env(TASK, config, seed, 'train')
        for rec in by_env[i]:
            expected = run_episode(environment, episode_count_policy, training=True).episode()
            got = rec.episode()
            assert len(rec) == 4 and got.keys() == expected.keys()
            for key in expected:
                assert np.array_equal(got[key], expected[key]), key
        environment.close()


def test_acting_loop_runs_with_the_real_agent():
    import agents
    import tools
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--task', TASK, '--time_limit', '8',
                                '--device', 'cpu'])
    agent = agents.make_agent(config, 2)  # reacher: 2 actions
    finished = run_docstring_example(config, agent, n=2, steps=12)  # restarts both envs once (at batched step 4)
    assert len(finished) == 2 and all(len(rec) == 4 for rec in finished)
    assert all(np.abs(rec.episode()['action']).max() <= 1 for rec in finished)


@pytest.mark.parametrize('preset', [None, '5'])
def test_worker_sets_its_share_of_render_threads_unless_the_user_did(preset):
    """A worker sets LP_NUM_THREADS (Mesa's software-render threads) to its share before building its env; a value
    the user exported wins. Run in-process here, with an env that fails to build, to see the worker's environment."""
    import multiprocessing as mp
    from env import parallel
    saved_env, saved_sigint = os.environ.get('LP_NUM_THREADS'), signal.getsignal(signal.SIGINT)
    try:
        os.environ.pop('LP_NUM_THREADS', None)
        if preset:
            os.environ['LP_NUM_THREADS'] = preset
        ours, theirs = mp.Pipe()
        parallel._worker(theirs, 'dmc2gym_no_such_task', make_config(), 0, 'train_1', False, 3)
        ok, _ = ours.recv()
        assert not ok                                     # the bad task is reported back, as usual
        assert os.environ['LP_NUM_THREADS'] == (preset or '3')
    finally:
        signal.signal(signal.SIGINT, saved_sigint)
        os.environ.pop('LP_NUM_THREADS', None)
        if saved_env is not None:
            os.environ['LP_NUM_THREADS'] = saved_env


def test_recorder_knows_whether_the_env_reports_success():
    """Success metrics are logged for envs whose info carries `success` (DrawerWorld), whatever the suite's name."""
    from env.driver import EpisodeRecorder
    obs = dict(image=np.zeros((64, 64, 3), np.uint8), is_first=False, is_last=False, is_terminal=False)
    silent, reporting = EpisodeRecorder(2), EpisodeRecorder(2)
    for t in range(3):
        silent.add(obs, np.zeros(2), 1.0, {})
        reporting.add(obs, np.zeros(2), 1.0, {'success': t == 1})
    assert not silent.reports_success and not silent.success
    assert reporting.reports_success and reporting.success
    never = EpisodeRecorder(2)
    never.add(obs, np.zeros(2), 0.0, {'success': False})
    assert never.reports_success and not never.success
