"""Closed-loop metrics: the expert scores 100 %, a wall-hugging policy 0 %, and simulation agrees with them."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import idp_envs  # noqa: F401
from idp_envs import grid
from idp_envs.tasks import sample_maze_tasks
from rollouts.episodes import ReplayTasks, run_episodes
from rollouts.metrics import hitting_times, policy_metrics
from rollouts.video import record_episode, save_gif


def tensors(batch):
    return (
        torch.from_numpy(batch.occupancy),
        torch.from_numpy(batch.goal),
        torch.from_numpy(batch.distances.astype(np.int64)),
    )


@pytest.fixture(scope="module")
def batch():
    return sample_maze_tasks(40, 11, np.random.default_rng(0))


def expert_map(batch):
    actions = grid.expert_actions(batch.optimal_actions)
    return torch.from_numpy(np.where(actions < 0, 0, actions))


def test_expert_policy_scores_everything(batch):
    m = policy_metrics(expert_map(batch), *tensors(batch))
    assert (m.success, m.optimal, m.spl) == (1.0, 1.0, 1.0)
    assert m.starts == int((batch.distances > 0).sum()) and m.maps == 40


def test_policy_moving_into_walls_scores_nothing():
    # a ring corridor: every free cell has a wall beside it, and the policy always walks into one
    occ = np.ones((6, 7, 7), dtype=np.uint8)
    occ[:, 1, 1:6] = occ[:, 5, 1:6] = occ[:, 1:6, 1] = occ[:, 1:6, 5] = 0
    goal = grid.sample_free_cells(occ == 0, np.random.default_rng(0))
    dist = grid.bfs_distances(occ, goal)
    nb = grid.neighbour_values(occ, "plane", 1)
    assert (nb.max(axis=1)[occ == 0] == 1).all()
    blocked = torch.from_numpy(np.argmax(nb == 1, axis=1))
    m = policy_metrics(blocked, torch.from_numpy(occ), torch.from_numpy(goal), torch.from_numpy(dist.astype(np.int64)))
    assert m.starts == 6 * 15 and m.success == 0.0 and m.optimal == 0.0 and m.spl == 0.0


def test_detour_succeeds_but_is_not_optimal():
    occ = np.zeros((1, 3, 3), dtype=np.uint8)
    goal = np.array([[0, 2]])
    dist = grid.bfs_distances(occ, goal)
    actions = np.full((1, 3, 3), 3)  # east along every row ...
    actions[0, :, 2] = 0  # ... then north up the last column
    actions[0, 0, 0] = 2  # but from (0, 0) go south first: 4 steps instead of 2
    m = policy_metrics(
        torch.from_numpy(actions),
        torch.from_numpy(occ),
        torch.from_numpy(goal),
        torch.from_numpy(dist.astype(np.int64)),
    )
    assert m.success == 1.0 and m.starts == 8
    assert m.optimal == pytest.approx(7 / 8)
    assert m.spl == pytest.approx((7 + 2 / 4) / 8)


def test_hitting_times_match_step_by_step_simulation(batch):
    rng = np.random.default_rng(3)
    actions = rng.integers(0, 4, batch.occupancy.shape)
    cap = 30
    times = hitting_times(
        torch.from_numpy(actions), torch.from_numpy(batch.occupancy), torch.from_numpy(batch.goal), "plane", cap
    ).numpy()
    m, r, c = np.nonzero(batch.distances >= 0)
    pos = np.stack([r, c], axis=1)
    expected = np.where((pos == batch.goal[m]).all(axis=1), 0, -1)
    for t in range(1, cap + 1):
        pos = grid.step_positions(batch.occupancy[m], pos, actions[m, pos[:, 0], pos[:, 1]])
        expected[(expected < 0) & (pos == batch.goal[m]).all(axis=1)] = t
    assert np.array_equal(times[m, r, c], expected)
    assert (expected > 1).any()  # the random policy does reach the goal from afar sometimes


def test_torus_metrics_use_wrap_around():
    occ = np.zeros((1, 1, 5), dtype=np.uint8)
    goal = np.array([[0, 0]])
    dist = grid.bfs_distances(occ, goal, "torus")
    east = torch.full((1, 1, 5), 3)
    m = policy_metrics(
        east, torch.from_numpy(occ), torch.from_numpy(goal), torch.from_numpy(dist.astype(np.int64)), "torus"
    )
    assert m.success == 1.0 and m.optimal == pytest.approx(2 / 4)  # from columns 3 and 4 east is shortest


def test_shape_mismatch_is_reported(batch):
    occ, goal, dist = tensors(batch)
    with pytest.raises(ValueError, match="shapes disagree"):
        policy_metrics(expert_map(batch)[:, :5], occ, goal, dist)


class ExpertOracle:
    """A predict()-style policy that reads the expert action out of the environment."""

    def __init__(self, env):
        self.env = env

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        r, c = obs["position"]
        return int(grid.expert_actions(self.env.unwrapped.expert_policy()[None])[0, r, c]), state


def test_episodes_through_env_with_replayed_tasks(batch):
    env = ReplayTasks(gym.make("IDP/GridMaze-v0", size=11), batch)
    stats = run_episodes(env, ExpertOracle(env), n_episodes=10)
    assert stats.success_rate == 1.0 and stats.optimal_rate == 1.0
    starts = batch.distances[np.arange(10), batch.start[:10, 0], batch.start[:10, 1]]
    assert np.array_equal(stats.lengths, starts)


class AlwaysNorth:
    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        n = len(obs["position"]) if np.ndim(obs["position"]) == 2 else None
        return (np.zeros(n, dtype=int) if n else 0), state


def test_vector_env_episodes_count_each_episode_once():
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("IDP/GridMaze-v0", size=5, max_steps=4) for _ in range(3)])
    stats = run_episodes(envs, AlwaysNorth(), n_episodes=7, seed=0)
    assert len(stats.lengths) == 7
    assert ((stats.lengths == 4) | stats.successes).all()  # truncated after 4 steps unless north reaches the goal


def test_rendered_rollout_to_gif(tmp_path, batch):
    env = ReplayTasks(gym.make("IDP/GridMaze-v0", size=11, render_mode="rgb_array"), batch)
    frames = record_episode(
        env, ExpertOracle(env), overlay=lambda obs: (-env.unwrapped.distances().astype(float), None)
    )
    assert len(frames) == batch.distances[0, batch.start[0, 0], batch.start[0, 1]] + 1
    path = save_gif(frames, tmp_path / "episode.gif")
    from PIL import Image

    with Image.open(path) as gif:
        assert gif.n_frames == len(frames)


def test_captioned_gif_names_the_run_keys_the_shading_and_holds_the_end(tmp_path, batch):
    from PIL import Image

    from rollouts.video import FOOTER, HEADER, caption_frames, detours, showcase_order

    order = showcase_order(batch)
    lengths = batch.distances[np.arange(len(batch)), batch.start[:, 0], batch.start[:, 1]]
    assert np.array_equal(detours(batch), lengths - np.abs(batch.start - batch.goal).sum(axis=1))
    assert sorted(order) == list(range(len(batch))) and (np.diff(detours(batch)[order]) <= 0).all()
    env = ReplayTasks(gym.make("IDP/GridMaze-v0", size=11, render_mode="rgb_array"), batch.subset([order[0]]))
    frames = record_episode(
        env, ExpertOracle(env), overlay=lambda obs: (-env.unwrapped.distances().astype(float), None)
    )
    captioned = caption_frames(frames, "id-vin on GridMaze-v0: test %Success 70.0", reached=True, note="task 3")
    h, w = frames[0].shape[:2]
    assert len(captioned) == len(frames) and captioned[0].shape[0] == HEADER + h + FOOTER
    left = (captioned[0].shape[1] - w) // 2
    assert np.array_equal(captioned[3][HEADER : HEADER + h, left : left + w], frames[3])  # the frame is untouched
    assert (captioned[0][:HEADER] < 128).any() and (captioned[0][HEADER + h :] < 250).any()  # title, key drawn
    path = save_gif(captioned, tmp_path / "episode.gif", fps=5, hold_last_s=2.0)
    with Image.open(path) as gif:
        gif.seek(gif.n_frames - 1)
        assert gif.info["duration"] == 200 + 2000
