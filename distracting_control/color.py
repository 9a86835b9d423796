"""Colour distractor: recolours MuJoCo materials (or geoms) independently of the agent.

DisWM (docs/method.md, "Colour distractors") recolours every material of the scene. A *colour set* is an axis-aligned
RGB box `base ± max_delta`; the train set is centred on (0.7, 0.3, 0.5), the test set on (0.5, 0.7, 0.3), so with
max_delta 0.2 the two boxes touch only on the plane G = 0.5. At every reset each colour is drawn uniformly in the
box; after that, every control step moves it by a Gaussian random walk (std `step_std`) clipped back into the box.
With `step_std=0` the colours stay fixed for the whole episode (Pusher's per-episode arm / table colours).

Works on any MuJoCo model: a raw `mujoco.MjModel`, dm_control's `physics.model`, or a `physics` object (its `.model`
is used). The module does not import mujoco itself; it only writes into the model's `<field>` array in place, which
MuJoCo reads again every time it builds a scene, so no re-upload to the render context is needed (unlike textures).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

# Defaults of the release's configs (docs/method.md, "Colour distractors"); a config dict overrides any of them.
DEFAULT_COLOR_CONFIG = {
    'train_base': (0.7, 0.3, 0.5),
    'test_base': (0.5, 0.7, 0.3),
    'max_delta': 0.2,
    'step_std': 0.2,
}
COLOR_SETS = ('train', 'test')


def _field(config: Any, key: str) -> Any:
    """Reads `key` from a mapping or an attribute object, falling back to the release default."""
    if config is None:
        return DEFAULT_COLOR_CONFIG[key]
    if isinstance(config, Mapping):
        return config.get(key, DEFAULT_COLOR_CONFIG[key])
    return getattr(config, key, DEFAULT_COLOR_CONFIG[key])


@dataclass(frozen=True)
class ColorBox:
    """An axis-aligned box of RGB colours, `low <= rgb <= high` per channel (values in [0, 1])."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def around(cls, base: Sequence[float], max_delta: float) -> 'ColorBox':
        """The box `base ± max_delta`, cut to the valid range [0, 1]."""
        base = np.asarray(base, np.float64)
        if base.shape != (3,):
            raise ValueError(f'A colour base must be 3 RGB values, got {base.tolist()}')
        if max_delta < 0:
            raise ValueError(f'max_delta must be >= 0, got {max_delta}')
        return cls(np.clip(base - max_delta, 0.0, 1.0), np.clip(base + max_delta, 0.0, 1.0))

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """`count` independent uniform colours, shape (count, 3)."""
        return rng.uniform(self.low, self.high, size=(count, 3))

    def clip(self, colors: np.ndarray) -> np.ndarray:
        return np.clip(colors, self.low, self.high)

    def contains(self, colors: np.ndarray, atol: float = 1e-6) -> bool:
        """Whether every row of `colors` (any shape ending in 3) lies in the box, up to `atol`."""
        colors = np.asarray(colors, np.float64).reshape(-1, 3)
        return bool(np.all(colors >= self.low - atol) and np.all(colors <= self.high + atol))

    def overlap(self, other: 'ColorBox') -> tuple[np.ndarray, np.ndarray]:
        """Per-channel overlap (low, high) with `other`; a channel with high < low does not overlap."""
        return np.maximum(self.low, other.low), np.minimum(self.high, other.high)

    def interiors_disjoint(self, other: 'ColorBox', atol: float = 1e-9) -> bool:
        """True if the boxes share at most a boundary (no colour lies strictly inside both). `atol` absorbs float
        rounding: 0.3 + 0.2 and 0.7 - 0.2 differ in the last bit, yet the boxes are meant to touch at G = 0.5."""
        low, high = self.overlap(other)
        return bool(np.any(high <= low + atol))


def color_boxes(color_config: Any = None) -> dict[str, ColorBox]:
    """The train and test colour boxes from a `color` config (dict or attribute object; missing keys take the
    release defaults). With the defaults they overlap only on the plane G = 0.5."""
    max_delta = float(_field(color_config, 'max_delta'))
    return {name: ColorBox.around(_field(color_config, f'{name}_base'), max_delta) for name in COLOR_SETS}


def color_step_std(color_config: Any = None) -> float:
    """The random-walk std of a `color` config (0 disables the walk)."""
    return float(_field(color_config, 'step_std'))


class ColorDistractor:
    """Recolours rows of a MuJoCo model's RGBA array with colours drawn from a `ColorBox`.

    By default every material (`model.mat_rgba`) gets its own colour. `reset()` draws new colours uniformly in the
    box, `step()` applies one random-walk step (std `step_std`, clipped to the box). With `step_std=0`, `step()` is
    a no-op and colours change only per episode: the mode the Pusher env uses, e.g.
    `ColorDistractor(model, box, 0.0, rng, field='geom_rgba', groups=[arm_geom_ids, [table_geom_id]])` gives all arm
    geoms one shared colour and the table another. `colors` is what the current frame shows (float32, flat).

    Args:
      model: `mujoco.MjModel`, dm_control's `physics.model`, or a dm_control `physics` (its `.model` is used).
      box: the colour set to draw from; `set_box()` changes it (takes effect at the next `reset()`).
      step_std: std of the per-step Gaussian random walk; 0 keeps colours fixed within an episode.
      rng: a `np.random.Generator` or an int seed (derive it from the env seed for reproducibility).
      field: the model's RGBA array to write, `'mat_rgba'` (materials) or `'geom_rgba'` (geoms; MuJoCo draws a geom's
        own rgba instead of its material's whenever the geom rgba is not the default 0.5 0.5 0.5 1, so this works
        for geoms with a material too).
      groups: rows of `field` that share one colour, one sequence of indices per colour. Default: each row alone.
    """

    def __init__(self, model: Any, box: ColorBox, step_std: float, rng: np.random.Generator | int | None,
                 field: str = 'mat_rgba', groups: Sequence[Sequence[int]] | None = None):
        if not hasattr(model, field) and hasattr(model, 'model'):
            model = model.model  # a dm_control Physics
        if not hasattr(model, field):
            raise ValueError(f'{type(model).__name__} has no RGBA array {field!r}')
        if step_std < 0:
            raise ValueError(f'step_std must be >= 0, got {step_std}')
        self._model = model
        self._field = field
        rows = len(getattr(model, field))
        if groups is None:
            groups = [[row] for row in range(rows)]
        self._groups = [np.asarray(group, np.int64) for group in groups]
        for group in self._groups:
            if group.size == 0 or group.min() < 0 or group.max() >= rows:
                raise ValueError(f'Colour group {group.tolist()} is empty or outside the {rows} rows of {field}')
        self._rng = np.random.default_rng(rng)
        self._box = box
        self.step_std = float(step_std)
        # Until the first reset the model keeps its own colours; report those.
        rgba = getattr(model, field)
        self._colors = np.stack([rgba[group[0], :3] for group in self._groups]).astype(np.float64)

    @property
    def box(self) -> ColorBox:
        return self._box

    @property
    def num_colors(self) -> int:
        return len(self._groups)

    @property
    def colors(self) -> np.ndarray:
        """The colours the model holds now, float32 of shape (num_colors * 3,)."""
        return self._colors.astype(np.float32).ravel()

    def set_box(self, box: ColorBox) -> None:
        """Switches the colour set; the current episode keeps its colours until the next `reset()`."""
        self._box = box

    def reset(self) -> np.ndarray:
        """Draws a fresh colour per group uniformly in the box and writes it to the model."""
        self._colors = self._box.sample(self._rng, self.num_colors)
        self._write()
        return self.colors

    def step(self) -> np.ndarray:
        """One random-walk step (no-op when `step_std == 0`)."""
        if self.step_std > 0:
            noise = self._rng.normal(0.0, self.step_std, size=self._colors.shape)
            self._colors = self._box.clip(self._colors + noise)
            self._write()
        return self.colors

    def _write(self) -> None:
        rgba = getattr(self._model, self._field)  # a view into the model's memory: writes go straight to MuJoCo
        for group, color in zip(self._groups, self._colors):
            rgba[group, :3] = color
