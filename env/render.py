"""Offscreen MuJoCo rendering shared by the Pusher and DrawerWorld base envs.

Both suites render through this one class instead of gymnasium's `MujocoRenderer`, because DrawerWorld must upload
edited table textures to the GPU context (`mujoco.mjr_uploadTexture`), and gymnasium keeps that context behind private
attributes. Owning the GL context, the `MjrContext` and the scene here gives both suites the same camera handling and a
public handle on the context, with only public MuJoCo calls.

Set `MUJOCO_GL` (e.g. `egl`) before mujoco is first imported.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mujoco
import numpy as np

_FREE_CAMERA_KEYS = ('distance', 'azimuth', 'elevation', 'lookat')
# Shadow-map side in pixels. The models ask for 4096, and on a CPU (Mesa llvmpipe) drawing that map is most of the
# render time; at 64x64 a 1024 map gives shadows that look the same and renders ~2x faster (Meta-World, Pusher).
SHADOW_SIZE = 1024


def _as_dict(value: Any) -> dict:
    """A config value given as a dict or as an attribute namespace, as a plain dict."""
    if isinstance(value, Mapping):
        return dict(value)
    return dict(vars(value))


class OffscreenRenderer:
    """One reusable offscreen render target for one MuJoCo model.

    `camera` is either the name (or id) of a camera defined in the model, or a free camera given as a mapping / namespace
    with `distance`, `azimuth`, `elevation` (degrees) and `lookat` (xyz); free-camera keys left out keep MuJoCo's
    defaults for the model. `render(data)` returns a fresh uint8 array (height, width, 3), top row first.
    The shadow map is capped at `shadow_size` (a render-only setting of the model; physics is unaffected).
    """

    def __init__(self, model: mujoco.MjModel, width: int, height: int, camera: Any, shadow_size: int = SHADOW_SIZE):
        self.model = model
        self.width, self.height = int(width), int(height)
        model.vis.quality.shadowsize = min(model.vis.quality.shadowsize, int(shadow_size))
        # The offscreen framebuffer must be at least as large as the image; the models ship 640x480.
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        self.camera = self._make_camera(model, camera)
        self.option = mujoco.MjvOption()
        self.scene = mujoco.MjvScene(model, maxgeom=1000)
        if getattr(mujoco, 'GLContext', None) is None:
            raise RuntimeError('MuJoCo has no GL backend for offscreen rendering: set MUJOCO_GL=egl (or osmesa / glfw) '
                               'before mujoco is imported.')
        self._gl = mujoco.GLContext(self.width, self.height)
        self._gl.make_current()
        self.context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.context)
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._pixels = np.empty((self.height, self.width, 3), dtype=np.uint8)

    @staticmethod
    def _make_camera(model: mujoco.MjModel, camera: Any) -> mujoco.MjvCamera:
        cam = mujoco.MjvCamera()
        if isinstance(camera, (str, int)):
            cam_id = camera
            if isinstance(camera, str):
                cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if not 0 <= cam_id < model.ncam:
                names = ', '.join(repr(model.camera(i).name) for i in range(model.ncam)) or 'no cameras'
                raise ValueError(f'Unknown camera {camera!r}: this model has {names}. Use one of those, or a free '
                                 f'camera given as a dict with keys {_FREE_CAMERA_KEYS} (null = the suite default).')
            cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
            cam.fixedcamid = cam_id
            return cam
        settings = _as_dict(camera)
        unknown = set(settings) - set(_FREE_CAMERA_KEYS)
        if unknown:
            raise ValueError(f'Unknown free-camera keys {sorted(unknown)}; use {_FREE_CAMERA_KEYS}.')
        mujoco.mjv_defaultFreeCamera(model, cam)
        for key in ('distance', 'azimuth', 'elevation'):
            if key in settings:
                setattr(cam, key, float(settings[key]))
        if 'lookat' in settings:
            cam.lookat[:] = np.asarray(settings['lookat'], dtype=np.float64)
        return cam

    def upload_texture(self, texture_id: int) -> None:
        """Copies `model.tex_data` of one texture to the GPU; needed after editing it, or the old pixels stay."""
        self._gl.make_current()
        mujoco.mjr_uploadTexture(self.model, self.context, texture_id)

    def render(self, data: mujoco.MjData) -> np.ndarray:
        # Several envs may live in one process, each with its own GL context: make ours current every time.
        self._gl.make_current()
        mujoco.mjv_updateScene(self.model, data, self.option, None, self.camera, mujoco.mjtCatBit.mjCAT_ALL,
                               self.scene)
        mujoco.mjr_render(self._rect, self.scene, self.context)
        mujoco.mjr_readPixels(self._pixels, None, self._rect, self.context)
        # OpenGL's first row is the bottom of the image.
        return np.ascontiguousarray(self._pixels[::-1])

    def close(self) -> None:
        if self._gl is not None:
            self._gl.make_current()
            self.context.free()
            self._gl.free()
            self._gl = None
