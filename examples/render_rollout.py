"""Render a trained planner's episode with its value map as a GIF.

    python examples/render_rollout.py [CHECKPOINT] [OUT.gif]   # default: runs/latest/best.pt (README's main job)
"""

import sys

import gymnasium as gym

import idp_envs  # noqa: F401
from idp_agents.policy import PlannerPolicy
from rollouts.video import caption_frames, record_episode, save_gif

checkpoint = sys.argv[1] if len(sys.argv) > 1 else "runs/latest/best.pt"
out = sys.argv[2] if len(sys.argv) > 2 else "runs/latest/example_rollout.gif"
policy = PlannerPolicy.load(checkpoint)
env = gym.make("IDP/GridMaze-15-v0", render_mode="rgb_array")
frames = record_episode(env, policy, seed=0, overlay=lambda obs: (policy.value_map(obs), None))
reached = tuple(env.unwrapped.position) == env.unwrapped.task.goal
frames = caption_frames(frames, f"{policy.config.get('planner', 'planner')} on GridMaze-15-v0, seed 0", reached)
print(f"{len(frames) - 1} steps; wrote {save_gif(frames, out, fps=5, hold_last_s=2.0)}")
