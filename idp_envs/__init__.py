"""Gymnasium planning tasks on grids, registered in the ``IDP`` namespace on import.

>>> import gymnasium as gym, idp_envs
>>> env = gym.make("IDP/GridMaze-15-v0")
"""

from gymnasium.envs.registration import register, registry

from idp_envs.tasks import PlanningTask, TaskBatch

MAZE_SIZES = (15, 27, 49, 75)


def _register(env_id: str, entry_point: str, **kwargs) -> None:
    if env_id not in registry:
        register(id=env_id, entry_point=entry_point, kwargs=kwargs)


for _size in MAZE_SIZES:
    _register(f"IDP/GridMaze-{_size}-v0", "idp_envs.envs.maze:GridMazeEnv", size=_size)
_register("IDP/GridMaze-v0", "idp_envs.envs.maze:GridMazeEnv")
_register("IDP/VisualMaze-15-v0", "idp_envs.envs.visual:VisualMazeEnv", size=15)
_register("IDP/VisualMaze-v0", "idp_envs.envs.visual:VisualMazeEnv")
for _bins in (18, 36):
    _register(f"IDP/Arm2DOF-CSpace-{_bins}-v0", "idp_envs.envs.arm:ArmCSpaceEnv", bins=_bins)
_register("IDP/Arm2DOF-Workspace-v0", "idp_envs.envs.arm:ArmWorkspaceEnv", bins=18)


def registered_ids() -> list[str]:
    """Every environment id this package registers."""
    return sorted(k for k in registry if k.startswith("IDP/"))


def resolve_env_id(name: str) -> str:
    """The registered id for ``name``, given with or without the ``IDP/`` prefix and the ``-v0`` version."""
    ids = registered_ids()
    base = name if name.startswith("IDP/") else f"IDP/{name}"
    for candidate in (base, f"{base}-v0"):
        if candidate in ids:
            return candidate
    raise ValueError(f"unknown environment {name!r}; registered: {', '.join(ids)}")


__all__ = ["PlanningTask", "TaskBatch", "registered_ids", "resolve_env_id"]
