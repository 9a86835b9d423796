"""DrawerWorld: Meta-World v3 drawer tasks with procedurally textured tables (docs/method.md, "Colour distractors").

The paper's DrawerWorld puts a `grid`, `wood` or `metal` texture on the table (train: grid then wood; eval: metal).
The textures are generated here with numpy, so nothing is downloaded, and written into the model's table texture.

Set `MUJOCO_GL` (e.g. `egl`) before this module is imported.
"""
from __future__ import annotations

import functools
import sys
from typing import Any

import metaworld
import numpy as np

from env.render import OffscreenRenderer
from env.wrappers import config_get

TEXTURES = ('grid', 'wood', 'metal')

# An oblique view from the robot's right: the gripper, the drawer with its handle and the goal marker are in view,
# the drawer slides sideways across the image, and the table top fills most of the frame so its texture is visible.
# (The release looked straight down; from there the arm hides the gripper.)
DEFAULT_CAMERA = {'distance': 1.1, 'azimuth': 180.0, 'elevation': -45.0, 'lookat': (0.0, 0.7, 0.05)}

_TABLE_TEXTURE = 'T_table'
# Fixed, so a texture name always means the same pixels, whatever the env seed.
_TEXTURE_SEED = 12345


def metaworld_env_name(task: str) -> str:
    """`metaworld_drawer-open-v1` (or `-v2`, `-v3`, with or without the prefix) -> Meta-World's `drawer-open-v3`."""
    name = task.split('_', 1)[1] if task.startswith('metaworld_') else task
    stem, sep, version = name.rpartition('-v')
    name = f'{stem}-v3' if sep and version in ('1', '2', '3') else name
    if name not in metaworld.MT1.ENV_NAMES:
        raise ValueError(f'Unknown Meta-World task {task!r}; use e.g. metaworld_drawer-open-v1 or '
                         f'metaworld_drawer-close-v1.')
    return name


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid, interpolated to (height, width) with a smoothstep so the cell
    borders leave no creases."""
    grid = rng.random((cells_y + 1, cells_x + 1))
    y = np.linspace(0, cells_y, height, endpoint=False)
    x = np.linspace(0, cells_x, width, endpoint=False)
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _mix(dark, light, t: np.ndarray) -> np.ndarray:
    dark, light = np.asarray(dark), np.asarray(light)
    return dark + (light - dark) * t[..., None]


@functools.lru_cache(maxsize=None)
def make_texture(name: str, height: int, width: int) -> np.ndarray:
    """The table texture `name` (`grid` / `wood` / `metal`) as uint8 (height, width, 3); deterministic."""
    rng = np.random.default_rng([_TEXTURE_SEED, TEXTURES.index(name)])
    y = np.arange(height)[:, None] / height
    x = np.arange(width)[None, :] / width
    if name == 'grid':
        # Dark blue lines on near-white, 8 cells per side; lines ~2 % of the side wide so they survive the 64 px frame.
        cell, line = 1 / 8, 0.022
        on_line = ((y % cell) < line) | ((x % cell) < line)
        rgb = np.where(on_line[..., None], (0.10, 0.16, 0.45), (0.93, 0.93, 0.90))
    elif name == 'wood':
        # Grain: warped stripes along x, plus fine streaks that vary per row.
        warp = _smooth_noise(rng, height, width, 3, 2)
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (9 * y + 1.5 * warp + 0.15 * x))
        streaks = np.repeat(rng.random((height, 1)), width, axis=1)
        t = np.clip(0.75 * grain ** 0.6 + 0.25 * streaks, 0, 1)
        rgb = _mix((0.33, 0.17, 0.07), (0.72, 0.48, 0.25), t)
    elif name == 'metal':
        # Brushed steel: cool grey with thin horizontal streaks and faint blotches.
        streaks = _smooth_noise(rng, height, width, height // 2, 1)
        blotches = _smooth_noise(rng, height, width, 4, 4)
        t = np.clip(0.35 + 0.35 * streaks + 0.3 * blotches, 0, 1)
        rgb = _mix((0.38, 0.40, 0.43), (0.70, 0.72, 0.76), t)
    else:
        raise ValueError(f'Unknown DrawerWorld texture {name!r}; use one of {TEXTURES}.')
    rgb = np.broadcast_to(rgb, (height, width, 3))
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


class DrawerEnv:
    """Base env (one control step, no wrappers) for Meta-World v3 drawer tasks with a textured table (DrawerWorld).

    `task`: `metaworld_drawer-open-v1` / `metaworld_drawer-close-v1` (`-v3` too); the v1 names of the paper map to
    the v3 envs, the only ones that run on MuJoCo 3. Each `reset()` puts the drawer at the position of a task drawn
    from Meta-World's MT1 train tasks (50 positions), using a numpy Generator seeded with `seed`; MT1's task list is
    also built with `seed`. The table shows the texture `grid`, `wood` or `metal` (see `make_texture`).

    Actions are Meta-World's 4-d [-1, 1] (xyz hand motion, gripper). `step` returns Meta-World's reward and its
    `info` with `success` as a bool. Meta-World's own 500-step truncation is switched off: the shared time-limit
    wrapper ends episodes (DrawerWorld: 200 env steps = 100 agent steps at action repeat 2).

    Interface (env/CONTRACT.md "Base envs"): `action_size`, `reset()`, `step(action) -> (reward, terminated,
    truncated, info)`, `render() -> uint8 (H, W, 3)`, `factors()`, `set_distractor(name)`, `close()`; plus `state`,
    the raw 39-d Meta-World observation of the current step (what Meta-World's scripted policies take).
    """

    DISTRACTORS = TEXTURES

    def __init__(self, task: str, config: Any, seed: int, distractor: str):
        name = metaworld_env_name(task)
        self.set_distractor(distractor)
        self._active = distractor
        benchmark = metaworld.MT1(name, seed=int(seed) % 2**32)  # it seeds numpy's legacy RNG: 32 bits at most
        self._tasks = benchmark.train_tasks
        self._env = benchmark.train_classes[name]()
        # The time-limit wrapper decides episode length; Meta-World would otherwise raise after its 500th step.
        self._env.max_path_length = sys.maxsize
        self._env.seed(int(seed))
        self._rng = np.random.default_rng(int(seed))
        self.action_size = int(self._env.action_space.shape[0])
        self.state = None

        model = self._env.model
        self._texture_id = model.texture(_TABLE_TEXTURE).id
        adr = model.tex_adr[self._texture_id]
        self._texture_shape = (int(model.tex_height[self._texture_id]), int(model.tex_width[self._texture_id]),
                               int(model.tex_nchannel[self._texture_id]))
        self._texture_slice = slice(adr, adr + int(np.prod(self._texture_shape)))
        self._texture_shown = None

        camera = config_get(config, 'camera', None)
        height, width = config_get(config, 'size', (64, 64))
        self._renderer = OffscreenRenderer(model, width, height, DEFAULT_CAMERA if camera is None else camera)

    @property
    def distractor(self) -> str:
        """The table texture of the current (or, before the first reset, the next) episode."""
        return self._active

    def set_distractor(self, name: str) -> None:
        """Selects the table texture (`grid` / `wood` / `metal`) for episodes from the next `reset()` on."""
        if name not in self.DISTRACTORS:
            raise ValueError(f'Unknown DrawerWorld distractor {name!r}; use one of {self.DISTRACTORS}.')
        self._distractor = name

    def _show_texture(self, name: str) -> None:
        height, width, channels = self._texture_shape
        pixels = make_texture(name, height, width)
        if channels == 4:
            pixels = np.concatenate([pixels, np.full((height, width, 1), 255, np.uint8)], axis=-1)
        self._env.model.tex_data[self._texture_slice] = pixels.reshape(-1)
        # The GPU keeps its own copy of the texture; without the upload the old pixels stay on screen.
        self._renderer.upload_texture(self._texture_id)
        self._texture_shown = name

    def reset(self) -> None:
        self._active = self._distractor
        if self._texture_shown != self._active:
            self._show_texture(self._active)
        self._env.set_task(self._tasks[self._rng.integers(len(self._tasks))])
        self.state, _ = self._env.reset()

    def step(self, action) -> tuple[float, bool, bool, dict]:
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.state, reward, terminated, truncated, info = self._env.step(action)
        info = dict(info, success=bool(info['success']))
        return float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray:
        return self._renderer.render(self._env.data)

    def factors(self) -> dict:
        """`color`: one-hot of the table texture (grid, wood, metal) that `render()` shows."""
        one_hot = np.zeros(len(TEXTURES), dtype=np.float32)
        one_hot[TEXTURES.index(self._active)] = 1.0
        return {'color': one_hot}

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()
