"""Score a trained planner with Stable-Baselines3's evaluate_policy on IDP/GridMaze-15-v0.

    python -m idp_agents.imitate --env GridMaze-15 --planner id-vin --epochs 10 --threads 1   # README's main job
    python examples/evaluate_with_sb3.py [CHECKPOINT]       # default: runs/latest/best.pt, what that job writes
"""

import sys

import gymnasium as gym
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

import idp_envs  # noqa: F401  (registers the IDP ids)
from idp_agents.policy import PlannerPolicy

checkpoint = sys.argv[1] if len(sys.argv) > 1 else "runs/latest/best.pt"
policy = PlannerPolicy.load(checkpoint)
env = Monitor(gym.make("IDP/GridMaze-15-v0"))
rewards, lengths = evaluate_policy(policy, env, n_eval_episodes=50, return_episode_rewards=True)
successes = sum(r > 0 for r in rewards)  # +1 at the goal, -0.01 per other step: positive only on arrival
print(f"success {successes}/50 episodes, mean length {sum(lengths) / len(lengths):.1f} steps")
