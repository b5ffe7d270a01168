"""The training command end to end: it learns, resumes, reports, and its policy plugs into SB3."""

import json
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch

import idp_envs  # noqa: F401
from idp_agents import epochs, imitate, run_files
from idp_agents.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from idp_agents.planner_input import task_tensors
from idp_agents.planners import PLANNERS
from idp_agents.policy import PlannerPolicy
from idp_envs import render
from idp_envs.datasets import load_dataset
from rollouts.episodes import ReplayTasks
from rollouts.metrics import hitting_times, policy_metrics
from rollouts.video import FOOTER, HEADER, showcase_order

SMALL = "--env GridMaze-v0 --size 9 --planner id-convgppn --hidden 16 --k 20 --k-bwd 10 --val 30 --test 40".split()
SMALL += ["--no-progress", "--threads", "1"]


def run(tmp_path, *extra, name="run"):
    args = [*SMALL, "--cache-dir", str(tmp_path / "data"), "--out", str(tmp_path / name), *extra]
    return imitate.main(args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ID-ConvGPPN trained on 400 9x9 mazes for 3 epochs (about 10 s)."""
    tmp_path = tmp_path_factory.mktemp("trained")
    report = run(tmp_path, "--train", "400", "--epochs", "3", "--lr", "3e-3")
    return tmp_path, report


def random_policy_success(dataset_path) -> float:
    splits, _ = load_dataset(dataset_path)
    test = task_tensors(splits["test"])
    gen = torch.Generator().manual_seed(0)
    actions = torch.randint(0, 4, test["maps"][:, 0].shape, generator=gen)
    return policy_metrics(actions, test["maps"][:, 0].to(torch.uint8), test["goal"], test["distances"]).success


def test_training_beats_a_random_policy_by_far(trained):
    tmp_path, report = trained
    random_success = random_policy_success(report["dataset"])
    assert report["test"]["success"] > max(0.5, 5 * random_success), (report["test"], random_success)
    saved = json.loads((tmp_path / "run" / "test_report.json").read_text())
    assert saved["test"] == report["test"] and "reachable" in saved["denominator"]
    from PIL import Image

    splits, _ = load_dataset(report["dataset"])
    test = splits["test"]
    lengths = test.distances[np.arange(len(test)), test.start[:, 0], test.start[:, 1]]
    shortest_shown = lengths[showcase_order(test)[:64]].min()  # one of the 64 tasks with the longest detours
    with Image.open(tmp_path / "run" / "rollout.gif") as gif:
        map_pixels = 9 * render.default_cell_pixels((9, 9))
        assert gif.n_frames >= shortest_shown + 1 and gif.height == HEADER + map_pixels + FOOTER  # title and key
        gif.seek(gif.n_frames - 1)
        assert gif.info["duration"] == 200 + 2000  # 5 frames a second, the end held 2 s
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,phase,lr,train_loss") and len(lines) == 4


def test_every_epoch_logs_the_fixed_points_health(trained):
    """Residuals of both solves, the share above tolerance and the probe's spectral radius, per epoch."""
    import csv

    tmp_path, _ = trained
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for solve in ("fwd", "bwd"):
            assert 0 <= float(row[f"{solve}_residual_mean"]) <= float(row[f"{solve}_residual_max"])
            assert 0 <= float(row[f"{solve}_nonconverged"]) <= 1
        assert 0 < float(row["spectral_radius_mean"]) <= float(row["spectral_radius_max"])


def test_sb3_evaluate_policy_agrees_with_batched_metrics(trained):
    from stable_baselines3.common.evaluation import evaluate_policy

    tmp_path, report = trained
    policy = PlannerPolicy.load(tmp_path / "run" / "best.pt")
    splits, _ = load_dataset(report["dataset"])
    tasks = splits["test"].subset(slice(0, 12))
    env = ReplayTasks(gym.make("IDP/GridMaze-v0", size=9), tasks)
    rewards, lengths = evaluate_policy(policy, env, n_eval_episodes=12, return_episode_rewards=True, warn=False)
    sb3_success = np.isclose(np.array(rewards), 1.0 - 0.01 * (np.array(lengths) - 1))
    # the same tasks through the batched metrics: hitting time from each task's start
    t = task_tensors(tasks)
    observations = {
        "occupancy": tasks.occupancy,
        "goal": t["maps"][:, 1].numpy().astype(np.uint8),
        "position": tasks.start,
    }
    actions = torch.from_numpy(policy.plan(observations).argmax(axis=1))
    times = hitting_times(actions, t["maps"][:, 0].to(torch.uint8), t["goal"], "plane", 81)
    at_start = times[torch.arange(12), t["start"][:, 0], t["start"][:, 1]].numpy()
    assert np.array_equal(sb3_success, at_start >= 0)
    assert np.array_equal(np.array(lengths)[sb3_success], at_start[at_start >= 0])


def test_policy_predicts_single_and_batched_observations(trained):
    tmp_path, _ = trained
    policy = PlannerPolicy.load(tmp_path / "run" / "best.pt")
    env = gym.make("IDP/GridMaze-v0", size=9)
    obs, _ = env.reset(seed=1)
    single, _ = policy.predict(obs, deterministic=True)
    batched, _ = policy.predict({k: np.stack([v, v]) for k, v in obs.items()}, deterministic=True)
    assert np.ndim(single) == 0 and batched.tolist() == [single, single]
    many = {k: np.stack([v] * 4000) for k, v in obs.items()}
    sampled, _ = policy.predict(many, deterministic=False)
    scores = policy.plan(obs)[:, obs["position"][0], obs["position"][1]]
    softmax = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    assert np.abs(np.bincount(sampled, minlength=4) / 4000 - softmax).max() < 0.03
    # sampling draws on the policy's own generator: a seed repeats it, whatever the global numpy state
    first, second = (PlannerPolicy.load(tmp_path / "run" / "best.pt") for _ in range(2))
    first.rng, second.rng = np.random.default_rng(7), np.random.default_rng(7)
    np.random.seed(1)
    a, _ = first.predict(many, deterministic=False)
    np.random.seed(2)
    b, _ = second.predict(many, deterministic=False)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="position outside"):
        policy.predict({**obs, "position": np.array([-1, 0])})
    with pytest.raises(ValueError, match="occupancy"):
        policy.predict({"occupancy": obs["occupancy"], "goal": obs["goal"][:3], "position": obs["position"]})


def test_resume_continues_after_an_interrupted_epoch(tmp_path, monkeypatch, capsys):
    run(tmp_path, "--train", "64", "--epochs", "1")
    first = load_checkpoint(tmp_path / "run" / "last.pt")
    assert first["epoch"] == 0

    calls = {"n": 0}
    original = epochs.planner_loss

    def crash_in_second_epoch(*args):
        calls["n"] += 1
        if calls["n"] > 1:  # the second batch of the second epoch
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(epochs, "planner_loss", crash_in_second_epoch)
    with pytest.raises(SystemExit) as exc:  # Ctrl-C: exit status 130 and a line saying how to continue
        run(tmp_path, "--train", "64", "--epochs", "2", "--resume")
    assert exc.value.code == 130 and "rerun the same command with --resume" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 0  # the finished epoch is kept
    monkeypatch.setattr(epochs, "planner_loss", original)
    report = run(tmp_path, "--train", "64", "--epochs", "2", "--resume")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1 and [h["epoch"] for h in state["history"]] == [1, 2]
    assert report["test"]["starts"] > 0


def test_policy_cache_is_bounded_and_follows_the_weights(trained):
    tmp_path, report = trained
    policy = PlannerPolicy.load(tmp_path / "run" / "best.pt")
    policy.cache_size = 5
    splits, _ = load_dataset(report["dataset"])
    t = task_tensors(splits["test"])
    observations = {
        "occupancy": splits["test"].occupancy,
        "goal": t["maps"][:, 1].numpy(),
        "position": splits["test"].start,
    }
    first = policy.plan(observations)  # 40 maps through a cache of 5
    assert first.shape == (40, 4, 9, 9) and len(policy._cache) == 5
    with torch.no_grad():
        for p in policy.planner.parameters():
            p.add_(0.5)
    assert not np.allclose(policy.plan(observations), first)  # no stale plan after the weights changed


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """Interrupted in its second epoch and resumed, a run ends where the same run without a break does (the default
    learning-rate schedule depends on --epochs, which both share)."""
    straight = run(tmp_path, "--train", "64", "--epochs", "2", name="straight")
    calls = {"n": 0}
    original = epochs.planner_loss

    def crash_in_second_epoch(*args):
        calls["n"] += 1
        if calls["n"] > 2:  # two batches of 32 an epoch: the first batch of the second epoch
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(epochs, "planner_loss", crash_in_second_epoch)
    with pytest.raises(SystemExit):
        run(tmp_path, "--train", "64", "--epochs", "2", name="split")
    monkeypatch.setattr(epochs, "planner_loss", original)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 0
    resumed = run(tmp_path, "--train", "64", "--epochs", "2", "--resume", name="split")
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert straight["test"] == resumed["test"]


def test_epochs_0_in_the_folder_of_an_earlier_run_tests_nothing_and_keeps_its_report(tmp_path):
    run(tmp_path, "--train", "32", "--epochs", "1")
    report = (tmp_path / "run" / "test_report.json").read_bytes()
    with pytest.raises(SystemExit, match="no epochs to train"):
        run(tmp_path, "--train", "32", "--epochs", "0", "--seed", "5", "--lr", "0.1")
    vin = ["--env", "GridMaze-v0", "--size", "9", "--planner", "vin", "--l-h", "4", "--l-q", "4", "--epochs", "0"]
    with pytest.raises(SystemExit, match="no epochs to train"):  # another planner: no state_dict traceback either
        imitate.main([*vin, "--train", "32", "--cache-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")])
    assert (tmp_path / "run" / "test_report.json").read_bytes() == report
    again = run(tmp_path, "--train", "32", "--epochs", "1", "--resume")  # testing it again is --resume
    assert json.loads(report)["test"] == again["test"]


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import errno

    run(tmp_path, "--train", "32", "--epochs", "1")
    before = (tmp_path / "run" / "last.pt").read_bytes()

    def disk_full(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(imitate, "save_checkpoint", disk_full)
    with pytest.raises(SystemExit, match="disk is full.*--resume") as exc:
        run(tmp_path, "--train", "32", "--epochs", "2", "--resume")
    assert "\n" not in str(exc.value.code)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_resume_refuses_other_settings(tmp_path):
    run(tmp_path, "--train", "32", "--epochs", "1")
    with pytest.raises(SystemExit, match="other settings"):
        run(tmp_path, "--train", "32", "--epochs", "2", "--resume", "--lr", "0.1")


def test_resume_refuses_a_run_whose_planner_today_s_defaults_would_change(tmp_path):
    """A run from before ConvGPPN had a cell choice recorded no cell; resuming it builds today's default (LSTM)."""
    run(tmp_path, "--train", "32", "--epochs", "1", "--cell", "gru")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    del state["config"]["run"]["cell"], state["config"]["planner_kwargs"]["cell"]
    save_checkpoint(tmp_path / "run" / "last.pt", state)
    with pytest.raises(SystemExit, match="other settings.*cell"):
        run(tmp_path, "--train", "32", "--epochs", "2", "--resume")
    with pytest.raises(SystemExit, match="other settings.*hidden"):  # a changed step flag builds another planner
        run(tmp_path, "--train", "32", "--epochs", "2", "--resume", "--cell", "gru", "--hidden", "8")
    run(tmp_path, "--train", "32", "--epochs", "2", "--resume", "--cell", "gru")  # its own settings resume it


def test_resume_compares_planner_defaulted_budgets_as_the_planner_they_build(tmp_path, monkeypatch):
    """A run that recorded the backward budget as a flag (k_bwd 10 here) resumes with the flag left out when its
    planner's default is that budget, and is refused, naming the flag, when the default has changed since."""
    run(tmp_path, "--train", "32", "--epochs", "1")  # SMALL passes --k-bwd 10
    args = [a for a in SMALL if a not in ("--k-bwd", "10")]
    assert len(args) == len(SMALL) - 2

    def resume(*extra):
        return imitate.main([*args, "--cache-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *extra])

    spec = PLANNERS["id-convgppn"]
    monkeypatch.setitem(PLANNERS, "id-convgppn", replace(spec, defaults={**spec.defaults, "k_bwd": 12}))
    with pytest.raises(SystemExit, match="other settings for k_bwd: 10 there, 12 now"):
        resume("--train", "32", "--epochs", "2", "--resume")
    monkeypatch.setitem(PLANNERS, "id-convgppn", replace(spec, defaults={**spec.defaults, "k_bwd": 10}))
    report = resume("--train", "32", "--epochs", "2", "--resume")
    assert report["config"]["planner_kwargs"]["k_bwd"] == 10
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 3  # header and two epochs


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    run(tmp_path, "--train", "32", "--epochs", "1")
    path = tmp_path / "run" / "last.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        PlannerPolicy.load(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "Maze-3"], "unknown environment"),
        (["--planner", "gppn"], "invalid choice: 'gppn' \\(choose from 'convgppn'"),
        (["--planner", "convgppn", "--l-q", "3"], "does not take"),
        (["--planner", "vin", "--cell", "lstm"], "does not take"),
    ],
)
def test_bad_names_list_the_valid_ones(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        imitate.main([*args, "--out", str(tmp_path / "x"), "--cache-dir", str(tmp_path), "--no-progress"])


def test_checkpoint_records_every_resolved_setting_and_old_checkpoints_keep_their_defaults(trained):
    from idp_agents.policy import legacy_planner_kwargs

    tmp_path, _ = trained
    config = load_checkpoint(tmp_path / "run" / "best.pt")["config"]
    kwargs = config["planner_kwargs"]
    assert (
        kwargs["kernel"] == 3 and kwargs["contraction"] is None and kwargs["k_fwd"] == 20 and kwargs["tol_fwd"] == 1e-4
    )
    assert legacy_planner_kwargs(config) == kwargs
    old = {"planner": "id-vin", "planner_kwargs": {"k_fwd": 30, "l_h": 8}}  # written before bounded value filters
    assert legacy_planner_kwargs(old) == {"kernel": 3, "discount": None, "k_fwd": 30, "l_h": 8}
    before_targeted = {"planner": "id-convgppn", "planner_kwargs": {"jac_reg_weight": 0.1, "contraction": None}}
    assert legacy_planner_kwargs(before_targeted)["jac_reg_unconverged"] is None
    assert legacy_planner_kwargs(before_targeted)["cell"] == "gru"  # written before ConvGPPN had an LSTM cell
    assert kwargs["jac_reg_unconverged"] == PLANNERS["id-convgppn"].defaults["jac_reg_unconverged"]


def test_checkpoints_without_recorded_step_settings_load_by_the_shapes_of_their_weights():
    from idp_agents.planners import make_planner
    from idp_agents.policy import legacy_planner_kwargs

    config = {"planner": "id-vin", "topology": "plane", "planner_kwargs": {"k_fwd": 30, "l_h": 8, "l_q": 8}}
    before_bounds = make_planner("id-vin", l_h=8, l_q=8, kernel=3, discount=None).state_dict()
    assert legacy_planner_kwargs(config, before_bounds) == {"kernel": 3, "discount": None, **config["planner_kwargs"]}
    bounded_unrecorded = make_planner("id-vin", l_h=8, l_q=8).state_dict()  # today's 5x5 kernels, not recorded
    kwargs = legacy_planner_kwargs(config, bounded_unrecorded)
    assert kwargs == config["planner_kwargs"]
    make_planner("id-vin", **kwargs).load_state_dict(bounded_unrecorded)


def test_readme_sb3_snippet_runs_as_written(trained):
    """The README's evaluate_policy snippet, on the trained checkpoint: floats back, and no Monitor warning."""
    import re
    import warnings
    from pathlib import Path

    tmp_path, _ = trained
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "evaluate_policy" in b)
    code = block.replace("runs/latest/best.pt", str(tmp_path / "run" / "best.pt"))
    namespace: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code.replace("n_eval_episodes=50", "n_eval_episodes=4"), "README.md", "exec"), namespace)
    assert not [w for w in caught if "Monitor" in str(w.message)]
    assert isinstance(namespace["mean_reward"], float) and isinstance(namespace["std_reward"], float)


def test_a_run_log_holds_no_profiler_lines(tmp_path):
    """--memory-budget-gb measures a step under torch.profiler, whose native logger wrote lines to every log."""
    import subprocess
    import sys

    args = "--env GridMaze-v0 --size 7 --planner vin --l-h 4 --l-q 4 --k 3 --train 8 --val 4 --test 4 --epochs 1"
    args += f" --threads 1 --no-progress --no-gif --memory-budget-gb 2 --out {tmp_path / 'run'}"
    args += f" --cache-dir {tmp_path / 'data'}"
    done = subprocess.run(
        [sys.executable, "-m", "idp_agents.imitate", *args.split()], capture_output=True, text=True, check=True
    )
    assert "profiler" not in done.stdout + done.stderr and "test %Success" in done.stdout


def test_metrics_csv_keeps_the_columns_a_newer_version_adds_on_resume(tmp_path):
    """A run resumed under a version that logs one more column writes every epoch, the old ones left blank there."""
    path = tmp_path / "metrics.csv"
    run_files.write_metrics_csv(path, [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4, "fwd_over_cap": 0.01}])
    lines = path.read_text().splitlines()
    assert lines == ["epoch,loss,fwd_over_cap", "1,0.5,", "2,0.4,0.01"]


def test_cosine_schedule_sets_each_epochs_rate_and_a_resumed_run_follows_it(tmp_path):
    straight = run(tmp_path, "--train", "64", "--epochs", "2", "--lr-schedule", "cosine", name="straight")
    run(tmp_path, "--train", "64", "--epochs", "1", "--lr-schedule", "cosine", name="split")
    resumed = run(tmp_path, "--train", "64", "--epochs", "2", "--lr-schedule", "cosine", "--resume", name="split")
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert [h["lr"] for h in a["history"]] == [h["lr"] for h in b["history"]] == pytest.approx([1e-3, 5e-4])
    assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-4)
    assert straight["test"] == resumed["test"]
    with pytest.raises(SystemExit, match="lr_schedule"):  # a constant-rate run does not resume on a schedule
        run(tmp_path, "--train", "64", "--epochs", "3", "--resume", name="split")


def test_late_cosine_holds_the_rate_for_half_the_epochs_then_decays_it_toward_zero():
    rates = [epochs.epoch_lr(1e-3, "late-cosine", epoch, 10) for epoch in range(10)]
    assert rates[:5] == [1e-3] * 5
    assert all(a > b for a, b in zip(rates[4:-1], rates[5:], strict=True))  # strictly decreasing after the hold
    assert rates[7] == pytest.approx(5e-4) and 0 < rates[-1] < 1e-4
    assert 0 < epochs.epoch_lr(1e-3, "late-cosine", 0, 1) < 1e-3  # a one-epoch run has no hold


def test_a_checkpoint_from_before_a_flag_existed_resumes_with_what_it_trained_with(tmp_path):
    run(tmp_path, "--train", "32", "--epochs", "1", "--lr-schedule", "constant")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    del state["config"]["run"]["lr_schedule"]  # written before --lr-schedule: its runs had a constant rate
    save_checkpoint(tmp_path / "run" / "last.pt", state)
    with pytest.raises(SystemExit, match="lr_schedule"):  # not today's default schedule
        run(tmp_path, "--train", "32", "--epochs", "2", "--resume")
    report = run(tmp_path, "--train", "32", "--epochs", "2", "--lr-schedule", "constant", "--resume")
    assert report["test"]["starts"] > 0


def test_a_checkpoint_from_before_the_stragglers_solver_choice_keeps_anderson(tmp_path):
    """Its stragglers were continued by the forward solver (Anderson): loading rebuilds that, and resuming under
    today's plain-iteration default is refused, naming the setting, unless asked for."""
    from idp_agents.policy import legacy_planner_kwargs

    run(tmp_path, "--train", "32", "--epochs", "1")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["config"]["planner_kwargs"]["solver_stragglers"] == "forward"
    del state["config"]["run"]["solver_stragglers"]
    del state["config"]["planner_kwargs"]["solver_stragglers"]
    save_checkpoint(tmp_path / "run" / "last.pt", state)
    assert legacy_planner_kwargs(state["config"])["solver_stragglers"] == "anderson"
    with pytest.raises(SystemExit, match="solver_stragglers: 'anderson' there, 'forward' now"):
        run(tmp_path, "--train", "32", "--epochs", "2", "--resume")
    report = run(tmp_path, "--train", "32", "--epochs", "2", "--solver-stragglers", "anderson", "--resume")
    assert report["test"]["starts"] > 0
