"""Body masses and inertias of a DeepMind Control model as MuJoCo computed them before 2.1.1 (`--legacy_inertia`).

MuJoCo derives a body's mass, centre of mass and inertia from its geoms unless the body declares them (`<inertial>`).
Up to 2.1.0 (so also in MuJoCo 2.0, which official DreamerV2's Dockerfile installs) it took a capsule geom (radius r,
half-length h) for a cylinder of radius r and half-length h + r/2: the cylindrical middle section extended by half
the radius at both ends, in place of the two hemispherical caps. From 2.1.1 (December 2021) on the capsule is
computed exactly (a cylinder plus two hemispheres placed with the parallel-axis theorem); MuJoCo's changelog of 2.1.1
lists this as a minor breaking change. DeepMind Control models are built almost wholly from capsules, so the same XML
gives other masses and inertias under the two versions. On finger_spin, for example, the spinner's moment of inertia
about its hinge is 18.6 % larger from MuJoCo 2.1.1 on (0.01270 against 0.01071 kg m^2), and uniformly random actions
earn about three times less reward (docs/learning.md, "finger_spin's spinner under MuJoCo 2.0's capsule inertia").

`legacy_capsule_inertia(physics, domain)` recomputes every geom-derived body of a loaded suite model with the old
capsule rule, writes the results into the model, and lets MuJoCo recompute its derived constants (`mj_setConst`).
The other geom types (sphere, ellipsoid, cylinder, box) use the formulas MuJoCo uses in both versions.
`body_inertials(..., legacy=False)` reproduces the compiled model's own values, which tests/test_inertia.py checks
body by body, so the legacy values differ from MuJoCo's by the capsule rule alone.
"""
from __future__ import annotations

import numpy as np

# Geom types whose mass and inertia `geom_inertia` computes (mujoco.mjtGeom values, written out so that importing
# this module does not import mujoco).
SPHERE, CAPSULE, ELLIPSOID, CYLINDER, BOX = 2, 3, 4, 5, 6
_NAMES = {SPHERE: 'sphere', CAPSULE: 'capsule', ELLIPSOID: 'ellipsoid', CYLINDER: 'cylinder', BOX: 'box'}


def _cylinder(radius, height):
    """Principal moments per unit mass of a solid cylinder along z (height = full length)."""
    across = (3 * radius ** 2 + height ** 2) / 12
    return np.array([across, across, radius ** 2 / 2])


def _shape(gtype: int, size: np.ndarray, legacy: bool) -> tuple[float, np.ndarray]:
    """(volume, principal moments per unit mass in the geom's frame) of a uniform solid."""
    r = size[0]
    if gtype == CAPSULE and legacy:
        height = 2 * size[1] + r                      # the middle section plus r/2 at each end
        return np.pi * r ** 2 * height, _cylinder(r, height)
    if gtype == CAPSULE:
        height = 2 * size[1]
        sphere, cylinder = 4 / 3 * np.pi * r ** 3, np.pi * r ** 2 * height
        caps = sphere / (sphere + cylinder)           # both hemispheres' share of the mass
        offset = caps * height * (3 * r + 2 * height) / 8                  # hemispheres' centroids moved to the ends
        moments = (1 - caps) * _cylinder(r, height) + 2 * caps * r ** 2 / 5 + np.array([offset, offset, 0.0])
        return sphere + cylinder, moments
    if gtype == CYLINDER:
        return np.pi * r ** 2 * 2 * size[1], _cylinder(r, 2 * size[1])
    if gtype == SPHERE:
        return 4 / 3 * np.pi * r ** 3, np.full(3, 2 * r ** 2 / 5)
    a, b, c = size ** 2
    if gtype == ELLIPSOID:
        return 4 / 3 * np.pi * np.prod(size), np.array([b + c, a + c, a + b]) / 5
    if gtype == BOX:
        return 8 * np.prod(size), np.array([b + c, a + c, a + b]) / 3
    raise NotImplementedError(gtype)


def geom_inertia(gtype: int, size, mass: float, density: float, legacy: bool = False) -> tuple[float, np.ndarray]:
    """(mass, principal moments in the geom's frame) of one geom of MuJoCo `gtype` and `size` (MuJoCo's half sizes).
    `mass` NaN: density times the volume (the volume of the old stand-in cylinder for a legacy capsule)."""
    volume, moments = _shape(int(gtype), np.asarray(size, np.float64), legacy)
    m = density * volume if np.isnan(mass) else mass
    return m, m * moments


def _rotation(quat) -> np.ndarray:
    import mujoco
    matrix = np.zeros(9)
    mujoco.mju_quat2Mat(matrix, np.asarray(quat, np.float64))
    return matrix.reshape(3, 3)


def model_spec(domain: str):
    """The MjSpec of a dm_control.suite domain's XML (it keeps what the compiled model drops: which geoms set a mass,
    their densities, which bodies declare an `<inertial>`, the compiler's `settotalmass`)."""
    import importlib

    import mujoco
    module = importlib.import_module(f'dm_control.suite.{domain}')
    try:
        xml, assets = module.get_model_and_assets()
    except (AttributeError, TypeError):      # a domain that builds its XML per task (quadruped, swimmer, lqr, ...)
        raise ValueError(f'--legacy_inertia supports the suite domains with one fixed XML; {domain!r} builds its '
                         f'model per task. Use --legacy_inertia False for it.') from None
    include = {name[2:] if name.startswith('./') else name: data for name, data in assets.items()}
    return mujoco.MjSpec.from_string(xml, include=include)


def body_inertials(model, spec, legacy: bool) -> dict[int, tuple[float, np.ndarray, np.ndarray]]:
    """{body id: (mass, centre of mass, 3x3 inertia about it)} in the body frame, for every body whose inertia MuJoCo
    derives from its geoms, with the capsule rule of MuJoCo >= 2.1.1 (`legacy` False) or < 2.1.1 (True); scaled as
    the compiler's `settotalmass` asks. `model` is the compiled mujoco.MjModel, `spec` its MjSpec (`model_spec`)."""
    import mujoco
    declared = {b.name for b in spec.bodies if b.explicitinertial}
    per_body: dict[str, list] = {}
    for geom in spec.geoms:
        per_body.setdefault(geom.parent.name, []).append(geom)
    out = {}
    for body in range(1, model.nbody):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, body)
        if name in declared or name not in per_body:
            continue
        compiled = [g for g in range(model.ngeom) if model.geom_bodyid[g] == body]
        if len(compiled) != len(per_body[name]):
            raise ValueError(f'body {name!r}: {len(per_body[name])} geoms in the XML, {len(compiled)} compiled')
        parts = []
        for g, geom in zip(compiled, per_body[name]):               # both in the XML's order within the body
            if int(model.geom_type[g]) not in _NAMES:
                raise NotImplementedError(
                    f'--legacy_inertia: body {name!r} has a geom of type {int(model.geom_type[g])} (only '
                    f'{", ".join(_NAMES.values())} are supported); use --legacy_inertia False for this task.')
            mass, moments = geom_inertia(model.geom_type[g], model.geom_size[g], geom.mass, geom.density, legacy)
            rotation = _rotation(model.geom_quat[g])
            parts.append((mass, np.array(model.geom_pos[g], np.float64), rotation @ np.diag(moments) @ rotation.T))
        mass = sum(p[0] for p in parts)
        com = sum(p[0] * p[1] for p in parts) / mass
        inertia = np.zeros((3, 3))
        for m, pos, tensor in parts:
            d = pos - com
            inertia += tensor + m * (d @ d * np.eye(3) - np.outer(d, d))
        out[body] = (mass, com, inertia)
    total = spec.compiler.settotalmass
    if total > 0:
        if declared:
            raise NotImplementedError('--legacy_inertia: settotalmass with declared <inertial> bodies')
        scale = total / sum(v[0] for v in out.values())
        out = {b: (m * scale, c, i * scale) for b, (m, c, i) in out.items()}
    return out


def compiled_inertials(model) -> dict[int, tuple[float, np.ndarray, np.ndarray]]:
    """The compiled model's own {body id: (mass, centre of mass, 3x3 inertia about it)} in the body frame."""
    out = {}
    for body in range(1, model.nbody):
        rotation = _rotation(model.body_iquat[body])
        out[body] = (float(model.body_mass[body]), np.array(model.body_ipos[body], np.float64),
                     rotation @ np.diag(model.body_inertia[body]) @ rotation.T)
    return out


def legacy_capsule_inertia(physics, domain: str) -> None:
    """Rewrites the masses, centres of mass and inertias of a loaded dm_control suite model (`physics`, of suite
    `domain`) as MuJoCo < 2.1.1 computed them, then recomputes the model's derived constants."""
    import mujoco
    model = physics.model.ptr
    for body, (mass, com, inertia) in body_inertials(model, model_spec(domain), legacy=True).items():
        moments, axes = np.linalg.eigh(inertia)
        if np.linalg.det(axes) < 0:
            axes[:, 0] = -axes[:, 0]
        model.body_mass[body] = mass
        model.body_ipos[body] = com
        model.body_inertia[body] = moments
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, axes.flatten())
        model.body_iquat[body] = quat
    mujoco.mj_setConst(model, physics.data.ptr)
    physics.forward()
