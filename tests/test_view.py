"""The interactive viewer, driven headless (SDL's dummy video driver, set in conftest) by synthetic pygame events."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pygame
import pytest
from PIL import Image

import idp_envs
from idp_agents.plan_view import PlanView
from idp_agents.planners import make_planner
from idp_agents.planners.vin import set_value_iteration
from idp_agents.policy import PlannerPolicy
from idp_agents.view import Viewer, load_policy, main
from idp_envs.tasks import PlanningTask

# A 9x9 map walled around (as mazes are), with a wall across the middle and a single gap at (4, 6): closing the gap
# cuts the goal off.
CORRIDOR = np.zeros((9, 9), dtype=np.uint8)
CORRIDOR[[0, -1], :] = CORRIDOR[:, [0, -1]] = 1
CORRIDOR[4, :6] = CORRIDOR[4, 7] = 1


def value_iteration_policy(topology: str = "plane") -> PlannerPolicy:
    """An implicit VIN set to exact value iteration: its value peaks at the goal and its policy is optimal."""
    planner = make_planner("id-vin", topology=topology, l_h=2, l_q=5, k_fwd=300)
    set_value_iteration(planner.step)
    return PlannerPolicy(planner)


@pytest.fixture
def viewer(tmp_path):
    env = gym.make("IDP/GridMaze-v0", size=9, render_mode="rgb_array")
    view = PlanView(env, value_iteration_policy(), seed=0, title="test")
    view.play(PlanningTask(CORRIDOR, goal=(7, 1), start=(1, 1)))
    viewer = Viewer(view, shots=tmp_path)
    viewer.open()  # a window on SDL's dummy driver: events and key modifiers as in a real one
    yield viewer
    viewer.close()
    env.close()


def centre(view: PlanView, cell: tuple[int, int]) -> tuple[int, int]:
    """The frame pixel (x, y) at the centre of a grid cell."""
    top, left, px = view.inner.grid_panel()
    return left + cell[1] * px + px // 2, top + cell[0] * px + px // 2


def click(viewer: Viewer, cell: tuple[int, int], button: int = 1, shift: bool = False) -> None:
    pygame.key.set_mods(pygame.KMOD_LSHIFT if shift else pygame.KMOD_NONE)
    try:
        viewer.handle(pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=button, pos=centre(viewer.view, cell)))
    finally:
        pygame.key.set_mods(pygame.KMOD_NONE)


def press(viewer: Viewer, key: int) -> None:
    viewer.handle(pygame.event.Event(pygame.KEYDOWN, key=key, mod=pygame.KMOD_NONE, unicode=""))


def free_peak(view: PlanView) -> tuple[int, int]:
    value = np.where(view.task.occupancy == 0, view.plan.value, -np.inf)
    return tuple(int(i) for i in np.unravel_index(value.argmax(), value.shape))


def test_the_value_iteration_planner_plans_optimally(viewer):
    view = viewer.view
    assert view.plan.metrics.success == 1.0 and view.plan.metrics.optimal == 1.0
    assert not view.plan.wrong.any() and view.plan.converged
    assert free_peak(view) == (7, 1)


def test_a_click_toggles_a_wall_and_the_plan_follows(viewer):
    view = viewer.view
    before = view.plan.value.copy()
    click(viewer, (6, 3))
    assert view.task.occupancy[6, 3] == 1 and "wall added" in view.message
    assert view.plan.value[6, 3] < before[6, 3] and not np.allclose(view.plan.value, before)
    assert view.plan.metrics.optimal == 1.0  # replanned around the new wall
    click(viewer, (6, 3))
    assert view.task.occupancy[6, 3] == 0
    np.testing.assert_allclose(view.plan.value, before, atol=1e-4)


def test_a_right_click_moves_the_goal_and_the_value_peak(viewer):
    view = viewer.view
    click(viewer, (7, 7), button=3)
    assert view.task.goal == (7, 7) and free_peak(view) == (7, 7)
    assert view.plan.metrics.optimal == 1.0


def test_a_shift_click_moves_the_start_and_the_agent(viewer):
    view = viewer.view
    click(viewer, (2, 5), shift=True)
    assert view.task.start == (2, 5) and view.position == (2, 5)


def test_space_steps_the_agent_along_the_policy_to_the_goal(viewer):
    view = viewer.view
    distances = view.task.distances()
    r, c = view.position
    action = int(view.plan.logits[:, r, c].argmax())
    press(viewer, pygame.K_SPACE)
    dr, dc = ((-1, 0), (0, -1), (1, 0), (0, 1))[action]
    assert view.position == (r + dr, c + dc)
    assert distances[view.position] == distances[r, c] - 1
    for _ in range(int(distances[view.position])):
        press(viewer, pygame.K_SPACE)
    assert view.position == view.task.goal and "reached the goal" in view.message
    press(viewer, pygame.K_r)
    assert view.position == view.task.start


def test_s_saves_a_png_identical_to_the_frame_whose_map_is_the_envs_rgb_array(viewer, tmp_path):
    view = viewer.view
    click(viewer, (6, 3))
    press(viewer, pygame.K_SPACE)
    shown = view.frame()
    press(viewer, pygame.K_s)
    (path,) = viewer.saved
    assert path.parent == tmp_path and path.suffix == ".png" and str(path) in view.message
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), shown)
    # the map panel is the rgb_array frame of an env in the same state, drawn by the env itself
    with gym.make("IDP/GridMaze-v0", size=9, render_mode="rgb_array") as env:
        env.reset(options={"task": view.task})
        env.step(int(view.plan.logits[:, 1, 1].argmax()))
        env.unwrapped.set_overlay(view.plan.value, view.plan.logits, view.plan.wrong)
        expected = env.render()
    np.testing.assert_array_equal(shown[: expected.shape[0], : expected.shape[1]], expected)


def test_invalid_edits_are_refused_with_a_message_and_change_nothing(viewer):
    view = viewer.view
    occupancy = view.task.occupancy.copy()
    click(viewer, (7, 1))  # a wall on the goal
    assert view.message.startswith("refused") and "goal" in view.message and "obstacle" in view.message
    click(viewer, (4, 6))  # the only gap: the goal would be unreachable
    assert view.message.startswith("refused") and "unreachable" in view.message
    click(viewer, (4, 2), button=3)  # the goal into a wall
    assert view.message.startswith("refused") and "inside an obstacle" in view.message
    click(viewer, (7, 1), shift=True)  # the start onto the goal
    assert view.message.startswith("refused")
    np.testing.assert_array_equal(view.task.occupancy, occupancy)
    assert (view.task.goal, view.task.start) == ((7, 1), (1, 1))
    viewer.handle(pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=1, pos=(10_000, 5)))  # outside the map: nothing


def test_keys_change_iterations_watch_the_solve_and_draw_maps(viewer):
    view = viewer.view
    k = view.iterations
    press(viewer, pygame.K_RIGHTBRACKET)
    assert view.iterations > k and view.policy.planner.fixed_point.k_fwd == view.iterations
    press(viewer, pygame.K_LEFTBRACKET)
    press(viewer, pygame.K_LEFTBRACKET)
    assert view.iterations < k
    press(viewer, pygame.K_f)
    assert view.trace is not None and view.trace_index == 0
    first = view.frame()
    assert view.advance(5) and view.trace_index == 5
    assert not np.array_equal(view.frame(), first)  # the values spread from the goal
    residuals = view.trace.residuals
    assert len(residuals) == view.iterations and residuals[-1] < residuals[0]
    press(viewer, pygame.K_f)
    assert view.trace is None
    task = view.task
    press(viewer, pygame.K_n)
    assert view.task is not task and view.maps_drawn == 2
    press(viewer, pygame.K_q)
    assert not viewer.running


def test_the_window_loop_reads_posted_events(viewer):
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_SPACE, mod=0, unicode=" "))
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_q, mod=0, unicode="q"))
    viewer.run(max_frames=5)
    assert not viewer.running and viewer.view.position != viewer.view.task.start
    window = pygame.surfarray.array3d(pygame.display.get_surface()).transpose(1, 0, 2)
    np.testing.assert_array_equal(window, viewer.view.frame())  # the window shows the frame


def test_a_torus_click_lands_on_the_cspace_cell_beside_the_workspace():
    with gym.make("IDP/Arm2DOF-CSpace-18-v0", render_mode="rgb_array") as env:
        view = PlanView(env, value_iteration_policy("torus"))
        viewer = Viewer(view)
        viewer.open()
        free = [tuple(int(i) for i in c) for c in np.argwhere(view.task.occupancy == 0)]
        target = next(c for c in free if c not in (view.task.goal, view.task.start) and view.task.distances()[c] > 0)
        click(viewer, target, button=3)
        assert view.task.goal == target and free_peak(view) == target
        assert view.plan.metrics.optimal == 1.0  # wrapping around the torus
        viewer.close()


@pytest.mark.parametrize("env_id", [i for i in idp_envs.registered_ids() if i != "IDP/VisualMaze-15-v0"])
def test_every_env_opens_with_an_untrained_planner(env_id):
    policy, env_id, kwargs = load_policy(None, "id-vin", env_id, 5 if env_id.endswith("Maze-v0") else None)
    with gym.make(env_id, render_mode="rgb_array", **kwargs) as env:
        view = PlanView(env, policy)
        frame = view.frame()
        assert frame.ndim == 3 and frame.shape[2] == 3 and view.plan.value.shape == view.task.shape
        if policy.mapper is not None:  # the arm's workspace: the mapper's C-space is shown, walls are not edited
            assert view.plan.mapped.shape == view.task.shape
            free = tuple(int(i) for i in np.argwhere(view.task.occupancy == 0)[0])
            assert not view.toggle_wall(free) and "mapper" in view.message


def test_the_command_names_what_is_missing(capsys):
    assert main([]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert main(["--planner", "id-vin"]) == 2
    assert "--env" in capsys.readouterr().err
    assert main(["no/such/best.pt"]) == 2
    assert "error:" in capsys.readouterr().err
