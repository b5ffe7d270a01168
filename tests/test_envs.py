"""Environments: every registered id passes Gymnasium's checker, plays seeded episodes, validates user tasks."""

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import idp_envs
from idp_envs.tasks import PlanningTask

ALL_IDS = idp_envs.registered_ids()
MAZE = np.array(
    [
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 1],
        [1, 0, 1, 0, 1],
        [1, 0, 0, 0, 1],
        [1, 1, 1, 1, 1],
    ],
    dtype=np.uint8,
)


def test_every_env_of_the_library_is_registered():
    expected = {f"IDP/GridMaze-{size}-v0" for size in (15, 27, 49, 75)} | {"IDP/GridMaze-v0"}
    expected |= {"IDP/VisualMaze-15-v0", "IDP/VisualMaze-v0", "IDP/Arm2DOF-Workspace-v0"}
    expected |= {"IDP/Arm2DOF-CSpace-18-v0", "IDP/Arm2DOF-CSpace-36-v0"}
    assert set(ALL_IDS) == expected


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_check_env(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    env.close()


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_expert_episode_reaches_goal_in_distance_steps(env_id):
    env = gym.make(env_id)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    distance = info["distance"]
    assert distance > 0
    for t in range(distance):
        assert info["optimal_actions"][info["expert_action"]]
        obs, reward, terminated, truncated, info = env.step(info["expert_action"])
        assert info["distance"] == distance - t - 1
    assert terminated and not truncated and reward == 1.0
    assert obs["goal"].sum() == 1 and obs["goal"][tuple(obs["position"])] == 1  # every env: a one-hot goal map


def test_make_with_module_prefix_registers_on_the_fly():
    env = gym.make("idp_envs:IDP/GridMaze-49-v0")
    obs, _ = env.reset(seed=0)
    assert obs["occupancy"].shape == (49, 49)


def test_any_odd_size():
    env = gym.make("IDP/GridMaze-v0", size=21)
    obs, _ = env.reset(seed=0)
    assert obs["occupancy"].shape == (21, 21)
    with pytest.raises(ValueError, match="odd"):
        gym.make("IDP/GridMaze-v0", size=20)


def play(env, seed: int, steps: int = 4) -> list:
    """The observations, rewards and frames of a seeded reset and a few expert steps."""
    obs, info = env.reset(seed=seed)
    trace = [obs, env.render()]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(info["expert_action"])
        trace += [obs, reward, env.render()]
        if terminated or truncated:
            break
    return trace


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_seeded_episodes_are_deterministic_and_seeds_differ(env_id):
    a, b = gym.make(env_id, render_mode="rgb_array"), gym.make(env_id, render_mode="rgb_array")
    first, again = play(a, 0), play(b, 0)
    assert len(first) == len(again) and all(same(x, y) for x, y in zip(first, again, strict=True))
    other = play(a, 1)
    assert not same(first[0], other[0])  # another seed, another task
    a.close()
    b.close()


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_rgb_array_frames_show_the_agent_move(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    obs, info = env.reset(seed=2)
    before = env.render()
    assert before.dtype == np.uint8 and before.ndim == 3 and before.shape[2] == 3 and before.std() > 0
    env.step(info["expert_action"])
    assert not np.array_equal(env.render(), before)
    env.close()


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_a_pickled_env_plays_on_as_the_original(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=4)
    copy = pickle.loads(pickle.dumps(env))
    assert copy.unwrapped.np_random.bit_generator.state == env.unwrapped.np_random.bit_generator.state
    for x, y in zip(play_on(env), play_on(copy), strict=True):
        assert same(x, y)
    assert same(env.reset()[0], copy.reset()[0])  # the next task, drawn from the copied generator
    env.close()
    copy.close()


def play_on(env, steps: int = 3) -> list:
    """The observations and frames of a few expert steps from wherever the env stands."""
    trace = []
    action = env.unwrapped.expert_policy()[:, *env.unwrapped.position].argmax()
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(int(action))
        trace += [obs, reward, env.render()]
        if terminated or truncated:
            break
        action = info["expert_action"]
    return trace


def test_rewards_and_truncation():
    env = gym.make("IDP/GridMaze-v0", size=5, max_steps=3).unwrapped
    env.reset(options={"task": {"occupancy": MAZE, "goal": (3, 3), "start": (1, 1)}})
    rewards = []
    for _ in range(3):
        _, reward, terminated, truncated, _ = env.step(0)  # north into the wall: stays put
        rewards.append(reward)
    assert rewards == [-0.01] * 3 and not terminated and truncated
    assert env.position.tolist() == [1, 1]


def test_user_task_is_played_and_labelled():
    env = gym.make("IDP/GridMaze-v0", size=5).unwrapped
    obs, info = env.reset(options={"task": PlanningTask(MAZE, (3, 3), (1, 1))})
    assert obs["position"].tolist() == [1, 1] and obs["goal"][3, 3] == 1
    assert info["distance"] == 4
    assert info["optimal_actions"].tolist() == [False, False, True, True]  # S or E
    assert env.distances()[1, 3] == 2 and env.distances()[0, 0] == -1
    assert env.expert_policy().shape == (4, 5, 5)


BAD_TASKS = [
    ({"occupancy": MAZE[:, :4], "goal": (3, 3), "start": (1, 1)}, "shape"),
    ({"occupancy": MAZE.astype(np.float32), "goal": (3, 3), "start": (1, 1)}, "dtype"),
    ({"occupancy": MAZE * 2, "goal": (3, 3), "start": (1, 1)}, "0 \\(free\\) or 1"),
    ({"occupancy": MAZE, "goal": (0, 0), "start": (1, 1)}, "goal .* inside an obstacle"),
    ({"occupancy": MAZE, "goal": (3, 3), "start": (2, 2)}, "start .* inside an obstacle"),
    ({"occupancy": MAZE, "goal": (7, 3), "start": (1, 1)}, "outside"),
    ({"occupancy": MAZE, "goal": (3, 3)}, "missing"),
    ({"occupancy": MAZE, "goal": (3, 3, 1), "start": (1, 1)}, "two integers"),
    ({"occupancy": MAZE, "goal": (3, 3), "start": (3, 3)}, "is the goal"),
]


@pytest.mark.parametrize("task, message", BAD_TASKS)
def test_invalid_tasks_raise_value_error(task, message):
    env = gym.make("IDP/GridMaze-v0", size=5).unwrapped
    with pytest.raises(ValueError, match=message):
        env.reset(options={"task": task})


def test_unknown_reset_option_is_rejected():
    env = gym.make("IDP/GridMaze-v0", size=5).unwrapped
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"start": (1, 1)})


def test_unreachable_goal_is_rejected():
    occ = MAZE.copy()
    occ[2, 1:4] = 1
    with pytest.raises(ValueError, match="unreachable"):
        PlanningTask(occ, (3, 3), (1, 1))


def test_task_of_another_size_names_the_sizes():
    env = gym.make("IDP/GridMaze-15-v0").unwrapped
    with pytest.raises(ValueError, match=r"\(5, 5\).*\(15, 15\)"):
        env.reset(options={"task": PlanningTask(MAZE, (3, 3), (1, 1))})


def test_bad_action_is_rejected():
    env = gym.make("IDP/GridMaze-15-v0").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(4)


def test_rgb_frames_show_agent_goal_and_overlays_without_display():
    env = gym.make("IDP/GridMaze-15-v0", render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    px = frame.shape[0] // 15
    assert frame.shape == (15 * px, 15 * px, 3) and frame.dtype == np.uint8
    inner = env.unwrapped
    r, c = inner.position
    assert tuple(frame[r * px + px // 2, c * px + px // 2]) == (214, 39, 40)  # the agent
    gr, gc = inner.task.goal
    assert tuple(frame[gr * px + px // 2, gc * px + px // 2]) == (46, 160, 67)  # the goal
    inner.set_overlay(value=-inner.distances().astype(float), policy=inner.expert_policy())
    overlaid = env.render()
    assert overlaid.shape == frame.shape and not np.array_equal(overlaid, frame)
    with pytest.raises(ValueError, match="overlay"):
        inner.set_overlay(value=np.zeros((3, 3)))


def test_human_render_opens_a_pygame_window_headless():
    env = gym.make("IDP/GridMaze-15-v0", render_mode="human")
    env.reset(seed=0)
    env.step(0)
    import pygame

    assert pygame.display.get_surface() is not None
    env.close()
    assert pygame.display.get_surface() is None


def test_resolve_env_id():
    assert idp_envs.resolve_env_id("GridMaze-15") == "IDP/GridMaze-15-v0"
    assert idp_envs.resolve_env_id("IDP/GridMaze-15-v0") == "IDP/GridMaze-15-v0"
    with pytest.raises(ValueError, match="GridMaze-15-v0"):
        idp_envs.resolve_env_id("Maze-7")


def test_a_large_maze_says_that_sampling_it_takes_a_while():
    with pytest.warns(UserWarning, match=r"about \d+ s"):
        gym.make("IDP/GridMaze-v0", size=1201)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym.make("IDP/GridMaze-v0", size=75)
