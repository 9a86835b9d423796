"""DeepMind Control Suite base env (`dmc2gym_<domain>_<task>`) with the DisWM colour distractor.

One `step()` is one dm_control control step; action repeat, the agent-step time limit and the obs dict come from
`env/wrappers.py`. Set `MUJOCO_GL=egl` (or another backend) before this module imports dm_control.
"""
from __future__ import annotations

import difflib
from typing import Any

import numpy as np

from distracting_control import COLOR_SETS, ColorDistractor, color_boxes, color_step_std
from env.wrappers import config_get

# Seed-stream tag for the colour RNG, so that colours and the task RNG (seeded with the seed itself) differ.
_COLOR_STREAM = 0xC010
# The "set" that leaves dm_control's own materials untouched (clean rendering, `--clean_render True`).
CLEAN_SET = 'clean'


def _numpy_compat() -> None:
    """dm-control 1.0.28 (the release that matches mujoco 3.3.0) calls `np.in1d` in quadruped.py; numpy 2.4 removed
    it. `np.isin` is its documented replacement with the same result for the 1-D arrays used there."""
    if not hasattr(np, 'in1d'):
        np.in1d = np.isin


def dmc_task_names() -> list[str]:
    """`<domain>_<task>` for every task of dm_control.suite."""
    from dm_control import suite
    return [f'{domain}_{task}' for domain, task in suite.ALL_TASKS]


def parse_dmc_name(name: str) -> tuple[str, str]:
    """Splits `<domain>_<task>` by matching dm_control's (domain, task) pairs, since domains such as `ball_in_cup`
    and `point_mass` contain underscores themselves."""
    from dm_control import suite
    for domain, task in suite.ALL_TASKS:
        if name == f'{domain}_{task}':
            return domain, task
    close = difflib.get_close_matches(name, dmc_task_names(), n=3, cutoff=0.4)
    raise ValueError(f'Unknown DMC task {name!r}. Closest: {", ".join(close) or "none"}.')


def default_camera(domain: str) -> int:
    """The release's camera choice: 2 for quadruped (its `y` tracking camera; camera 0 is a distant global view in
    which the robot covers a few pixels at 64×64), else 0."""
    return 2 if domain == 'quadruped' else 0


class DMCEnv:
    """dm_control task whose materials all take colours from the DisWM colour distractor.

    Args:
      name: `<domain>_<task>`, e.g. `reacher_easy`, `ball_in_cup_catch`.
      config: reads `size` ([H, W], default 64×64), `camera` (None = `default_camera(domain)`) and `color`
        (`train_base`, `test_base`, `max_delta`, `step_std`; a dict or an attribute object).
      seed: seeds the task RNG (`task_kwargs={'random': seed}`) and, on a separate stream, the colours.
      distractor: colour set, `train` or `test`; or `clean` (CLEAN_SET): dm_control's own rendering, every material,
        the floor and the skybox as the suite defines them, nothing recoloured (the `--clean_render` option).

    `legacy_inertia` in config (default False): body masses and inertias as MuJoCo < 2.1.1 computed them from capsule
    geoms (`env/inertia.py`), the simulator of the published DreamerV2 DMC runs.

    Colours are redrawn in the current set's box at every `reset()` and take one random-walk step after every
    control step. `terminated` is True only on a true terminal (dm_env LAST with discount 0); dm_control's own
    time limit gives `truncated`.
    """

    def __init__(self, name: str, config: Any, seed: int, distractor: str = 'train'):
        from dm_control import suite
        self.domain, self.task = parse_dmc_name(name)
        color_config = config_get(config, 'color', None)
        self._boxes = color_boxes(color_config)
        self._check_set(distractor)
        self._distractor = distractor
        if self.domain == 'quadruped':
            _numpy_compat()
        self._env = suite.load(self.domain, self.task, task_kwargs={'random': seed})
        if config_get(config, 'legacy_inertia', False):
            from env.inertia import legacy_capsule_inertia
            legacy_capsule_inertia(self._env.physics, self.domain)
        size = config_get(config, 'size', (64, 64))
        self._height, self._width = int(size[0]), int(size[1])
        camera = config_get(config, 'camera', None)
        self._camera_id = default_camera(self.domain) if camera is None else camera
        self._camera = None  # created on the first render, then reused (building one allocates a scene)
        self._seg_camera = None  # segmentation camera of `material_coverage` (opt-in factors only)
        self._layout = None  # cached by `_state_layout`

        spec = self._env.action_spec()
        self._action_low = np.asarray(spec.minimum, np.float64) * np.ones(spec.shape)
        self._action_high = np.asarray(spec.maximum, np.float64) * np.ones(spec.shape)
        self.action_size = int(np.prod(spec.shape))

        # The suite's own colours, restored whenever the clean set is on (a switch from a colour set recoloured them).
        self._own_rgba = np.array(self._env.physics.model.mat_rgba, copy=True)
        first_box = self._boxes['train' if distractor == CLEAN_SET else distractor]
        self.colors = ColorDistractor(self._env.physics, first_box, color_step_std(color_config),
                                      np.random.default_rng([_COLOR_STREAM, seed]))

    @property
    def physics(self):
        return self._env.physics

    @property
    def control_timestep(self) -> float:
        """Seconds of simulated time per `step()`."""
        return float(self._env.control_timestep())

    @property
    def distractor(self) -> str:
        return self._distractor

    def set_distractor(self, name: str) -> None:
        """Chooses the colour set (`train` / `test`) used from the next `reset()` on."""
        self._check_set(name)
        self._distractor = name

    def reset(self) -> None:
        self._env.reset()
        if self._distractor == CLEAN_SET:
            self.physics.model.mat_rgba[:] = self._own_rgba
            return
        # After the task's own initialisation, which may touch the model; the new colours must win.
        self.colors.set_box(self._boxes[self._distractor])
        self.colors.reset()

    def step(self, action: np.ndarray) -> tuple[float, bool, bool, dict]:
        action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        native = self._action_low + (action + 1.0) / 2.0 * (self._action_high - self._action_low)
        time_step = self._env.step(native)
        if self._distractor != CLEAN_SET:
            self.colors.step()
        last = time_step.last()
        terminated = bool(last and time_step.discount == 0.0)
        truncated = bool(last and not terminated)
        return float(time_step.reward or 0.0), terminated, truncated, {}

    def render(self) -> np.ndarray:
        if self._camera is None:
            from dm_control.mujoco.engine import Camera
            self._camera = Camera(self._env.physics, self._height, self._width, self._camera_id)
        # Camera.render returns a flipped view of its reused buffer: copy so frames do not alias each other.
        return np.array(self._camera.render(), dtype=np.uint8, copy=True)

    def factors(self, full: bool = False) -> dict:
        """`color`: the distractor state the next `render()` shows. With `full` (opt-in, used only by the held-out
        evaluation collection; see docs/disentanglement.md) also the ground-truth factors of that frame:
        `material_rgb` (M * 3,) float32, every material's RGB read from the model (what the renderer uses),
        `state` (S,) float32 (see `state_factors`) and `material_coverage` (M,) float32, the fraction of the
        camera's pixels covered by geoms of each material (a segmentation render of the current frame)."""
        if self._distractor == CLEAN_SET:  # constant: the suite's own material colours
            color = np.array(self._own_rgba[:, :3], np.float32).ravel()
        else:
            color = self.colors.colors
        if not full:
            return {'color': color}
        return {'color': color,
                'material_rgb': np.array(self.physics.model.mat_rgba[:, :3], np.float32).ravel(),
                'state': self.state_factors(),
                'material_coverage': self.material_coverage()}

    # ---- Ground-truth factors (opt-in: nothing below runs during training) ----------------------------------------
    @property
    def unwrapped(self) -> 'DMCEnv':
        """The base env itself; the wrappers forward this attribute, so `make_env(...).unwrapped` reaches it."""
        return self

    @property
    def material_names(self) -> list[str]:
        model = self.physics.model
        return [model.material(i).name or f'material{i}' for i in range(model.nmat)]

    @property
    def state_factor_names(self) -> list[str]:
        return [name for name, _, _ in self._state_layout()]

    def state_factors(self) -> np.ndarray:
        """Joint positions as visible in one frame, float32 (S,) named by `state_factor_names`: qpos without
        velocities; an unlimited hinge as (sin, cos); a limited hinge / slide as its value; ball and free joints as
        their quaternion (and, for free joints, position). With a tracking camera (mode track / trackcom) the root's
        horizontal position is dropped: root-x slide joints and the x, y of a root free joint."""
        qpos = self.physics.data.qpos
        out = np.empty(len(self._state_layout()), np.float32)
        for i, (_, adr, kind) in enumerate(self._state_layout()):
            out[i] = np.sin(qpos[adr]) if kind == 'sin' else np.cos(qpos[adr]) if kind == 'cos' else qpos[adr]
        return out

    def material_coverage(self) -> np.ndarray:
        """Fraction of the camera's pixels showing a geom of each material (float32 (M,)), from a segmentation render
        of the current state on a second camera (the RGB camera and its scene are untouched)."""
        if self._seg_camera is None:
            from dm_control.mujoco.engine import Camera
            self._seg_camera = Camera(self._env.physics, self._height, self._width, self._camera_id)
        seg = self._seg_camera.render(segmentation=True)
        model = self.physics.model
        geom_ids = seg[..., 0][seg[..., 1] == 5]  # mjOBJ_GEOM
        matid = model.geom_matid[geom_ids]
        counts = np.bincount(matid[matid >= 0], minlength=model.nmat)[:model.nmat]
        return (counts / float(seg.shape[0] * seg.shape[1])).astype(np.float32)

    def _state_layout(self) -> list[tuple[str, int, str]]:
        """(name, qpos address, 'value' | 'sin' | 'cos') per state factor; depends on the model only, cached."""
        if self._layout is None:
            model = self.physics.model
            camera = self._camera_id if isinstance(self._camera_id, int) else model.camera(self._camera_id).id
            tracking = model.ncam > 0 and int(model.cam_mode[camera]) in (1, 2)  # mjCAMLIGHT_TRACK, TRACKCOM
            layout = []
            for j in range(model.njnt):
                name, adr, kind = model.joint(j).name or f'joint{j}', int(model.jnt_qposadr[j]), int(model.jnt_type[j])
                root = int(model.body_parentid[model.jnt_bodyid[j]]) == 0
                if kind == 0:  # free: x y z, quaternion w x y z
                    parts = [('z', 2)] if tracking and root else [('x', 0), ('y', 1), ('z', 2)]
                    parts += [(f'q{c}', 3 + i) for i, c in enumerate('wxyz')]
                    layout += [(f'{name}_{p}', adr + o, 'value') for p, o in parts]
                elif kind == 1:  # ball: quaternion
                    layout += [(f'{name}_q{c}', adr + i, 'value') for i, c in enumerate('wxyz')]
                elif kind == 2:  # slide
                    if not (tracking and root and abs(model.jnt_axis[j][0]) > 0.99):
                        layout.append((name, adr, 'value'))
                elif model.jnt_limited[j]:
                    layout.append((name, adr, 'value'))
                else:  # unlimited hinge: the angle wraps
                    layout += [(f'{name}_sin', adr, 'sin'), (f'{name}_cos', adr, 'cos')]
            self._layout = layout
        return self._layout

    def close(self) -> None:
        if self._camera is not None:
            self._camera._scene.free()  # the public Physics.render frees its scenes the same way
            self._camera = None
        if self._seg_camera is not None:
            self._seg_camera._scene.free()
            self._seg_camera = None
        # Frees the GL context explicitly; otherwise EGL prints errors at interpreter exit. Safe to call twice.
        self._env.physics.free()

    def _check_set(self, name: str) -> None:
        if name not in self._boxes and name != CLEAN_SET:
            raise ValueError(f'Unknown colour set {name!r} for DMC; valid: {", ".join(COLOR_SETS)}, {CLEAN_SET}.')
