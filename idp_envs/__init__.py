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


def size_kwargs(env_id: str, size: int | None) -> dict:
    """The keyword arguments that give a registered id maps of ``size``: ``{"size": size}`` for an id that takes
    one (``IDP/GridMaze-v0``, ``IDP/VisualMaze-v0``), ``{}`` when ``size`` is None. ``ValueError`` for an id whose
    size is fixed (``IDP/GridMaze-15-v0`` would train on other maps than its name says) or that has none."""
    if size is None:
        return {}
    import inspect

    from gymnasium.envs.registration import load_env_creator

    spec = registry[env_id]
    fixed = spec.kwargs.get("size")
    if fixed is not None:
        base = env_id.rsplit("-", 2)[0] + "-v0"
        hint = f"; for {size}x{size} maps use {base} with size {size}" if base in registry else ""
        raise ValueError(f"{env_id} has size {fixed}, so a size of {size} would mislabel its maps{hint}")
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    if "size" not in inspect.signature(creator).parameters:
        sized = [i for i in registered_ids() if "size" not in registry[i].kwargs and i.endswith("Maze-v0")]
        raise ValueError(f"{env_id} takes no size; ids that do: {', '.join(sized)}")
    return {"size": int(size)}


__all__ = ["PlanningTask", "TaskBatch", "registered_ids", "resolve_env_id", "size_kwargs"]
