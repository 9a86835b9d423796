"""Several agent envs stepped together, each in its own worker process: the batched env behind `--envs N`.

`ParallelEnvs` holds N envs of `env.make_env` (one task, one config, one seed each) behind a batched API. With
workers, every env lives in its own process, created there (a MuJoCo / EGL context must never cross a fork), and a
batched call sends every command before it reads any answer, so the envs step concurrently. In-process mode
(`workers=False`, or a single env) runs the same API with the same command code, without a subprocess.

Env i behaves exactly as `env.make_env(task, config, seeds[i], distractor)` would on its own: the same observations,
rewards and colours for the same actions. So N parallel envs seeded `seed + i` give the data of N sequential envs.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import signal
import sys
import time
import traceback
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Seconds `close()` waits for a worker to exit on its own before terminating it (then killing it).
CLOSE_TIMEOUT = 5.0


class EnvWorkerError(RuntimeError):
    """An env worker failed. Carries the worker's `index`, its `seed` and the worker-side `traceback` text.

    When the env raised an exception that survives pickling, the parent re-raises THAT exception (same type and
    message, so `except ValueError` still works) with an `EnvWorkerError` as its `__cause__`, which prints the
    worker's traceback above the parent's. Otherwise the `EnvWorkerError` itself is raised.
    """

    def __init__(self, message: str, index: int, seed: int, traceback_text: str = ''):
        super().__init__(message)
        self.index, self.seed, self.traceback = index, seed, traceback_text


class EnvWorkerDied(EnvWorkerError):
    """An env worker process exited (crash, kill) or stopped answering; the `ParallelEnvs` is closed."""


def stack_obs(observations: Sequence[dict]) -> dict[str, np.ndarray]:
    """Per-env observation dicts -> one dict of arrays with a leading env axis (what `agent.policy` takes)."""
    return {key: np.stack([np.asarray(obs[key]) for obs in observations]) for key in observations[0]}


def _plain(value: Any) -> Any:
    """A config with mappings turned into plain dicts (recursively), to send to a worker.

    The project's config class lives in `tools`, which imports torch: unpickling it would cost every worker that
    import (~2 s of CPU and ~200 MB) for nothing, since the env code reads configs as mappings or attributes alike.
    """
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def _run_command(environment: Any, command: str, arg: Any) -> Any:
    """The one place that maps a command to an env call, shared by worker processes and in-process slots."""
    if command == 'step':
        return environment.step(arg)
    if command == 'reset':
        return environment.reset()
    if command == 'set_distractor':
        return environment.set_distractor(arg)
    raise ValueError(f'Unknown env command {command!r}')


def _pack_error(error: Exception) -> tuple[str, str, bytes | None]:
    """A worker-side exception as (one-line summary, traceback text, the pickled exception or None)."""
    try:
        payload = pickle.dumps(error)
    except Exception:  # e.g. an exception holding an unpicklable object: the traceback text still gets through
        payload = None
    return f'{type(error).__name__}: {error}', traceback.format_exc(), payload


def _inherited_gl_display() -> str | None:
    """The module holding an initialised EGL display, if one exists before this worker made any env.

    dm_control initialises its EGL display when it is imported. Under forkserver a worker is forked from a server that
    imported the main script, so a main script importing dm_control at module level hands every worker a forked
    display, which the GL drivers do not support.
    """
    egl = sys.modules.get('dm_control._render.pyopengl.egl_renderer')
    if egl is not None and getattr(egl, 'EGL_DISPLAY', None) is not None:
        return 'dm_control'
    egl = sys.modules.get('mujoco.egl')
    if egl is not None and getattr(egl, 'EGL_DISPLAY', None) is not None:
        return 'mujoco'
    return None


def _worker(conn: mp.connection.Connection, task: str, config: Any, seed: int, distractor: str,
            forked: bool, render_threads: int) -> None:
    """Worker process main: builds its env, then answers (command, arg) messages with (ok, result) until 'close'."""
    # Ctrl+C reaches the whole process group; the parent handles it and closes the workers in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Mesa's software renderer (EGL without a GPU) starts one thread per CPU in every process; N workers would then
    # fight over the cores. Give each its share (a user's own LP_NUM_THREADS wins; GPU drivers ignore it).
    os.environ.setdefault('LP_NUM_THREADS', str(render_threads))
    environment = None
    try:
        try:
            inherited = _inherited_gl_display() if forked else None
            if inherited:
                raise RuntimeError(
                    f'This env worker was forked (forkserver) with an EGL display that {inherited} opened when the '
                    f'main script imported it. Import {inherited} inside a function of the main script, not at its '
                    f"top, or pass start_method='spawn' to ParallelEnvs.")
            import env as envs
            environment = envs.make_env(task, config, seed, distractor)
            conn.send((True, environment.action_size))
        except Exception as error:
            conn.send((False, _pack_error(error)))
            return
        while True:
            try:
                command, arg = conn.recv()
            except (EOFError, OSError):  # the parent is gone: nothing left to answer
                return
            if command == 'close':
                return
            try:
                result = (True, _run_command(environment, command, arg))
            except Exception as error:
                result = (False, _pack_error(error))
            try:
                conn.send(result)
            except (pickle.PicklingError, TypeError, AttributeError) as error:  # pickling fails before anything is sent
                conn.send((False, _pack_error(error)))
    finally:
        if environment is not None:
            environment.close()  # frees the GL context (EGL complains at exit otherwise)
        conn.close()


class _InProcessSlot:
    """One env run in the calling process, with the send / receive protocol of a worker."""

    process = None

    def __init__(self, index: int, seed: int, environment: Any):
        self.index, self.seed, self.environment = index, seed, environment
        self._result: tuple[bool, Any] | None = None

    def send(self, command: str, arg: Any = None) -> None:
        try:
            self._result = (True, _run_command(self.environment, command, arg))
        except Exception as error:
            self._result = (False, error)

    def receive(self, timeout: float | None) -> Any:
        ok, value = self._result
        self._result = None
        if not ok:
            value.add_note(f'(raised by env {self.index}, seed {self.seed}, run in-process)')
            raise value
        return value

    def request_close(self) -> None:
        pass

    def close(self, deadline: float) -> None:
        if self.environment is not None:
            self.environment.close()
            self.environment = None


class _WorkerSlot:
    """One env in its own worker process, reached through a pipe."""

    def __init__(self, context: Any, index: int, seed: int, task: str, config: Any, distractor: str,
                 render_threads: int = 1):
        self.index, self.seed = index, seed
        self.conn, child_conn = context.Pipe()
        forked = context.get_start_method() == 'forkserver'
        # daemon: multiprocessing terminates the worker at interpreter exit even if nobody closed it.
        args = (child_conn, task, config, seed, distractor, forked, render_threads)
        self.process = context.Process(target=_worker, args=args, name=f'env-worker-{index}', daemon=True)
        self.process.start()
        child_conn.close()  # the worker holds the other end; an EOF then means the worker is gone

    def send(self, command: str, arg: Any = None) -> None:
        try:
            self.conn.send((command, arg))
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            raise self._died(command) from None

    def receive(self, timeout: float | None) -> Any:
        ready = mp.connection.wait([self.conn, self.process.sentinel], timeout)
        if not ready:
            raise EnvWorkerDied(f'Env worker {self.index} (seed {self.seed}, pid {self.process.pid}) did not answer '
                                f'within {timeout} s; the envs were closed.', self.index, self.seed)
        try:
            # A worker that answered and then exited leaves its answer readable: read before declaring it dead.
            ok, value = self.conn.recv()
        except (EOFError, ConnectionResetError, OSError):
            raise self._died() from None
        if ok:
            return value
        summary, traceback_text, payload = value
        cause = EnvWorkerError(f'Env worker {self.index} (seed {self.seed}) raised {summary}\n'
                               f'Worker traceback:\n{traceback_text}', self.index, self.seed, traceback_text)
        try:
            error = pickle.loads(payload) if payload is not None else None
        except Exception:
            error = None
        if not isinstance(error, Exception):
            raise cause
        raise error from cause

    def _died(self, command: str | None = None) -> EnvWorkerDied:
        self.process.join(1.0)  # lets the exit code settle
        code = self.process.exitcode
        how = 'is still running but closed its pipe' if code is None else f'died with exit code {code}'
        if code is not None and code < 0:
            try:
                how += f' ({signal.Signals(-code).name})'
            except ValueError:
                pass
        during = f' during {command!r}' if command else ''
        return EnvWorkerDied(f'Env worker {self.index} (seed {self.seed}, pid {self.process.pid}) {how}{during}; '
                             f'the envs were closed.', self.index, self.seed)

    def request_close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(('close', None))
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                pass

    def close(self, deadline: float) -> None:
        """Waits for the worker to exit until `deadline` (time.monotonic), then terminates it, then kills it."""
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(1.0)
        if self.process.is_alive():  # e.g. a stopped process leaves SIGTERM pending; SIGKILL cannot be ignored
            self.process.kill()
            self.process.join(5.0)   # death is certain now; on a loaded machine its reaping can take a moment
        self.conn.close()


def _close_slots(slots: list, timeout: float) -> None:
    """Closes every slot: all workers are asked first, so they exit concurrently within one shared `timeout`."""
    for slot in slots:
        slot.request_close()
    deadline = time.monotonic() + timeout
    for slot in slots:
        try:
            slot.close(deadline)
        except Exception:  # closing is best effort: one failing env must not keep the others open
            pass
    slots.clear()


def _default_start_method() -> str:
    # forkserver: each worker is forked from a clean server process that holds no GL context and has imported the
    # main script once (spawn would re-import it, torch included, in every worker). spawn where there is no fork.
    return 'forkserver' if 'forkserver' in mp.get_all_start_methods() else 'spawn'


class ParallelEnvs:
    """N agent envs (`env.make_env(task, config, seeds[i], distractor)`), stepped as a batch.

    Args:
      task, config, distractor: as for `env.make_env`; every env gets the same ones.
      seeds: one seed per env (e.g. `[config.seed + i for i in range(n)]`); `len(seeds)` is the number of envs.
      workers: True runs each env in its own worker process (when there is more than one env); False runs them all
        in this process (same results, no subprocess: tests and the single-env path).
      start_method: 'forkserver' (default where available) or 'spawn'. Never 'fork': MuJoCo / EGL contexts must not
        be forked, so each worker creates its env itself.
      timeout: seconds to wait for any answer of a worker (None: forever). A worker that dies is detected at once.

    Batched API (env i is row / entry i; `indices` select a subset, results follow their order):
      `action_size`, `num_envs` (= `len(envs)`), `seeds`, `pids` (worker pids; None per env in-process).
      `reset(indices=None) -> list of obs` (all envs when None).
      `step(actions, indices=None) -> (list of obs, rewards float64 (n,), dones bool (n,), list of infos)`:
        `actions` has one row per stepped env, (N, A) by default. Every env gets its action before any answer
        is read, so the workers step concurrently. A finished env (done) must be reset before its next step.
      `set_distractor(name)`: every env switches at its next reset (as `env.set_distractor`).
      `close()`: idempotent; also runs when the object is garbage collected and at interpreter exit.
      `stack_obs(list of obs)` (module function) gives the batched obs dict the agent's policy takes.

    Errors: an exception inside an env is re-raised here with the worker's traceback (see `EnvWorkerError`); the
    other envs of that call still finished it, so the object stays usable. A worker that dies (or exceeds `timeout`)
    raises `EnvWorkerDied` naming its index, and closes all envs.

    A batched acting loop that restarts finished envs (`obs['is_first']` resets the agent state of just those rows;
    `EpisodeRecorder` and `finish_episode` as in `dreamer.py`), also run as a test in `tests/test_parallel.py`:

        envs = ParallelEnvs(config.task, config, [config.seed + i for i in range(n)], 'train')
        obs, state = envs.reset(), None
        recs = [EpisodeRecorder(envs.action_size) for _ in obs]
        for rec, first in zip(recs, obs):
            rec.add(first)
        for _ in range(steps // envs.num_envs):
            action, state = agent.policy(stack_obs(obs), state, training=True)
            obs, rewards, dones, infos = envs.step(action)
            for i, rec in enumerate(recs):
                rec.add(obs[i], action[i], rewards[i], infos[i])
            done = np.flatnonzero(dones)
            for i, first in zip(done, envs.reset(done)):
                finish_episode(recs[i])
                obs[i], recs[i] = first, EpisodeRecorder(envs.action_size)
                recs[i].add(first)
        envs.close()
    """

    def __init__(self, task: str, config: Any, seeds: Sequence[int], distractor: str, workers: bool = True,
                 start_method: str | None = None, timeout: float | None = None):
        import env as envs
        self.task = task
        self.seeds = [int(seed) for seed in seeds]
        if not self.seeds:
            raise ValueError('ParallelEnvs needs at least one seed (one env per seed).')
        envs.split_task(task)  # a misspelled task fails here, with its usual message, before any process starts
        self.timeout = timeout
        self.in_process = not workers or len(self.seeds) == 1
        self._slots: list = []
        # Closes the envs when this object is collected or the interpreter exits; holds no reference to self.
        self._finalizer = weakref.finalize(self, _close_slots, self._slots, CLOSE_TIMEOUT)
        try:
            if self.in_process:
                for index, seed in enumerate(self.seeds):
                    self._slots.append(_InProcessSlot(index, seed, envs.make_env(task, config, seed, distractor)))
                self.action_size = int(self._slots[0].environment.action_size)
            else:
                start_method = start_method or _default_start_method()
                if start_method == 'fork':
                    raise ValueError("start_method 'fork' is unsafe with MuJoCo / EGL; use 'forkserver' or 'spawn'.")
                context = mp.get_context(start_method)
                config = _plain(config)
                render_threads = max(1, (os.cpu_count() or 1) // len(self.seeds))
                for index, seed in enumerate(self.seeds):  # all workers build their env at the same time
                    self._slots.append(_WorkerSlot(context, index, seed, task, config, distractor, render_threads))
                self.action_size = int(self._receive_all(self._slots)[0])
        except BaseException:
            self.close()
            raise

    # -- batched API ------------------------------------------------------------------------------------------------
    @property
    def num_envs(self) -> int:
        return len(self.seeds)

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def pids(self) -> list[int | None]:
        """Worker process ids, in env order (None for envs run in this process)."""
        return [slot.process.pid if slot.process is not None else None for slot in self._slots]

    def reset(self, indices: Sequence[int] | None = None) -> list[dict]:
        """Starts a new episode in each selected env (all when None); returns their first observations."""
        slots = self._select(indices)
        self._send_all(slots, 'reset', [None] * len(slots))
        return self._receive_all(slots)

    def step(self, actions: Any, indices: Sequence[int] | None = None
             ) -> tuple[list[dict], np.ndarray, np.ndarray, list[dict]]:
        """One agent step in each selected env (all when None), `actions[k]` going to the k-th selected env."""
        slots = self._select(indices)
        actions = np.asarray(actions, np.float32)
        if actions.ndim != 2 or actions.shape != (len(slots), self.action_size):
            raise ValueError(f'Expected actions of shape ({len(slots)}, {self.action_size}) (one row per stepped '
                             f'env), got {actions.shape}')
        self._send_all(slots, 'step', actions)
        results = self._receive_all(slots)
        obs = [result[0] for result in results]
        rewards = np.array([result[1] for result in results], np.float64)
        dones = np.array([result[2] for result in results], bool)
        infos = [result[3] for result in results]
        return obs, rewards, dones, infos

    def set_distractor(self, name: str) -> None:
        """Switches every env to distractor set `name` from its next reset on."""
        slots = self._select(None)
        self._send_all(slots, 'set_distractor', [name] * len(slots))
        self._receive_all(slots)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Closes all envs and ends the workers (terminating any that do not exit within `timeout` s). Idempotent."""
        if self._finalizer.alive:
            self._finalizer.detach()
            _close_slots(self._slots, timeout)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> 'ParallelEnvs':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = 'closed' if self.closed else 'in-process' if self.in_process else 'workers'
        return f'ParallelEnvs({self.task!r}, seeds={self.seeds}, {mode})'

    # -- internals --------------------------------------------------------------------------------------------------
    def _select(self, indices: Sequence[int] | None) -> list:
        if self.closed:
            raise RuntimeError(f'{self!r} is closed; create a new ParallelEnvs.')
        if indices is None:
            return list(self._slots)
        indices = [int(i) for i in np.asarray(indices).ravel()]
        bad = [i for i in indices if not 0 <= i < len(self._slots)]
        if bad:
            raise IndexError(f'Env indices {bad} out of range for {len(self._slots)} envs.')
        if len(set(indices)) != len(indices):
            raise ValueError(f'Env indices must be distinct, got {indices}.')
        return [self._slots[i] for i in indices]

    def _send_all(self, slots: list, command: str, args: Sequence) -> None:
        for slot, arg in zip(slots, args):
            try:
                slot.send(command, arg)
            except BaseException as error:  # a dead worker, or Ctrl+C between sends: the pipes are out of step
                if not isinstance(error, Exception) or isinstance(error, EnvWorkerDied):
                    self.close(timeout=1.0)
                raise

    def _receive_all(self, slots: list) -> list:
        """Reads every slot's answer (keeping all pipes in step even when one fails), then raises the first error."""
        results, first_error = [], None
        for slot in slots:
            try:
                results.append(slot.receive(self.timeout))
            except Exception as error:
                if isinstance(error, EnvWorkerDied):
                    self.close(timeout=1.0)
                    raise
                results.append(None)
                first_error = first_error or error
            except BaseException:  # e.g. Ctrl+C: answers left unread would be taken for those of the next call
                self.close(timeout=1.0)
                raise
        if first_error is not None:
            raise first_error
        return results


__all__ = ['ParallelEnvs', 'EnvWorkerError', 'EnvWorkerDied', 'stack_obs']
