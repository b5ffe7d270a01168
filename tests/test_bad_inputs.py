"""Bad inputs get our own error type and a message that names the problem: corrupt, truncated, foreign and
mis-shaped datasets and checkpoints, observations a policy cannot act on, and bad env, task and flag values."""

import re
import zipfile

import numpy as np
import pytest
import torch

import idp_envs  # noqa: F401
from idp_agents.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from idp_agents.planners import make_planner
from idp_agents.policy import PlannerPolicy

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
