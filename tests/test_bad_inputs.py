"""Bad inputs get our own error type and a message that names the problem: corrupt, truncated, foreign and
mis-shaped datasets and checkpoints, observations a policy cannot act on, and bad env, task and flag values."""

import errno
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import idp_envs  # noqa: F401
from idp_agents import experiments, imitate, run_files
from idp_agents.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from idp_agents.planners import make_planner
from idp_agents.policy import PlannerPolicy
from idp_envs import datasets
from idp_envs.datasets import DatasetError

# ------------------------------------------------------------------------------------------------------ files


def member_data_offset(path, name: str) -> tuple[int, int]:
    """Where the (compressed) bytes of zip member ``name`` start in the file, and how many there are."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len), info.compress_size


def flip_bytes(path, offset: int, n: int = 8) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A valid 7x7 maze dataset (12/4/4 maps) of IDP/GridMaze-v0."""
    splits, meta = datasets.generate_splits(
        "IDP/GridMaze-v0", {"train": 12, "val": 4, "test": 4}, seed=0, env_kwargs={"size": 7}, progress=False
    )
    return datasets.save_dataset(tmp_path_factory.mktemp("data") / "good.npz", splits, meta)


def rewrite(good, bad, change):
    """Copy the dataset ``good`` to ``bad`` with ``change(arrays, metadata)`` applied to its arrays."""
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["metadata"]))
    replaced = change(arrays, meta)
    arrays["metadata"] = np.array(json.dumps(meta if replaced is None else replaced))
    np.savez_compressed(bad, **arrays)


def corrupt_member(good, bad):
    shutil.copy(good, bad)
    start, size = member_data_offset(bad, "train/distances.npy")
    flip_bytes(bad, start + size // 2)


def set_array(key, value):
    def change(arrays, meta):
        arrays[key] = value(arrays[key])

    return change


def goal_inside_obstacle(arrays, meta):
    arrays["train/goal"][0] = [0, 0]  # the maze border is solid


def make_bad_dataset(kind: str, good, bad):
    """Write the bad dataset ``kind`` at ``bad`` (or return another path); returns the path to load."""
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "corrupt member":
        corrupt_member(good, bad)
    elif kind == "single .npy":
        bad = bad.with_suffix(".npy")
        np.save(bad, np.zeros((3, 7, 7)))
    elif kind == "text":
        bad.write_text("occupancy,goal\n")
    elif kind == "foreign npz":
        np.savez(bad, a=np.zeros(3))
    elif kind == "directory":
        bad.mkdir()
    elif kind == "pickle":
        np.save(bad.with_suffix(".npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
        bad = bad.with_suffix(".npy")
    else:
        rewrite(good, bad, BAD_CONTENT[kind][0])
    return bad


BAD_CONTENT = {
    "format version": (lambda a, m: m.update(format_version=99), "format version 99"),
    "metadata not an object": (lambda a, m: [m], "not a JSON object"),
    "missing array": (lambda a, m: a.__delitem__("val/start"), "truncated, corrupt or not"),
    "distances of another shape": (set_array("train/distances", lambda x: x[:, :5]), "distances must have shape"),
    "float occupancy": (set_array("test/occupancy", lambda x: x.astype(np.float32)), "integer or bool dtype"),
    "occupancy of 2s": (set_array("val/occupancy", lambda x: x * 2), "0 (free) or 1"),
    "goal off the map": (set_array("train/goal", lambda x: x + 7), "outside the 7x7 map"),
    "negative start": (set_array("train/start", lambda x: -x), "outside the 7x7 map"),
    "goal in an obstacle": (goal_inside_obstacle, "inside an obstacle"),
    "float goal": (set_array("train/goal", lambda x: x.astype(np.float64)), "integer cells"),
    "actions not bool": (set_array("train/optimal_actions", lambda x: x.astype(np.uint8)), "must be bool"),
    "labels for another goal": (set_array("train/distances", lambda x: x + 1), "not 0 at its goal"),
    "lengths differ": (set_array("train/start", lambda x: x[:3]), "different lengths"),
    "metadata shape": (lambda a, m: m.update(shape=[9, 9]), "metadata says"),
    "unknown topology": (lambda a, m: m.update(topology="sphere"), "topology must be one of"),
}
BAD_DATASETS = {
    "truncated": "truncated",
    "corrupt member": "corrupt",
    "single .npy": "single array (.npy)",
    "pickle": "truncated or not",
    "text": "truncated",
    "foreign npz": "not an IDP dataset",
    "directory": "is a directory",
    **{kind: message for kind, (_, message) in BAD_CONTENT.items()},
}


@pytest.mark.parametrize("kind, message", list(BAD_DATASETS.items()), ids=list(BAD_DATASETS))
def test_bad_dataset_is_a_dataset_error_naming_the_problem(dataset, tmp_path, kind, message):
    bad = make_bad_dataset(kind, dataset, tmp_path / "bad.npz")
    with pytest.raises(DatasetError, match=re.escape(message)) as exc:
        datasets.load_dataset(bad)
    assert "python -m idp_envs.datasets" in str(exc.value) or "--from-gppn" in str(exc.value)  # what to do


@pytest.mark.parametrize("kind", ["corrupt member", "single .npy", "labels for another goal"])
def test_bad_dataset_given_to_imitate_is_one_error_line(dataset, tmp_path, kind):
    bad = make_bad_dataset(kind, dataset, tmp_path / "bad.npz")
    message = imitate_error(tmp_path, "--env", "GridMaze-v0", "--size", "7", "--data", str(bad))
    assert message.startswith(f"error: {bad}")


@pytest.mark.parametrize("kind, message", [("corrupt member", "corrupt"), ("single .npy", "single array")])
def test_bad_gppn_file_is_a_dataset_error(tmp_path, kind, message):
    arrays = []
    for n in (6, 2, 2):  # one empty 7x7 room per map, goal at (1, 1), no policy labels
        maze = np.zeros((n, 7, 7), dtype=np.float32)
        maze[:, 1:-1, 1:-1] = 1
        goal = np.zeros((n, 1, 7, 7), dtype=np.float32)
        goal[:, 0, 1, 1] = 1
        arrays += [maze, goal, np.zeros((n, 4, 1, 7, 7), dtype=np.float32)]
    good = tmp_path / "gppn.npz"
    np.savez_compressed(good, *arrays)
    with pytest.warns(UserWarning, match="also appear"):  # the good file imports (its mazes are all alike)
        datasets.import_gppn(good)
    if kind == "corrupt member":
        bad = tmp_path / "bad.npz"
        shutil.copy(good, bad)
        start, size = member_data_offset(bad, "arr_0.npy")
        flip_bytes(bad, start + size // 2)
    else:
        bad = tmp_path / "bad.npy"
        np.save(bad, arrays[0])
    with pytest.raises(DatasetError, match=message):
        datasets.import_gppn(bad)


def imitate_error(tmp_path, *args) -> str:
    with pytest.raises(SystemExit) as exc:
        imitate.main([*args, "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "data"), "--no-progress"])
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_empty_training_split_is_refused(dataset, tmp_path):
    bad = tmp_path / "t0.npz"
    splits, meta = datasets.load_dataset(dataset)
    splits["train"] = splits["train"].subset(slice(0, 0))
    datasets.save_dataset(bad, splits, meta)
    message = imitate_error(tmp_path, "--env", "GridMaze-v0", "--size", "7", "--data", str(bad))
    assert "no maps in its train split" in message
    assert not (tmp_path / "run" / "last.pt").exists()


def test_dataset_of_another_topology_or_size_is_refused(dataset, tmp_path):
    imported = tmp_path / "imported.npz"  # as from --from-gppn: no env id to compare, only maps
    rewrite(dataset, imported, lambda a, m: m.update(env_id=None, env_kwargs={}))
    message = imitate_error(tmp_path, "--env", "Arm2DOF-CSpace-18", "--data", str(imported))
    assert "plane maps" in message and "torus" in message
    message = imitate_error(tmp_path, "--env", "GridMaze-15", "--data", str(imported))
    assert "7x7 maps" in message and "15x15" in message


# ------------------------------------------------------------------------------------------------- checkpoints


def tiny_run_checkpoint(path, planner="vin", model=None) -> None:
    """A checkpoint as imitate writes it, of a tiny VIN (or with the weights ``model`` of another planner)."""
    kwargs = {"l_h": 4, "l_q": 4, "k_fwd": 3, "kernel": 3, "discount": 0.95}
    net = make_planner(planner, **kwargs)
    config = {"planner": planner, "planner_kwargs": kwargs, "topology": "plane", "mapper": None}
    save_checkpoint(path, {"config": config, "model": model if model is not None else net.state_dict()})


def flip_tensor_bytes(path):
    """Flip four bytes in the middle of the checkpoint's largest tensor (stored uncompressed: torch still reads it)."""
    with zipfile.ZipFile(path) as z:
        largest = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    start, size = member_data_offset(path, largest.filename)
    flip_bytes(path, start + size // 2, 4)


def make_bad_checkpoint(kind: str, path):
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "flipped bytes in a tensor":
        flip_tensor_bytes(path)
    elif kind == "foreign torch file":
        torch.save({"weight": torch.zeros(3)}, path)
    elif kind == "pickled code":
        torch.save({"format": "idp-checkpoint", "fn": np.random.default_rng}, path)
    elif kind == "other version":
        torch.save({"format": "idp-checkpoint", "version": 99}, path)
    elif kind == "edited content":
        payload = torch.load(path, weights_only=True)
        payload["config"]["planner_kwargs"]["k_fwd"] = 30
        torch.save(payload, path)
    elif kind == "directory":
        path.unlink()
        path.mkdir()


BAD_CHECKPOINTS = {
    "truncated": "truncated",
    "random bytes": "not an IDP checkpoint",
    "flipped bytes in a tensor": "does not match the checksum",
    "foreign torch file": "not an IDP checkpoint",
    "pickled code": "not an IDP checkpoint",
    "other version": "checkpoint version 99",
    "edited content": "does not match the checksum",
    "directory": "is a directory",
}


@pytest.mark.parametrize("kind, message", list(BAD_CHECKPOINTS.items()), ids=list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_a_checkpoint_error_naming_the_problem(tmp_path, kind, message):
    path = tmp_path / "best.pt"
    tiny_run_checkpoint(path)
    PlannerPolicy.load(path)  # the good file loads
    make_bad_checkpoint(kind, path)
    for load in (load_checkpoint, PlannerPolicy.load):
        with pytest.raises(CheckpointError, match=message) as exc:
            load(path)
        assert "weights_only=False" not in str(exc.value)  # torch's advice to unpickle code is not passed on


def test_checkpoint_whose_weights_do_not_fit_its_config(tmp_path):
    path = tmp_path / "best.pt"
    tiny_run_checkpoint(path, "vin", model=make_planner("convgppn", hidden=4).state_dict())
    with pytest.raises(CheckpointError, match="do not fit the planner"):
        PlannerPolicy.load(path)


def test_checkpoints_of_version_1_without_a_checksum_still_load(tmp_path):
    path = tmp_path / "old.pt"
    tiny_run_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    del payload["checksum"]
    torch.save({**payload, "version": 1}, path)  # as written before checksums
    assert PlannerPolicy.load(path).config["planner"] == "vin"


def test_checkpoints_round_trip_exactly(tmp_path):
    planner = make_planner("id-vin", l_h=4, l_q=4)
    payload = {"model": planner.state_dict(), "history": [{"loss": float("nan"), "epoch": 1}], "best": None}
    payload["rng"] = {"torch": torch.get_rng_state(), "tuple": (1, 2.5, True)}
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c.pt", payload))
    assert all(torch.equal(loaded["model"][k], v) for k, v in planner.state_dict().items())
    assert loaded["history"][0]["epoch"] == 1 and loaded["rng"]["tuple"] == (1, 2.5, True)


# ------------------------------------------------------------------------------------------------ observations


@pytest.fixture(scope="module")
def policy_and_obs():
    import gymnasium as gym

    policy = PlannerPolicy(make_planner("vin", l_h=4, l_q=4, k_fwd=3))
    obs, _ = gym.make("IDP/GridMaze-v0", size=7).reset(seed=0)
    return policy, obs


def no_goal(obs):
    return {**obs, "goal": np.zeros_like(obs["goal"])}


def two_goals(obs):
    goal = obs["goal"].copy()
    free = np.argwhere((obs["occupancy"] == 0) & (goal == 0))[0]
    goal[tuple(free)] = 1
    return {**obs, "goal": goal}


BAD_OBSERVATIONS = {
    "goal map without a goal": (no_goal, "has no goal"),
    "goal map with two goals": (two_goals, "exactly one nonzero cell"),
    "float position": (lambda o: {**o, "position": o["position"] + 0.5}, "integer cells"),
    "position off the map": (lambda o: {**o, "position": np.array([7, 0])}, "position outside"),
    "goal of another shape": (lambda o: {**o, "goal": o["goal"][:3]}, "occupancy and goal must both be"),
    "no occupancy": (lambda o: {k: v for k, v in o.items() if k != "occupancy"}, "has no 'occupancy'"),
    "position of three numbers": (lambda o: {**o, "position": np.array([[1, 1, 1]])}, "shape (2,) or (n, 2)"),
}


@pytest.mark.parametrize("kind, case", list(BAD_OBSERVATIONS.items()), ids=list(BAD_OBSERVATIONS))
def test_policy_refuses_observations_it_cannot_act_on(policy_and_obs, kind, case):
    policy, obs = policy_and_obs
    policy.predict(obs)  # the good observation
    bad, message = case
    with pytest.raises(ValueError, match=re.escape(message)):
        policy.predict(bad(obs))


# ------------------------------------------------------------------------------------------ env and flag values

TINY = ["--env", "GridMaze-v0", "--size", "7", "--planner", "vin", "--l-h", "4", "--l-q", "4", "--k", "3"]
TINY += ["--train", "8", "--val", "4", "--test", "4", "--threads", "1", "--no-gif"]

BAD_FLAGS = {
    "fixed-size id with --size": (["--env", "GridMaze-15", "--size", "9"], "use IDP/GridMaze-v0 with size 9"),
    "--size for an id without one": (["--env", "Arm2DOF-CSpace-18", "--size", "9"], "takes no size"),
    "maze size over memory": (["--env", "GridMaze-v0", "--size", "99999"], "GiB of memory"),
    "even maze size": (["--env", "GridMaze-v0", "--size", "8"], "odd integer"),
    "--device tpu": (["--device", "tpu"], "--device tpu: not a device"),
    "--device mps": (["--device", "mps"], "MPS is not available"),
    "--device cuda:7": (["--device", "cuda:7"], "cuda:7"),
    "--epochs 0": ([*TINY, "--epochs", "0"], "no epochs to train"),
    "--batch-size 0": (["--batch-size", "0"], "at least 1"),
    "--lr -1": (["--lr", "-1"], "must be positive"),
    "--lr nan": (["--lr", "nan"], "--lr must be a finite number"),
    "--clip nan": (["--clip", "nan"], "--clip must be a finite number"),
    "--seed -1": (["--seed", "-1"], "--seed must be between 0 and 2**32 - 1"),
    "--solver-fwd foo": (["--solver-fwd", "foo"], "argument --solver-fwd: invalid choice: 'foo'"),
    "--group c8": (["--planner", "symvin", "--group", "c8"], "argument --group: invalid choice: 'c8'"),
    "--resume without a run": (["--resume", "--train", "8", "--val", "4", "--test", "4"], "no checkpoint at"),
}


@pytest.mark.parametrize("kind, case", list(BAD_FLAGS.items()), ids=list(BAD_FLAGS))
def test_bad_flags_are_one_error_line(tmp_path, kind, case):
    if kind == "--device mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    if kind == "--device cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    args, message = case
    assert message in imitate_error(tmp_path, *args)


def test_out_that_is_a_file_or_unwritable_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="--out .* is a file"):
        imitate.main([*TINY, "--out", str(tmp_path / "file"), "--cache-dir", str(tmp_path / "data")])
    with pytest.raises(SystemExit, match="is not writable"):
        imitate.main([*TINY, "--out", str(tmp_path / "file" / "run"), "--cache-dir", str(tmp_path / "data")])
    assert not (tmp_path / "data").exists()  # refused before the dataset was made


def test_full_disk_is_refused_before_training(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(run_files.shutil, "disk_usage", lambda p: real(p)._replace(free=2**20))
    with pytest.raises(SystemExit, match="MiB free on its disk"):
        imitate.main([*TINY, "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "data"), "--no-progress"])
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("tasks: [\n  - {name: a\n", "not valid YAML at line"),
        ("- just\n- a list\n", "YAML mapping"),
        ("tasks: maze\nplanners: [vin]\nk: [3]\nseeds: [0]\n", "tasks must be a non-empty list"),
        ("tasks: [maze15]\nplanners: [vin]\nk: [3]\nseeds: [0]\n", "every task is a mapping"),
        ("tasks: [{name: a, env: GridMaze-15}]\nplanners: [vin]\nk: [3]\nseeds: [0]\ncommon: 3\n", "common must be"),
    ],
)
def test_malformed_sweep_config_is_one_error_line(tmp_path, text, message):
    config = tmp_path / "sweep.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit, match=message) as exc:
        experiments.main(["run", str(config), "--out", str(tmp_path / "sweep")])
    assert str(exc.value.code).startswith("error: ") and "\n" not in str(exc.value.code)


def test_datasets_command_line_errors_are_one_line(tmp_path, monkeypatch, capsys):
    def error(*args) -> str:
        with pytest.raises(SystemExit) as exc:
            datasets.main(["--train", "4", "--val", "2", "--test", "2", *args])
        message = str(exc.value.code)
        assert message.startswith("error: ") and "\n" not in message, message
        return message

    assert "is a directory; give the dataset's file name" in error("--out", str(tmp_path))
    assert "has size 15" in error("--env", "GridMaze-15", "--size", "9", "--out", str(tmp_path / "d.npz"))
    assert "takes no size" in error("--env", "Arm2DOF-CSpace-18", "--size", "9", "--out", str(tmp_path / "d.npz"))
    assert "unknown environment 'Nope'" in error("--env", "Nope", "--out", str(tmp_path / "d.npz"))
    assert "must be non-negative" in error("--train", "-1", "--out", str(tmp_path / "d.npz"))
    assert "no GPPN dataset file" in error("--from-gppn", str(tmp_path / "gppn.npz"), "--out", str(tmp_path / "d.npz"))
    with pytest.raises(SystemExit):  # argparse's usage line, then the error
        datasets.main(["--seed", "-1", "--out", str(tmp_path / "d.npz")])
    assert "--seed must be between 0 and 2**32 - 1" in capsys.readouterr().err

    def disk_full(file, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    assert "the disk is full" in error("--env", "GridMaze-v0", "--size", "7", "--out", str(tmp_path / "d.npz"))
    assert list(tmp_path.iterdir()) == []  # no partial file


def test_ctrl_c_in_the_commands_says_how_to_continue(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "generate_splits", interrupt)
    with pytest.raises(SystemExit) as exc:
        datasets.main(["--out", str(tmp_path / "d.npz")])
    assert exc.value.code == 130 and "rerun the command" in capsys.readouterr().err
    assert not (tmp_path / "d.npz").exists()

    monkeypatch.setattr(experiments.cli, "run_sweep", interrupt)
    with pytest.raises(SystemExit) as exc:
        experiments.main(
            [
                "run",
                str(Path(__file__).parents[1] / "experiments" / "nav2d.yaml"),
                "--small",
                "--out",
                str(tmp_path / "sweep"),
            ]
        )
    assert exc.value.code == 130 and "rerun the same command to continue" in capsys.readouterr().err


def test_unwritable_cache_dir_is_one_line_that_says_to_rerun(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exc:
        imitate.main([*TINY, "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "file" / "data")])
    message = str(exc.value.code)
    assert message.startswith("error: could not write or read") and "\n" not in message
    assert "Not a directory" in message and "nothing to resume" in message


@pytest.mark.parametrize("flag", ["--jobs", "--threads"])
def test_sweep_counts_below_one_are_refused(tmp_path, flag):
    config = str(Path(__file__).parents[1] / "experiments" / "nav2d.yaml")
    with pytest.raises(SystemExit, match=f"error: {flag} must be at least 1, got 0"):
        experiments.main(["run", config, "--small", flag, "0", "--out", str(tmp_path / "sweep")])
    assert not (tmp_path / "sweep").exists()
