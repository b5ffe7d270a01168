"""The planner input has one owner: a dataset's tasks, an env's observation and a mapper's map give the same maps."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import idp_envs  # noqa: F401  (registers the envs)
from idp_agents.planner_input import mapped_planner_maps, planner_maps, task_tensors
from idp_agents.planners import make_planner
from idp_agents.policy import PlannerPolicy
from idp_envs.tasks import sample_maze_tasks


def test_tasks_and_observations_give_the_same_planner_input():
    tasks = sample_maze_tasks(3, 9, np.random.default_rng(0))
    maps = task_tensors(tasks)["maps"]
    assert maps.shape == (3, 2, 9, 9) and maps.dtype == torch.float32
    assert torch.equal(maps[:, 0], torch.from_numpy(tasks.occupancy).float())
    assert maps[:, 1].sum() == 3 and all(maps[i, 1, r, c] == 1 for i, (r, c) in enumerate(tasks.goal))
    policy = PlannerPolicy(make_planner("vin", l_h=4, l_q=4, k_fwd=3))
    env = gym.make("IDP/GridMaze-v0", size=9).unwrapped
    for i in range(3):
        obs, _ = env.reset(options={"task": tasks.task(i)})
        observed = policy.planner_maps({k: v[None] for k, v in obs.items()})
        assert torch.equal(observed, maps[i : i + 1])


def test_mapped_maps_carry_the_mappers_gradient_and_bad_goals_are_named():
    logits = torch.zeros(2, 5, 5, requires_grad=True)
    maps = mapped_planner_maps(logits, torch.tensor([[0, 0], [4, 3]]))
    assert torch.allclose(maps[:, 0], torch.full((2, 5, 5), 0.5))
    maps[:, 0].sum().backward()
    assert torch.allclose(logits.grad, torch.full((2, 5, 5), 0.25))
    with pytest.raises(ValueError, match="outside the 5x5 map"):
        planner_maps(torch.zeros(2, 5, 5), torch.tensor([[0, 0], [5, 0]]))
    with pytest.raises(ValueError, match=r"goal must have shape \(2, 2\)"):
        planner_maps(torch.zeros(2, 5, 5), torch.tensor([0, 0]))
