"""Gymnasium MuJoCo `Pusher-v5` with the DisWM colour distraction (docs/method.md, "Colour distractors").

Set `MUJOCO_GL` (e.g. `egl`) before this module is imported.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from distracting_control import COLOR_SETS, ColorDistractor, color_boxes
from env.render import OffscreenRenderer
from env.wrappers import config_get

# The release's top-down camera. Half of the frame lies beyond the edge of the table plane and renders black; kept
# as released so images match the published setup.
DEFAULT_CAMERA = {'distance': 2.0, 'azimuth': 90.0, 'elevation': -90.0, 'lookat': (0.0, -0.5, 0.2)}

# The arm is the body tree rooted at this body; every geom in it gets the one arm colour.
_ARM_ROOT_BODY = 'r_shoulder_pan_link'


class PusherEnv:
    """Base env (one control step, no wrappers) for gymnasium's `Pusher-v5` with per-episode colour distraction.

    At each `reset()` all arm geoms get one shared RGB and the table another, each drawn uniformly once per episode (no
    random walk) from the active colour set's box `base ± max_delta`, clipped to [0, 1]: `train` uses
    `config.color.train_base` (0.7, 0.3, 0.5), `test` uses `config.color.test_base` (0.5, 0.7, 0.3). The pushed object
    is black and the goal stays red. Every random choice derives from `seed`: the colours come from a numpy Generator
    seeded with it, and gymnasium's own reset RNG is seeded with it on the first reset.

    Actions are 7 normalised torques in [-1, 1], rescaled to the native Box(-2, 2). `step` returns gymnasium's
    `truncated` (the registered 100-step limit) unchanged; the env never terminates.

    Interface (env/CONTRACT.md "Base envs"): `action_size`, `reset()`, `step(action) -> (reward, terminated,
    truncated, info)`, `render() -> uint8 (H, W, 3)`, `factors()`, `set_distractor(name)`, `close()`; plus `state`,
    the raw 23-d gymnasium observation of the current step.
    """

    DISTRACTORS = COLOR_SETS

    def __init__(self, task: str, config: Any, seed: int, distractor: str):
        name = task.split('_', 1)[1] if task.startswith('gymnasium_') else task
        if name != 'Pusher-v5':
            raise ValueError(f'PusherEnv supports only gymnasium_Pusher-v5, not {task!r}.')
        self._env = gym.make(name)
        self._model = self._env.unwrapped.model
        self._data = self._env.unwrapped.data
        low, high = self._env.action_space.low, self._env.action_space.high
        self._action_low = low.astype(np.float64)
        self._action_scale = (high - low).astype(np.float64) / 2.0
        self.action_size = int(low.shape[0])

        self._boxes = color_boxes(config_get(config, 'color', None))
        self.set_distractor(distractor)
        self._active = distractor
        body_root = self._model.body_rootid[self._model.geom_bodyid]
        arm_geoms = np.flatnonzero(body_root == self._model.body(_ARM_ROOT_BODY).id)
        # One colour for the whole arm, one for the table, fixed within an episode (step_std 0: no random walk).
        self.colors = ColorDistractor(self._model, self._boxes[distractor], 0.0, np.random.default_rng(int(seed)),
                                      field='geom_rgba', groups=[arm_geoms, [self._model.geom('table').id]])
        object_geoms = np.flatnonzero(self._model.geom_bodyid == self._model.body('object').id)
        self._model.geom_rgba[object_geoms] = (0.0, 0.0, 0.0, 1.0)
        self._seed = int(seed)
        self._gym_seeded = False
        self.state = None

        camera = config_get(config, 'camera', None)
        height, width = config_get(config, 'size', (64, 64))
        self._renderer = OffscreenRenderer(self._model, width, height, DEFAULT_CAMERA if camera is None else camera)

    @property
    def distractor(self) -> str:
        """The colour set of the current (or, before the first reset, the next) episode."""
        return self._active

    def set_distractor(self, name: str) -> None:
        """Selects the colour set (`train` / `test`) for episodes from the next `reset()` on."""
        if name not in self.DISTRACTORS:
            raise ValueError(f'Unknown Pusher distractor {name!r}; use one of {self.DISTRACTORS}.')
        self._distractor = name

    def reset(self) -> None:
        self._active = self._distractor
        self.colors.set_box(self._boxes[self._active])
        self.colors.reset()
        # Seed gymnasium once; later resets continue its RNG, so episodes differ but the sequence is reproducible.
        seed = None if self._gym_seeded else self._seed
        self._gym_seeded = True
        self.state, _ = self._env.reset(seed=seed)

    def step(self, action) -> tuple[float, bool, bool, dict]:
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        native = self._action_low + (action + 1.0) * self._action_scale
        self.state, reward, terminated, truncated, info = self._env.step(native.astype(np.float32))
        return float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray:
        return self._renderer.render(self._data)

    def factors(self) -> dict:
        """`color`: the arm RGB then the table RGB (6 floats) that `render()` shows."""
        return {'color': self.colors.colors}

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()
