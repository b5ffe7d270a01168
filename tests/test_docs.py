"""What the README and the examples tell a new user is what the code does."""

import re
import shlex
from pathlib import Path

from idp_agents.run_flags import parse_config

ROOT = Path(__file__).parents[1]


def readme_main_command() -> list[str]:
    """The flags of the README's first ``python -m idp_agents.imitate`` command (its main job)."""
    line = next(x for x in (ROOT / "README.md").read_text().splitlines() if "python -m idp_agents.imitate" in x)
    return shlex.split(line.split("python -m idp_agents.imitate", 1)[1])


def test_examples_default_to_the_checkpoint_the_readme_main_job_writes():
    config = parse_config(readme_main_command())
    written = f"{config.out}/best.pt"
    for example in ("evaluate_with_sb3.py", "render_rollout.py"):
        defaults = re.findall(r'else "([^"]+\.pt)"', (ROOT / "examples" / example).read_text())
        assert defaults == [written], (example, defaults, written)


def test_readme_main_command_and_the_training_example_set_one_thread():
    """On a busy machine one thread per core slows torch's CPU kernels several times over (issue 14)."""
    assert parse_config(readme_main_command()).threads == 1
    assert '"--threads", "1"' in (ROOT / "examples" / "train_gridmaze.py").read_text()
