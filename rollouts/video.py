"""Render an episode to frames and save them as a GIF."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from idp_envs import render
from idp_envs.files import atomic_write
from idp_envs.tasks import TaskBatch
from rollouts.episodes import ReplayTasks
from rollouts.metrics import hitting_times


def record_episode(env, policy, seed: int | None = None, overlay: Callable | None = None, options=None) -> list:
    """Play one episode with ``policy.predict`` in an env made with ``render_mode="rgb_array"``; return its frames.

    ``overlay(obs) -> (value (H, W) or None, policy (H, W) or (4, H, W) or None)`` is drawn on every frame
    through the env's ``set_overlay``, e.g. a planner's value map.
    """
    obs, _ = env.reset(seed=seed, options=options)
    inner = env.unwrapped
    if overlay is not None:
        inner.set_overlay(*overlay(obs))
    frames, done = [env.render()], False
    while not done:
        action, _ = policy.predict(obs, deterministic=True)
        obs, _, terminated, truncated, _ = env.step(int(np.asarray(action).reshape(-1)[0]))
        frames.append(env.render())
        done = terminated or truncated
    return frames


def save_gif(frames: list[np.ndarray], path: str | Path, fps: int = 8, hold_last_s: float = 0.0) -> Path:
    """Write frames as a looping GIF, atomically; the last frame stays ``hold_last_s`` seconds longer."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to save")
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    durations = [int(1000 / fps)] * len(images)
    durations[-1] += int(1000 * hold_last_s)
    path = Path(path)
    with atomic_write(path) as f:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


def detours(tasks: TaskBatch) -> np.ndarray:
    """(N,) steps each task's shortest path spends going around walls: its length minus the grid distance from
    start to goal on an empty map (wrapping on a torus)."""
    length = tasks.distances[np.arange(len(tasks)), tasks.start[:, 0], tasks.start[:, 1]].astype(np.int64)
    delta = np.abs(tasks.start - tasks.goal)
    if tasks.topology == "torus":
        delta = np.minimum(delta, np.array(tasks.occupancy.shape[1:]) - delta)
    return length - delta.sum(axis=1)


def showcase_order(tasks: TaskBatch) -> np.ndarray:
    """Task indices, those where planning matters most first: by `detours`, then by path length. A nearly empty
    map crossed in a few steps comes last."""
    length = tasks.distances[np.arange(len(tasks)), tasks.start[:, 0], tasks.start[:, 1]]
    return np.lexsort((-length, -detours(tasks)))


HEADER, FOOTER = 62, 40  # pixels above a frame (title, step, note) and below it (the key)


def caption_frames(frames: list[np.ndarray], title: str, reached: bool, note: str = "", value: bool = True) -> list:
    """The frames of an episode with a band above (``title``; the step and, on the last frame, whether the goal
    was ``reached``; ``note``) and a key below: the value shading from low to high, the goal, the agent, its path."""
    from PIL import Image, ImageDraw

    h, w = np.asarray(frames[0]).shape[:2]
    width = max(w, 400)
    font, small = render.font(15), render.font(12)
    steps = len(frames) - 1
    out = []
    for t, frame in enumerate(frames):
        canvas = Image.new("RGB", (width, HEADER + h + FOOTER), (255, 255, 255))
        canvas.paste(Image.fromarray(np.asarray(frame, dtype=np.uint8)), ((width - w) // 2, HEADER))
        draw = ImageDraw.Draw(canvas)
        draw.text((6, 4), title, fill=(0, 0, 0), font=font)
        status = f"step {t}/{steps}"
        if t == steps:
            status += ": reached the goal" if reached else ": did not reach the goal"
        draw.text((6, 24), status, fill=(60, 60, 60), font=small)
        draw.text((6, 41), note, fill=(60, 60, 60), font=small)
        x, y = 6, HEADER + h + 8
        if value:
            colors = render.value_ramp(np.linspace(0, 1, 80))[None]
            canvas.paste(Image.fromarray(np.repeat(colors, 12, axis=0)), (x + 40, y + 2))
            draw.text((x, y), "value", fill=(0, 0, 0), font=small)
            draw.text((x + 124, y), "high", fill=(0, 0, 0), font=small)
            draw.text((x + 40, y + 15), "low", fill=(0, 0, 0), font=small)
            x += 170
        for name, color in (("goal", render.GOAL), ("agent", render.AGENT), ("path", render.PATH)):
            draw.ellipse((x, y + 2, x + 11, y + 13), fill=tuple(int(c) for c in color))
            draw.text((x + 15, y), name, fill=(0, 0, 0), font=small)
            x += 62
        out.append(np.asarray(canvas))
    return out


def showcase_gif(make_env, policy, tasks: TaskBatch, title: str, path: str | Path, tries: int = 64) -> Path:
    """Save a captioned GIF (`caption_frames`) of ``policy`` (a `PlannerPolicy`: ``plan``, ``predict``,
    ``value_map``) on a task where planning matters: the first it solves of the ``tries`` first tasks of
    `showcase_order`, or the first when it solves none of them; 5 frames a second, the last held 2 s.
    ``make_env(**kwargs)`` makes the tasks' environment (``render_mode`` is passed for the recorded episode)."""
    candidates = showcase_order(tasks)[:tries]
    sub = tasks.subset(candidates)
    with make_env() as env:  # the argmax policy from each start, all tasks at once
        replay = ReplayTasks(env, sub)
        observations = [replay.reset()[0] for _ in candidates]
        max_steps = env.unwrapped.max_steps
    logits = policy.plan({k: np.stack([o[k] for o in observations]) for k in observations[0]})
    occupancy, goal = torch.from_numpy(sub.occupancy), torch.from_numpy(sub.goal)
    times = hitting_times(torch.from_numpy(logits.argmax(1)), occupancy, goal, sub.topology, max_steps)
    solved = (times[torch.arange(len(sub)), sub.start[:, 0], sub.start[:, 1]] >= 0).numpy()
    rank = int(np.argmax(solved)) if solved.any() else 0
    i = int(candidates[rank])
    with make_env(render_mode="rgb_array") as env:
        frames = record_episode(
            ReplayTasks(env, tasks.subset([i])), policy, overlay=lambda obs: (policy.value_map(obs), None)
        )
    shortest = int(tasks.distances[i, tasks.start[i, 0], tasks.start[i, 1]])
    note = f"test task {i}, shortest path {shortest} (+{int(detours(tasks)[i])} around walls)"
    note += f"; fails {rank} with longer detours" if rank else ""
    return save_gif(caption_frames(frames, title, bool(solved[rank]), note), path, fps=5, hold_last_s=2.0)
