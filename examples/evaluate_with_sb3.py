"""Score a trained planner with Stable-Baselines3's evaluate_policy on IDP/GridMaze-15-v0.

    python examples/train_gridmaze.py          # writes runs/example_gridmaze/best.pt
    python examples/evaluate_with_sb3.py [CHECKPOINT]
"""

import sys

import gymnasium as gym
from stable_baselines3.common.evaluation import evaluate_policy

import idp_envs  # noqa: F401  (registers the IDP ids)
from idp_agents.policy import PlannerPolicy

checkpoint = sys.argv[1] if len(sys.argv) > 1 else "runs/example_gridmaze/best.pt"
policy = PlannerPolicy.load(checkpoint)
env = gym.make("IDP/GridMaze-15-v0")
rewards, lengths = evaluate_policy(policy, env, n_eval_episodes=50, return_episode_rewards=True)
successes = sum(r > 0 for r in rewards)  # +1 at the goal, -0.01 per other step: positive only on arrival
print(f"success {successes}/50 episodes, mean length {sum(lengths) / len(lengths):.1f} steps")
