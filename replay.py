"""Episode storage (DreamerV2/DisWM `.npz` format) and fixed-length sequence replay.

An episode is a dict of arrays with a leading time axis T: `image` (T, 64, 64, 3) uint8, `action` (T, A) where
`action[t]` is the action that led to observation t (zeros at t = 0), `reward[t]` the reward received on arriving at
observation t, `discount`, `is_first`, `is_terminal` (and optional extra keys such as `color`).

The replay keeps every step of every stored episode in one flat ring buffer per key (uint8 images stored once), so
sampling a batch is a single vectorised gather whose cost does not depend on the number of episodes. By default
sequences may cross episode boundaries (`is_first` marks where the world model resets its state); with
`within_episodes` each lies inside one episode, as in official DreamerV2 and the DisWM release.
"""
from __future__ import annotations

import datetime
import glob
import io
import mmap
import os
import queue
import threading
import uuid
import zipfile

import numpy as np

import tools

REQUIRED_VIDEO_KEYS = ('image',)


def episode_length(episode: dict) -> int:
    """Number of transitions (DreamerV2 convention: steps - 1)."""
    return len(episode['image']) - 1


def save_episode(directory: str, episode: dict) -> str:
    """Saves one episode as a compressed npz named `<timestamp>-<id>-<length>.npz`, atomically."""
    os.makedirs(directory, exist_ok=True)
    # Microsecond timestamps keep the names in chronological order (the replay reloads them in that order).
    stamp = datetime.datetime.now().strftime('%Y%m%dT%H%M%S%f')
    name = f'{stamp}-{uuid.uuid4().hex}-{episode_length(episode)}.npz'
    path = os.path.join(directory, name)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in episode.items()})
    tools.atomic_write_bytes(path, buffer.getvalue())
    return path


def list_episodes(directory: str, recursive: bool = True) -> list[str]:
    pattern = os.path.join(directory, '**', '*.npz') if recursive else os.path.join(directory, '*.npz')
    return sorted(glob.glob(pattern, recursive=recursive))


def load_episode(path: str, keys=None) -> dict:
    with np.load(path) as data:
        names = data.files if keys is None else [k for k in keys if k in data.files]
        return {k: data[k] for k in names}


def load_episodes(directory: str, keys=None, recursive=True, limit_steps=None, verbose=True):
    """Loads all episodes in a directory, newest last; corrupt files are skipped and counted.

    Returns (episodes, number of skipped files). With `limit_steps`, keeps only the newest episodes that fit.
    """
    paths = list_episodes(directory, recursive)
    episodes, skipped = [], 0
    for path in paths:
        try:
            episodes.append(load_episode(path, keys))
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
            skipped += 1
            if verbose:
                print(f'Skipping unreadable episode {path} ({type(e).__name__}: {e}).')
    if limit_steps:
        kept, total = [], 0
        for ep in reversed(episodes):
            total += len(ep['image'])
            if total > limit_steps and kept:
                break
            kept.append(ep)
        episodes = kept[::-1]
    return episodes, skipped


def count_steps(directory: str) -> int:
    """Agent steps stored in a directory, read from the file names (no loading)."""
    total = 0
    for path in list_episodes(directory, recursive=False):
        try:
            total += int(os.path.basename(path).rsplit('-', 1)[-1].split('.')[0])
        except ValueError:
            pass
    return total


def mapped_zeros(shape: tuple, dtype) -> np.ndarray:
    """A zeroed array in its own anonymous memory map: pages appear on first write and go back to the OS when the
    array is freed. The replay's storage (gigabytes, regrown by doubling) thus never lands in malloc's heap, which
    `tools.keep_freed_memory` keeps resident for the training updates' reuse."""
    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize))
    return np.frombuffer(buffer, dtype, count=count).reshape(shape)


class Replay:
    """Flat ring buffer of steps; uniform sampling of fixed-length sequences.

    capacity: maximum number of stored steps (None = unbounded, storage grows by doubling).
    mark_sequence_starts: set `is_first` at every sampled sequence's first step, so the world model starts each
        sequence from the zero state and a zero action (official DreamerV2). False (`--release_compat`): only real
        episode starts are marked; the zero state is the same, but the first step sees its stored action, as the
        release's world model does.
    within_episodes: False (default): a sequence starts at any stored step, uniformly, and may run on into the next
        episode (every step is sampled equally often). True (`--sample_within_episodes`, and `--release_compat`):
        an episode is drawn uniformly among those at least `length` long, then a start inside it, uniformly, as
        official DreamerV2's DMC replay (`prioritize_ends: False`) and the release's `sample_episodes` do; no
        sequence crosses an episode boundary, and an episode's first and last `length - 1` steps are sampled less
        often than its middle (docs/method.md, "Replay sampling").
    """

    def __init__(self, capacity: int | None = None, seed: int = 0, keys=None, mark_sequence_starts: bool = True,
                 within_episodes: bool = False):
        self.capacity = capacity or None
        self.mark_sequence_starts = mark_sequence_starts
        self.within_episodes = within_episodes
        self._episode_starts: list[int] = []    # each stored episode's first step, counted in steps ever added
        self.keys = keys
        self._data: dict[str, np.ndarray] = {}
        self._size = 0          # valid steps stored
        self._ptr = 0           # next write position
        self._added = 0         # total steps ever added
        self.episodes = 0
        self.rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # a background prefetcher may sample while episodes are added

    def __len__(self):
        return self._size

    @property
    def steps(self) -> int:
        return self._added

    def _allocate(self, episode: dict, needed: int):
        if not self._data:
            initial = self.capacity or max(1024, needed)
            for key, value in episode.items():
                value = np.asarray(value)
                self._data[key] = mapped_zeros((initial,) + value.shape[1:], value.dtype)
        elif self.capacity is None and self._size + needed > len(next(iter(self._data.values()))):
            new = max(2 * len(next(iter(self._data.values()))), self._size + needed)
            for key, arr in self._data.items():
                grown = mapped_zeros((new,) + arr.shape[1:], arr.dtype)
                grown[:self._size] = arr[:self._size]
                self._data[key] = grown

    def add_episode(self, episode: dict) -> None:
        with self._lock:
            self._add_episode(episode)

    def _add_episode(self, episode: dict) -> None:
        episode = {k: np.asarray(v) for k, v in episode.items() if self.keys is None or k in self.keys}
        length = len(episode['image'])
        if 'is_first' not in episode:
            episode['is_first'] = np.zeros(length, bool)
            episode['is_first'][0] = True
        if self._data and set(episode) != set(self._data):
            missing = set(self._data) ^ set(episode)
            raise ValueError(f'Episode keys differ from the replay\'s: {sorted(missing)}.')
        self._allocate(episode, length)
        cap = len(next(iter(self._data.values())))
        if self.capacity is not None and length > cap:
            episode = {k: v[-cap:] for k, v in episode.items()}
            length = cap
        idx = (self._ptr + np.arange(length)) % cap
        for key, value in episode.items():
            self._data[key][idx] = value
        self._ptr = (self._ptr + length) % cap if self.capacity else self._ptr + length
        self._size = min(self._size + length, cap) if self.capacity else self._size + length
        self._episode_starts.append(self._added)
        self._added += length
        self.episodes += 1

    def sample(self, batch: int, length: int) -> dict:
        """A batch of (batch, length) sequences as numpy arrays (one gather per key)."""
        with self._lock:
            return self._sample(batch, length)

    def _sample(self, batch: int, length: int) -> dict:
        if self._size < length:
            raise ValueError(f'The replay holds {self._size} steps, fewer than one sequence of {length}.')
        cap = len(next(iter(self._data.values())))
        if self.within_episodes:
            first = self._starts_within_episodes(batch, length)
            # Steps ever added map to storage positions modulo the capacity (the write pointer is added % cap).
            idx = (first[:, None] + np.arange(length)[None]) % cap
        else:
            offsets = self.rng.integers(0, self._size - length + 1, size=batch)
            # The oldest valid step sits at the write pointer once the ring buffer is full.
            origin = self._ptr if (self.capacity and self._size == cap) else 0
            idx = (origin + offsets[:, None] + np.arange(length)[None]) % cap
        out = {key: arr[idx] for key, arr in self._data.items()}
        if self.mark_sequence_starts:     # a fresh latent state and a zero action at every sequence start
            out['is_first'] = out['is_first'].copy()
            out['is_first'][:, 0] = True
        return out

    def _starts_within_episodes(self, batch: int, length: int) -> np.ndarray:
        """First steps (counted in steps ever added) of `batch` sequences, each inside one stored episode."""
        starts = np.asarray(self._episode_starts)
        lengths = np.diff(starts, append=self._added)      # episodes are stored back to back
        # Episodes whose every step is still stored (a ring buffer overwrites the oldest) and that hold a sequence.
        usable = (starts >= self._added - self._size) & (lengths >= length)
        if not usable.any():
            raise tools.ConfigError(
                f'No stored episode holds a sequence of {length} steps, and sequences are sampled within episodes '
                f'(--sample_within_episodes or --release_compat): lower --batch_length or lengthen the episodes '
                f'(--time_limit), or, without --release_compat, sample across episodes (--sample_within_episodes '
                f'False).')
        starts, lengths = starts[usable], lengths[usable]
        pick = self.rng.integers(0, len(starts), size=batch)
        return starts[pick] + self.rng.integers(0, lengths[pick] - length + 1)


def samples_within_episodes(config) -> bool:
    """Replay sequences inside one episode, as the release and official DreamerV2 sample (docs/method.md, "Replay
    sampling"): with `--sample_within_episodes True` or `--release_compat True`."""
    return bool(config.sample_within_episodes or config.release_compat)


def for_training(config) -> Replay:
    """The online training replay of a config: sequence starts marked unless `--release_compat`."""
    return Replay(config.dataset_size or None, seed=config.seed, mark_sequence_starts=not config.release_compat,
                  within_episodes=samples_within_episodes(config))


class Prefetcher:
    """Prepares the next batch in a background thread while the current update runs.

    `prepare(sample(batch, length))` (e.g. the agent's `to_torch`, which pins memory and copies to the GPU
    non-blocking) runs on the worker thread; `next()` returns the oldest prepared batch. Sampling order, and so the
    numbers, are the same as sampling in the main thread (one sampler, one thread, a FIFO).
    """

    def __init__(self, replay: Replay, batch: int, length: int, prepare=lambda x: x, depth: int = 1):
        self.replay, self.batch, self.length, self.prepare = replay, batch, length, prepare
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True, name='replay-prefetch')
        self._thread.start()

    def _work(self):
        while not self._stop.is_set():
            try:
                item = self.prepare(self.replay.sample(self.batch, self.length))
            except Exception as e:  # surfaced in the main thread by next()
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def next(self):
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------------------------------------------------
# Video datasets for pretraining
# --------------------------------------------------------------------------------------------------------------------
def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (falls back to total physical memory)."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def _image_bytes(path: str) -> int:
    with zipfile.ZipFile(path) as archive:
        return archive.getinfo('image.npy').file_size


def load_video_dataset(path: str, scale: float = 1.0, seed: int = 0, min_length: int = 2,
                       memory_fraction: float = 0.8, size=(64, 64)):
    """Loads the `image` arrays of every `.npz` episode under `path` (recursively) as uint8.

    Validates everything before training starts: missing/empty folder, unreadable files (skipped and counted), image
    size or channel count, episodes shorter than `min_length` (skipped and counted), and whether the images fit in
    RAM (checked from the archive headers, before loading). `scale` < 1 keeps a seeded random subset of the files.
    Returns (episodes, report) with each episode a dict holding only `image`.
    """
    if not path:
        raise tools.ConfigError('--pretrain_datasets_path is required for --mode video_pretrain '
                                '(--beta_vae_pretrain True) '
                                '(a folder of .npz video episodes; see scripts/download_datasets.py).')
    if not os.path.isdir(path):
        raise tools.ConfigError(f"Video dataset folder '{path}' does not exist: check --pretrain_datasets_path.")
    files = list_episodes(path, recursive=True)
    if not files:
        raise tools.ConfigError(f"No .npz episodes found under '{path}': check --pretrain_datasets_path "
                                f"(episodes are searched recursively).")
    if not 0 < scale <= 1:
        raise tools.ConfigError(f'--pretrain_dataset_scale must be in (0, 1], got {scale}.')
    if scale < 1:
        rng = np.random.default_rng(seed)
        count = max(1, int(round(len(files) * scale)))
        files = [files[i] for i in sorted(rng.choice(len(files), count, replace=False))]
    sizes, unreadable = {}, []
    for file in files:
        try:
            sizes[file] = _image_bytes(file)
        except (OSError, KeyError, zipfile.BadZipFile):
            unreadable.append(file)
    needed, available = sum(sizes.values()), available_memory_bytes()
    if needed > memory_fraction * available:
        raise tools.ConfigError(
            f'The video dataset needs {needed / 2 ** 30:.1f} GiB of RAM as uint8 images but only '
            f'{available / 2 ** 30:.1f} GiB are available ({memory_fraction:.0%} may be used): train on a subset '
            f'with --pretrain_dataset_scale {max(0.01, memory_fraction * available / needed * 0.9):.2f}.')
    episodes, short = [], 0
    for file in sizes:
        try:
            image = load_episode(file, keys=('image',)).get('image')
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            unreadable.append(file)
            continue
        if image is None:
            unreadable.append(file)
            continue
        if image.ndim != 4 or tuple(image.shape[1:]) != (*size, 3):
            raise tools.ConfigError(
                f"Episode '{file}' has images of shape {tuple(image.shape[1:])}; expected {(*size, 3)} "
                f"(T, height, width, RGB). Re-render the dataset at {size[0]}x{size[1]} RGB or set --size.")
        if image.dtype != np.uint8:
            image = np.clip(image, 0, 255).astype(np.uint8)
        if len(image) < min_length:
            short += 1
            continue
        episodes.append({'image': image})
    if unreadable:
        print(f'Skipped {len(unreadable)} unreadable episode file(s) in {path} (e.g. {unreadable[0]}).')
    if short:
        print(f'Skipped {short} episode(s) shorter than batch_length {min_length}.')
    if not episodes:
        raise tools.ConfigError(f"No usable episodes under '{path}' ({len(unreadable)} unreadable, {short} shorter "
                                f"than batch_length {min_length}): lower --batch_length or add episodes.")
    report = dict(files=len(files), episodes=len(episodes), unreadable=len(unreadable), short=short,
                  frames=int(sum(len(e['image']) for e in episodes)), bytes=needed)
    return episodes, report
