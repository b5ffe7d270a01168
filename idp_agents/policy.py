"""PlannerPolicy: a trained planner (and mapper) as a policy, with Stable-Baselines3's ``predict`` signature."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch

from idp_agents.checkpoints import CheckpointError, load_checkpoint
from idp_agents.mappers import make_mapper
from idp_agents.planner_input import mapped_planner_maps, planner_maps
from idp_agents.planners import PLANNERS, Planner, make_planner, step_hyperparameters
from idp_envs import grid


def batched_observation(obs: dict) -> tuple[dict, bool]:
    """The observation with a leading batch axis, and whether it had one (told by ``position``: (2,) or (n, 2))."""
    position = np.asarray(obs["position"])
    if position.shape == (2,):
        return {k: np.asarray(v)[None] for k, v in obs.items()}, False
    if position.ndim != 2 or position.shape[1] != 2:
        raise ValueError(f"observation position must have shape (2,) or (n, 2), got {position.shape}")
    return {k: np.asarray(v) for k, v in obs.items()}, True


def goal_cells(goal: np.ndarray) -> np.ndarray:
    """(n, 2) goal cells from (n, H, W) one-hot goal maps (a batched observation's), the goal every IDP env
    observes."""
    if goal.ndim != 3:
        raise ValueError(f"goal must be an (H, W) one-hot map or (n, H, W) maps, got shape {goal.shape}")
    if (goal.reshape(len(goal), -1) != 0).sum(axis=1).min(initial=1) == 0:
        raise ValueError("a goal map has no goal (all zeros); it needs exactly one nonzero cell")
    return grid.goal_cells(goal)


# Step defaults before value filters were bounded (checkpoints from then record only the hyperparameters set).
LEGACY_STEP_DEFAULTS = {"kernel": 3, "discount": None, "contraction": None}


def legacy_planner_kwargs(config: dict, model_state: dict | None = None) -> dict:
    """A checkpoint's planner settings; one written before imitate recorded every resolved setting (it has no
    ``discount`` or ``contraction`` key) gets the step defaults of its time, not today's.

    Such a checkpoint comes from before bounded value filters (3x3 kernels, unbounded) or from the few commits
    that had them without recording them (today's 5x5 kernels and discount); given its ``model_state``, the weights'
    shapes tell which."""
    kwargs = dict(config["planner_kwargs"])
    accepted = step_hyperparameters(PLANNERS[config["planner"]].step)
    if "jac_reg_weight" in kwargs:  # resolved settings, recorded before some of today's: those were off
        kwargs.setdefault("jac_reg_unconverged", None)
        kwargs.setdefault("spectral_reg_weight", 0.0)
        kwargs.setdefault("spectral_reg_unconverged", None)
        kwargs.setdefault("drop_unconverged", False)
        kwargs.setdefault("k_fwd_stragglers", 0)  # no continuation before it existed
        kwargs.setdefault("solver_stragglers", "anderson")  # the forward solver continued them before it had a choice
    if "cell" in accepted:
        kwargs.setdefault("cell", "gru")  # ConvGPPN had only the GRU cell before it had a choice
    if "discount" in kwargs or "contraction" in kwargs:
        return kwargs
    legacy = {**{k: v for k, v in LEGACY_STEP_DEFAULTS.items() if k in accepted}, **kwargs}
    if model_state is None or _weights_fit(config, legacy, model_state):
        return legacy
    return kwargs


def _weights_fit(config: dict, kwargs: dict, model_state: dict) -> bool:
    """Whether the planner these settings build has parameters of the shapes in ``model_state``."""
    shapes = {
        k: v.shape
        for k, v in make_planner(config["planner"], topology=config["topology"], **kwargs).state_dict().items()
    }
    return shapes == {k: v.shape for k, v in model_state.items()}


class PlannerPolicy:
    """Plan on the observed map (or on the map a mapper makes of the observation), then act at the agent's cell.

    The plan of an observed (map, goal) pair is cached, so an episode runs the planner once, not once per step;
    the cache empties itself when the weights change. ``predict`` follows SB3: batched observations in, batched
    actions out, a single observation gives a single action; ``deterministic=True`` takes the argmax, otherwise an
    action is sampled from the softmax with the policy's own generator ``rng`` (a seed, 0 by default, or a numpy
    Generator; SB3's evaluate_policy asks for deterministic actions by default).
    """

    def __init__(
        self,
        planner: Planner,
        device: str | torch.device = "cpu",
        mapper: torch.nn.Module | None = None,
        mapper_input: str | None = None,
        cache_size: int = 256,
        rng: np.random.Generator | int = 0,
    ):
        if (mapper is None) != (mapper_input is None):
            raise ValueError("a mapper needs the observation key it reads (mapper_input), and vice versa")
        self.device = torch.device(device)
        self.planner = planner.to(self.device).eval()
        self.mapper = mapper.to(self.device).eval() if mapper is not None else None
        self.mapper_input = mapper_input
        if cache_size < 0:
            raise ValueError(f"cache_size must be non-negative, got {cache_size}")
        self.cache_size = cache_size
        self._weights_version: tuple = ()
        self._cache: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.config: dict = {}
        self.rng = np.random.default_rng(rng)

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu", rng: np.random.Generator | int = 0) -> PlannerPolicy:
        """Rebuild the planner (and mapper) a checkpoint of ``python -m idp_agents.imitate`` describes."""
        payload = load_checkpoint(path, map_location=device)
        try:
            config = payload["config"]
            kwargs = legacy_planner_kwargs(config, payload["model"])
            planner = make_planner(config["planner"], topology=config["topology"], **kwargs)
            planner.load_state_dict(payload["model"])
            mapper, mapper_input = None, None
            if config.get("mapper"):
                mapper_input = config["mapper"]["input"]
                mapper = make_mapper(mapper_input, tuple(config["mapper"]["shape"]))
                mapper.load_state_dict(payload["mapper"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: its weights do not fit the planner its config describes ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}); was it written by another version of this library?"
            ) from exc
        policy = cls(planner, device, mapper, mapper_input, rng=rng)
        policy.config = config
        return policy

    def planner_maps(self, obs: dict) -> torch.Tensor:
        """(n, 2, H, W) planner input for a batched observation (`batched_observation`): the observed map, or the
        map the mapper makes of the observation."""
        goal = np.asarray(obs["goal"])
        if self.mapper is None:
            occupancy = np.asarray(obs["occupancy"])
            if occupancy.ndim != 3 or goal.shape != occupancy.shape:
                raise ValueError(
                    f"occupancy and goal must both be (H, W) or (n, H, W) maps, got {occupancy.shape}, {goal.shape}"
                )
            cells = goal_cells(goal)  # a goal map with no goal, or two, has nothing to plan towards
            return planner_maps(torch.from_numpy(occupancy).to(self.device), torch.from_numpy(cells))
        logits = self.mapper(torch.from_numpy(np.ascontiguousarray(obs[self.mapper_input])).to(self.device))
        return mapped_planner_maps(logits, torch.from_numpy(goal_cells(goal)))

    def _planned(self, obs: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        """(logits (4, H, W), value (H, W)) per item of a batched observation, planning only what is not cached."""
        source = "occupancy" if self.mapper is None else self.mapper_input
        if source not in obs:
            raise ValueError(f"observation has no {source!r} (keys: {sorted(obs)}); is this the policy's environment?")
        inputs, goal = np.asarray(obs[source]), np.asarray(obs["goal"])
        keys = [
            hashlib.blake2b(x.tobytes() + g.tobytes() + str(x.shape).encode(), digest_size=16).digest()
            for x, g in zip(inputs, goal, strict=True)
        ]
        modules = [self.planner] + ([self.mapper] if self.mapper is not None else [])
        version = tuple(p._version for m in modules for p in m.parameters())
        if version != self._weights_version:
            self._cache.clear()
            self._weights_version = version
        plans = {k: self._cache[k] for k in keys if k in self._cache}
        missing = [i for i, k in enumerate(keys) if k not in plans]
        if missing:
            with torch.inference_mode():
                out = self.planner(self.planner_maps({k: np.asarray(v)[missing] for k, v in obs.items()}))
            logits, value = out.logits.float().cpu().numpy(), out.value.float().cpu().numpy()
            for j, i in enumerate(missing):
                plans[keys[i]] = (logits[j], value[j])
        for k in keys:
            self._cache[k] = plans[k]
            self._cache.move_to_end(k)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return [plans[k] for k in keys]

    def plan(self, observation) -> np.ndarray:
        """Action logits (4, H, W) for an observation, or (n, 4, H, W) for a batch."""
        obs, batched = batched_observation(observation)
        logits = np.stack([logits for logits, _ in self._planned(obs)])
        return logits if batched else logits[0]

    def value_map(self, observation) -> np.ndarray:
        """The planner's value map for an observation: (H, W), or (n, H, W) for a batch."""
        obs, batched = batched_observation(observation)
        values = np.stack([value for _, value in self._planned(obs)])
        return values if batched else values[0]

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        obs, batched = batched_observation(observation)
        position = obs["position"]
        if not np.issubdtype(position.dtype, np.integer):
            raise ValueError(f"position must be integer cells (row, col), got {position.dtype} {position.tolist()}")
        logits = np.stack([logits for logits, _ in self._planned(obs)])
        if ((position < 0) | (position >= np.array(logits.shape[-2:]))).any():
            raise ValueError(f"position outside the {logits.shape[-2]}x{logits.shape[-1]} map: {position.tolist()}")
        scores = logits[np.arange(len(logits)), :, position[:, 0], position[:, 1]]  # (n, 4)
        if deterministic:
            actions = scores.argmax(axis=1)
        else:
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            actions = (p.cumsum(axis=1) < self.rng.random((len(p), 1))).sum(axis=1).clip(0, 3)
        return (actions if batched else actions[0]), state
