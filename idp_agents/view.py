"""Draw a map and watch a planner answer: ``python -m idp_agents.view CHECKPOINT`` (or ``--planner NAME --env ID``).

A pygame window shows the map with the planner's value map, its policy as arrows, the cells where it leaves the
optimal actions (outlined), the agent's path, a value key, and status lines (the solve's iterations and residual,
%Success and %Optimal of this map from every start). The picture is `PlanView.frame`, so ``s`` saves exactly what
the window shows.

    mouse: left click toggles a wall, right click moves the goal, shift-click moves the start
    keys:  space steps the agent, r resets it, n draws a new map, [ and ] change the solver's iterations,
           f shows the forward solve iteration by iteration with its residuals, s saves a PNG, q or Esc quits
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

from idp_agents.mappers import make_mapper, mapper_input_key
from idp_agents.plan_view import PlanView
from idp_agents.planners import PLANNERS, make_planner
from idp_agents.policy import PlannerPolicy
from idp_envs import resolve_env_id, size_kwargs
from idp_envs.files import atomic_write

FPS = 30
WATCH_SECONDS = 4.0  # a watched solve plays in about this long, whatever its number of iterations


def save_png(frame: np.ndarray, path: Path) -> Path:
    """Write an RGB frame as a PNG, atomically."""
    from PIL import Image

    with atomic_write(path) as f:
        Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(f, format="PNG")
    return path


class Viewer:
    """Turns pygame events into `PlanView` edits and shows its frames in a window (opened by `open`)."""

    def __init__(self, view: PlanView, shots: Path = Path(".")):
        self.view, self.shots = view, Path(shots)
        self.running = True
        self.saved: list[Path] = []
        self._screen = None

    def open(self) -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame

        pygame.display.init()
        pygame.display.set_caption(f"IDP viewer: {self.view.title}")
        self._screen = pygame.display.set_mode(self.view.frame().shape[1::-1])

    def handle(self, event) -> None:
        """Apply one pygame event to the view."""
        import pygame

        view = self.view
        if event.type == pygame.QUIT:
            self.running = False
        elif event.type == pygame.MOUSEBUTTONDOWN:
            cell = view.cell_at(*event.pos)
            if cell is None:
                return
            shift = bool(pygame.key.get_mods() & pygame.KMOD_SHIFT)
            if event.button == 1:
                (view.move_start if shift else view.toggle_wall)(cell)
            elif event.button == 3:
                view.move_goal(cell)
        elif event.type == pygame.KEYDOWN:
            key = event.key
            if key in (pygame.K_q, pygame.K_ESCAPE):
                self.running = False
            elif key == pygame.K_SPACE:
                view.step()
            elif key == pygame.K_r:
                view.reset()
            elif key == pygame.K_n:
                view.new_map()
            elif key == pygame.K_LEFTBRACKET:
                view.set_iterations(view.iterations - max(1, view.iterations // 5))
            elif key == pygame.K_RIGHTBRACKET:
                view.set_iterations(view.iterations + max(1, view.iterations // 4))
            elif key == pygame.K_f:
                view.watch_solve()
            elif key == pygame.K_s:
                self.save()

    def save(self) -> Path:
        """The current frame as ``view-NNN.png`` in the shots folder (the next free number)."""
        self.shots.mkdir(parents=True, exist_ok=True)
        n = len(list(self.shots.glob("view-*.png")))
        while (path := self.shots / f"view-{n:03d}.png").exists():
            n += 1
        save_png(self.view.frame(), path)
        self.saved.append(path)
        self.view.message = f"saved {path}"
        return path

    def run(self, max_frames: int | None = None) -> None:
        """Show frames and handle events until quit (or for ``max_frames`` frames)."""
        import pygame

        if self._screen is None:
            self.open()
        clock, frames = pygame.time.Clock(), 0
        while self.running and (max_frames is None or frames < max_frames):
            for event in pygame.event.get():
                self.handle(event)
            if self.view.trace is not None:
                self.view.advance(max(1, round(len(self.view.trace.residuals) / (WATCH_SECONDS * FPS))))
            self.show()
            clock.tick(FPS)
            frames += 1

    def show(self) -> None:
        import pygame

        frame = self.view.frame()
        if self._screen.get_size() != frame.shape[1::-1]:
            self._screen = pygame.display.set_mode(frame.shape[1::-1])
        self._screen.blit(pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2))), (0, 0))
        pygame.display.flip()

    def close(self) -> None:
        if self._screen is not None:
            import pygame

            pygame.display.quit()
            self._screen = None


def load_policy(checkpoint: str | None, planner: str | None, env_id: str | None, size: int | None):
    """(policy, env id, env kwargs) from a checkpoint of ``idp_agents.imitate`` or, with ``planner``, an untrained
    planner (and mapper) for ``env_id``."""
    if (checkpoint is None) == (planner is None):
        raise ValueError("give a checkpoint, or --planner NAME (an untrained planner) with --env, not both")
    if checkpoint is not None:
        policy = PlannerPolicy.load(checkpoint)
        run = policy.config.get("run", {})
        env_id = resolve_env_id(env_id) if env_id else policy.config.get("env_id") or run.get("env")
        if env_id is None:
            raise ValueError(f"{checkpoint} does not say which environment it was trained on; pass --env")
        kwargs = size_kwargs(env_id, size if size is not None else run.get("size"))
        return policy, env_id, kwargs
    if env_id is None:
        raise ValueError("--planner needs --env: the environment to plan on")
    env_id = resolve_env_id(env_id)
    kwargs = size_kwargs(env_id, size)
    with gym.make(env_id, **kwargs) as env:
        keys, shape, topology = env.observation_space.keys(), env.unwrapped.shape, env.unwrapped.topology
    input_key = mapper_input_key(keys)
    mapper = make_mapper(input_key, shape) if input_key else None
    return (
        PlannerPolicy(make_planner(planner, topology=topology), mapper=mapper, mapper_input=input_key),
        env_id,
        kwargs,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m idp_agents.view",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", nargs="?", help="a checkpoint of python -m idp_agents.imitate (best.pt, last.pt)")
    p.add_argument("--planner", choices=sorted(PLANNERS), help="an untrained planner instead of a checkpoint")
    p.add_argument("--env", help="environment id (default: the checkpoint's), e.g. GridMaze-15, Arm2DOF-CSpace-18")
    p.add_argument("--size", type=int, help="map size, for ids that take one (GridMaze-v0, VisualMaze-v0)")
    p.add_argument("--seed", type=int, default=0, help="the n-th map drawn (n) is the env's reset with seed + n")
    p.add_argument("--shots", type=Path, default=Path("."), help="folder for the PNGs that s saves")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        policy, env_id, kwargs = load_policy(args.checkpoint, args.planner, args.env, args.size)
        env = gym.make(env_id, render_mode="rgb_array", **kwargs)
        name = args.planner or policy.config.get("planner", "planner")
        viewer = Viewer(PlanView(env, policy, args.seed, f"{env_id}: {name}"), args.shots)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        viewer.run()
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
