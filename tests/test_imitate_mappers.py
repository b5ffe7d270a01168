"""The training command on environments seen through a mapper: the arm's workspace image and the visual maze."""

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.evaluation import evaluate_policy

from idp_agents import imitate
from idp_agents.checkpoints import load_checkpoint
from idp_agents.policy import PlannerPolicy
from idp_envs.datasets import load_dataset
from rollouts.episodes import ReplayTasks

TINY = "--planner id-convgppn --hidden 8 --k 10 --k-bwd 5 --mapper-epochs 1 --planner-epochs 1 --epochs 1".split()
TINY += ["--no-progress", "--threads", "1"]


def train(tmp_path, *args):
    return imitate.main([*TINY, *args, "--cache-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")])


@pytest.mark.slow
def test_arm_workspace_trains_mapper_then_planner_then_both(tmp_path):
    report = train(tmp_path, "--env", "Arm2DOF-Workspace", "--train", "48", "--val", "8", "--test", "8")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert [h["phase"] for h in state["history"]] == ["mapper", "planner", "joint"]
    assert state["config"]["mapper"] == {"input": "workspace", "shape": [18, 18]}
    # most of a C-space is free, so a mapper trained for two epochs beats 0.5; the test report is the best
    # validation epoch's, which on 8 maps may be the first, after a single mapper epoch
    assert state["history"][-1]["val_map_accuracy"] > 0.5
    assert 0.0 <= report["test"]["map_accuracy"] <= 1.0
    assert report["test"]["starts"] > 0 and report["config"]["topology"] == "torus"

    # the saved policy maps workspace images itself and plays the env through SB3
    policy = PlannerPolicy.load(tmp_path / "run" / "best.pt")
    splits, _ = load_dataset(report["dataset"])
    env = ReplayTasks(gym.make("IDP/Arm2DOF-Workspace-v0"), splits["test"])
    obs, _ = env.reset()
    assert "occupancy" not in obs and obs["workspace"].shape == (96, 96)
    rewards, lengths = evaluate_policy(policy, env, n_eval_episodes=3, return_episode_rewards=True, warn=False)
    assert len(rewards) == 3 and all(length >= 1 for length in lengths)


def test_visual_maze_trains_the_visual_mapper(tmp_path):
    report = train(tmp_path, "--env", "VisualMaze-v0", "--size", "7", "--train", "16", "--val", "4", "--test", "4")
    assert report["config"]["mapper"]["input"] == "views"
    assert 0.0 <= report["test"]["map_accuracy"] <= 1.0
    policy = PlannerPolicy.load(tmp_path / "run" / "best.pt")
    env = gym.make("IDP/VisualMaze-v0", size=7)
    obs, _ = env.reset(seed=0)
    action, _ = policy.predict(obs)
    assert 0 <= int(action) < 4
    assert policy.value_map(obs).shape == (7, 7)


@pytest.mark.slow
def test_policy_refuses_observations_of_another_env(tmp_path):
    train(tmp_path, "--env", "Arm2DOF-Workspace", "--train", "16", "--val", "4", "--test", "4")
    policy = PlannerPolicy.load(tmp_path / "run" / "best.pt")
    obs, _ = gym.make("IDP/GridMaze-15-v0").reset(seed=0)
    with pytest.raises(ValueError, match="workspace"):
        policy.predict(obs)
    goal = np.zeros((18, 18), np.uint8)
    goal[0, 0] = 1  # the goal as every env gives it: a one-hot map
    assert np.isfinite(policy.plan({"workspace": np.zeros((96, 96), np.uint8), "goal": goal, "position": [1, 1]})).all()
    with pytest.raises(ValueError, match="goal must be an"):
        policy.plan({"workspace": np.zeros((96, 96), np.uint8), "goal": [0, 0], "position": [1, 1]})
