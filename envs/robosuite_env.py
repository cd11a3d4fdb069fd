"""robosuite manipulation tasks (Lift, ...) as o2o Gymnasium envs.

The robot's arm runs the requested part controller (``OSC_POSE`` by default) inside
robosuite 1.5's ``BASIC`` composite controller; no renderer, no cameras, and
``hard_reset=False`` (a reset re-uses the compiled model: ~1 ms instead of ~0.2-0.9 s).
The low-dimensional observation dict is flattened, in ``obs_keys`` order, into one
float32 vector named by an :class:`ObsLayout`.

Seeding: robosuite's ``reset()`` takes no seed; its randomness (object placement,
robot joint noise) draws from ``env.rng`` and from each placement sampler's ``rng``.
``reset(seed=s)`` points all of them at the env's Gymnasium ``np_random`` (re-seeded by
``s``), so the same seed gives the same initial state. Some randomness is drawn once,
when the model is built (Lift's cube size); ``hard_reset=False`` keeps that model, so it
is fixed by ``model_seed`` (default 0) instead, which makes a seed reproduce the same
episode in every process, not only within one (checked by tests/envs/test_envs.py).

Reset options (a task per episode, ``collect.tasks``): a task whose placement initializer is one
``UniformRandomSampler`` placing one object (Lift's cube) takes ``<object>_xy`` (metres from the
sampler's reference, the table's centre: where the object's centre goes) and ``<object>_yaw``
(radians about z). They go through robosuite's own placement initializer: for that reset its
ranges are the one point asked for (:meth:`RobosuiteEnv.check_options` checks them: finite, on
the table), so the sampler places the object there as it places it anywhere else.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from o2o.envs.spaces import ObsLayout

# Enough for a policy to solve Lift (object pose relative to the gripper, gripper state,
# arm configuration) without the redundant robosuite "-state" concatenations.
DEFAULT_OBS_KEYS = (
    "robot0_eef_pos",
    "robot0_eef_quat",
    "robot0_gripper_qpos",
    "robot0_gripper_qvel",
    "robot0_joint_pos_cos",
    "robot0_joint_pos_sin",
    "robot0_joint_vel",
    "cube_pos",
    "cube_quat",
    "gripper_to_cube_pos",
)

# robosuite logs these on every import / make; they describe its optional extras and
# config pruning, not a problem with the env we build. Anything else still shows.
_BENIGN_LOG_PREFIXES = (
    "No private macro file found",
    "It is recommended to use a private macro file",
    "To setup, run:",
    "Could not import robosuite_models",
    "Could not load the mink-based whole-body IK",
    "The config has defined for the controller",
)


class _QuietRobosuite(logging.Filter):
    """Drops robosuite's INFO chatter and its known benign warnings; keeps errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if record.levelno < logging.WARNING:
            return False
        return not str(record.getMessage()).startswith(_BENIGN_LOG_PREFIXES)


_LOG_FILTER = _QuietRobosuite()


def _import_robosuite():
    # The filter must sit on robosuite's logger before the first import, which logs.
    logger = logging.getLogger("robosuite_logs")
    if _LOG_FILTER not in logger.filters:
        logger.addFilter(_LOG_FILTER)
    import robosuite

    return robosuite


def _seed_samplers(sampler: Any, rng: np.random.Generator) -> None:
    # Composite samplers hold child samplers, each with its own rng reference.
    if sampler is None:
        return
    if hasattr(sampler, "rng"):
        sampler.rng = rng
    for child in getattr(sampler, "samplers", {}).values():
        _seed_samplers(child, rng)


class RobosuiteEnv(gym.Env):
    """A robosuite env behind the Gymnasium API with a flat float32 observation.

    ``terminated`` is always False (robosuite tasks do not end on their own here);
    truncation is left to the ``TimeLimit`` wrapper that :func:`make` adds.
    ``info["is_success"]`` is the task's ``_check_success()``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        env_id: str,
        horizon: int,
        robots: str | Sequence[str] = "Panda",
        controller: str = "OSC_POSE",
        obs_keys: Sequence[str] = DEFAULT_OBS_KEYS,
        control_freq: float = 20,
        model_seed: int = 0,
        **suite_kwargs: Any,
    ):
        suite = _import_robosuite()
        from robosuite.controllers import load_composite_controller_config, load_part_controller_config

        robot = robots if isinstance(robots, str) else robots[0]
        ctrl_cfg = load_composite_controller_config(controller="BASIC", robot=robot)
        if controller != ctrl_cfg["body_parts"]["right"]["type"]:
            arm = load_part_controller_config(default_controller=controller)
            # Keep the composite's gripper setting: part configs come without one.
            arm["gripper"] = ctrl_cfg["body_parts"]["right"].get("gripper", {"type": "GRIP"})
            for side in ("right", "left"):
                ctrl_cfg["body_parts"][side] = dict(arm)
        if suite_kwargs.get("use_camera_obs"):
            raise ValueError("robosuite envs in o2o are low-dimensional: set use_camera_obs to false")
        params = dict(
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            hard_reset=False,
            ignore_done=True,  # the TimeLimit wrapper truncates; robosuite would refuse to step on
            reward_shaping=True,
        )
        params.update(suite_kwargs)
        self._env = suite.make(
            env_id,
            robots=robots,
            controller_configs=ctrl_cfg,
            control_freq=control_freq,
            horizon=int(horizon),
            seed=int(model_seed),
            **params,
        )
        self._rng_linked = False
        self.env_id = env_id
        self.control_freq = float(control_freq)
        self.dt = 1.0 / self.control_freq
        self.controller_type = controller

        spec = self._env.observation_spec()
        missing = [k for k in obs_keys if k not in spec]
        if missing:
            raise ValueError(f"robosuite {env_id}: observation keys {missing} not produced; available: {sorted(spec)}")
        self.obs_layout = ObsLayout([(k, np.shape(spec[k])) for k in obs_keys])
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(self.obs_layout.dim,), dtype=np.float32)
        low, high = self._env.action_spec
        self.action_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)

    @property
    def sim_env(self):
        """The underlying robosuite env (for task-specific access)."""
        return self._env

    def _success(self) -> bool:
        return bool(self._env._check_success())

    def _placement(self) -> tuple[Any, str] | None:
        """The placement sampler and the name of the one object it places, when options can set it."""
        from robosuite.utils.placement_samplers import UniformRandomSampler

        sampler = getattr(self._env, "placement_initializer", None)
        if type(sampler) is not UniformRandomSampler or len(sampler.mujoco_objects) != 1:
            return None
        return sampler, str(sampler.mujoco_objects[0].name)

    def check_options(self, options: Any, where: str = "reset options") -> dict[str, Any]:
        """``options`` as ``reset`` takes them (``{"cube_xy": [dx, dy], "cube_yaw": rad}`` for Lift), in
        plain form, or a ValueError naming ``where`` and the key."""
        placement = self._placement()
        if placement is None:
            raise ValueError(
                f"{where}: robosuite {self.env_id} takes no reset options (only a task whose placement "
                "initializer places one object, such as Lift, does)"
            )
        sampler, name = placement
        keys = {f"{name}_xy", f"{name}_yaw"}
        if not isinstance(options, dict):
            raise ValueError(f"{where}: reset options must be a mapping of {sorted(keys)}, got {options!r}")
        table = getattr(self._env, "table_full_size", None)
        if table is None:
            raise ValueError(f"{where}: robosuite {self.env_id} has no table_full_size to check a placement against")
        reach = min(float(table[0]), float(table[1])) / 2.0 - float(sampler.mujoco_objects[0].horizontal_radius)
        out: dict[str, Any] = {}
        for key, value in options.items():
            if key not in keys:
                raise ValueError(f"{where}: unknown reset option {key!r}; robosuite {self.env_id} takes {sorted(keys)}")
            numbers = value if key.endswith("_xy") else [value]
            if (
                isinstance(numbers, (str, bytes, dict))
                or not isinstance(numbers, Sequence)
                or len(numbers) != (2 if key.endswith("_xy") else 1)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)
                or not np.isfinite(np.asarray(numbers, float)).all()
            ):
                want = "[dx, dy] in metres" if key.endswith("_xy") else "an angle in radians"
                raise ValueError(f"{where}: {key} must be {want} (finite numbers), got {value!r}")
            if key.endswith("_xy"):
                if max(abs(float(v)) for v in numbers) > reach:
                    raise ValueError(
                        f"{where}: {key} {list(numbers)} is off the table: each coordinate within +-{reach:.3f} m "
                        f"of its centre"
                    )
                out[key] = [float(v) for v in numbers]
            else:
                out[key] = float(value)
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._rng_linked:
            # Gymnasium re-created np_random (from the seed, or from entropy on a first
            # unseeded reset): robosuite draws from it from now on.
            self._env.rng = self.np_random
            _seed_samplers(getattr(self._env, "placement_initializer", None), self.np_random)
            self._rng_linked = True
        if not options:
            obs = self._env.reset()
            return self.obs_layout.flatten(obs), {"is_success": self._success()}
        options = self.check_options(options)
        sampler, name = self._placement()  # type: ignore[misc]  # check_options made sure there is one
        saved = (sampler.x_range, sampler.y_range, sampler.rotation, sampler.ensure_object_boundary_in_range)
        if f"{name}_xy" in options:  # a range of one point: the sampler draws exactly it
            x, y = options[f"{name}_xy"]
            sampler.x_range, sampler.y_range = [x, x], [y, y]
            sampler.ensure_object_boundary_in_range = False
        if f"{name}_yaw" in options:
            sampler.rotation = options[f"{name}_yaw"]
        try:
            obs = self._env.reset()
        finally:
            sampler.x_range, sampler.y_range, sampler.rotation, sampler.ensure_object_boundary_in_range = saved
        return self.obs_layout.flatten(obs), {"is_success": self._success()}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)
        obs, reward, _done, info = self._env.step(action)
        info = dict(info)
        info["is_success"] = self._success()
        return self.obs_layout.flatten(obs), float(reward), False, False, info

    # -- replaying recorded demonstrations (robosuite's demo.hdf5: model XML + MuJoCo states) --
    def load_model_xml(self, xml: str) -> None:
        """Rebuild the simulation from a model XML recorded with a demonstration.

        The XML holds absolute mesh paths of the machine that recorded it; robosuite's own
        ``edit_model_xml`` re-roots them into this installation, as its playback script does.
        """
        self._env.reset_from_xml_string(self._env.edit_model_xml(xml))
        self._env.sim.reset()

    def set_sim_state(self, state: np.ndarray) -> np.ndarray:
        """Set the flattened MuJoCo state (time, qpos, qvel...); returns the observation there."""
        state = np.asarray(state, dtype=np.float64)
        size = self.sim_state().shape[0]
        if state.shape != (size,):
            raise ValueError(f"robosuite {self.env_id}: state of shape {state.shape}, this model's is ({size},)")
        self._env.sim.set_state_from_flattened(state)
        self._env.sim.forward()
        return self.obs_layout.flatten(self._env._get_observations(force_update=True))

    def sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state, as robosuite's DataCollectionWrapper records it."""
        return np.asarray(self._env.sim.get_state().flatten())

    @property
    def controller_config(self) -> dict:
        """The composite controller config of the (first) robot: what an action means."""
        return self._env.robots[0].composite_controller_config

    @property
    def robot_names(self) -> list[str]:
        """Robot model names (``Panda``...)."""
        return [type(r.robot_model).__name__ for r in self._env.robots]

    def close(self):
        self._env.close()


def make(env_id: str, max_episode_steps: int, **kwargs: Any) -> gym.Env:
    """A robosuite task by id (``Lift``...), horizon = ``max_episode_steps``, under a TimeLimit.

    ``kwargs``: ``robots``, ``controller`` (arm part controller type), ``obs_keys``,
    ``control_freq`` and any other ``robosuite.make`` argument (``reward_shaping``...).
    """
    env = RobosuiteEnv(env_id, horizon=int(max_episode_steps), **kwargs)
    return gym.wrappers.TimeLimit(env, max_episode_steps=int(max_episode_steps))
