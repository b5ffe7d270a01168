"""Closed-loop episodes through Gymnasium environments, for any object with an SB3-style ``predict``."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from idp_envs.tasks import TaskBatch


class ReplayTasks(gym.Wrapper):
    """Play the tasks of a `TaskBatch` in order, one per ``reset()``, cycling; lets any evaluator (SB3's
    ``evaluate_policy`` included) score a policy on exactly the tasks of a dataset split."""

    def __init__(self, env: gym.Env, tasks: TaskBatch):
        super().__init__(env)
        if len(tasks) == 0:
            raise ValueError("ReplayTasks needs at least one task")
        self.tasks = tasks
        self.index = 0

    def reset(self, *, seed=None, options=None):
        options = dict(options or {})
        options.setdefault("task", self.tasks.task(self.index % len(self.tasks)))
        self.index += 1
        return self.env.reset(seed=seed, options=options)


@dataclass
class EpisodeStats:
    """Per-episode outcomes and their summary."""

    successes: np.ndarray  # (E,) bool: reached the goal before truncation
    lengths: np.ndarray  # (E,) steps taken
    distances: np.ndarray  # (E,) BFS distance from the start

    @property
    def success_rate(self) -> float:
        return float(self.successes.mean())

    @property
    def optimal_rate(self) -> float:
        return float((self.successes & (self.lengths == self.distances)).mean())

    def __str__(self) -> str:
        return (
            f"success {100 * self.success_rate:.1f}%  optimal {100 * self.optimal_rate:.1f}%  "
            f"mean length {self.lengths.mean():.1f} over {len(self.lengths)} episodes"
        )


def run_episodes(env: gym.Env | gym.vector.VectorEnv, policy, n_episodes: int, seed: int | None = None) -> EpisodeStats:
    """Play ``n_episodes`` with ``policy.predict(obs, deterministic=True)``, in one env or a vector env."""
    if isinstance(env, gym.vector.VectorEnv):
        return _run_vector(env, policy, n_episodes, seed)
    successes, lengths, distances = [], [], []
    for i in range(n_episodes):
        obs, info = env.reset(seed=None if seed is None else seed + i)
        start_distance, steps, done, terminated = info["distance"], 0, False, False
        while not done:
            action, _ = policy.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = env.step(int(np.asarray(action).reshape(-1)[0]))
            steps += 1
            done = terminated or truncated
        successes.append(terminated)
        lengths.append(steps)
        distances.append(start_distance)
    return EpisodeStats(np.array(successes), np.array(lengths), np.array(distances))


def _run_vector(env: gym.vector.VectorEnv, policy, n_episodes: int, seed: int | None) -> EpisodeStats:
    """Vector envs autoreset on the step after an episode ends (Gymnasium's default): that step is not counted.

    Each sub-env contributes a fixed share of the episodes (as SB3's evaluate_policy does), so that short
    episodes, which end first, are not over-represented.
    """
    if env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP) != gym.vector.AutoresetMode.NEXT_STEP:
        raise ValueError("run_episodes supports vector envs with the default NEXT_STEP autoreset mode")
    obs, info = env.reset(seed=seed)
    n = env.num_envs
    start_distance = np.array(info["distance"])
    steps = np.zeros(n, dtype=int)
    resetting = np.zeros(n, dtype=bool)
    targets = np.array([(n_episodes + i) // n for i in range(n)])
    counts = np.zeros(n, dtype=int)
    successes, lengths, distances = [], [], []
    while (counts < targets).any():
        actions, _ = policy.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(np.asarray(actions))
        new_start = resetting.copy()
        steps[~resetting] += 1
        ended = (terminated | truncated) & ~resetting
        for i in np.flatnonzero(ended):
            if counts[i] < targets[i]:
                counts[i] += 1
                successes.append(bool(terminated[i]))
                lengths.append(int(steps[i]))
                distances.append(int(start_distance[i]))
        start_distance[new_start] = np.asarray(info["distance"])[new_start]
        steps[new_start] = 0
        resetting = ended
    return EpisodeStats(np.array(successes), np.array(lengths), np.array(distances))
