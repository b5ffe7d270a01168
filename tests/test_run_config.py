"""The run configuration: flags, checks, config files and resume comparison all come from the fields."""

import dataclasses
import json

import pytest

from idp_agents import imitate, implicit
from idp_agents.config_fields import setting
from idp_agents.implicit import configured_solver
from idp_agents.planners import FIXED_POINT_KEYS, make_planner
from idp_agents.run_config import FIELD_OF_FIXED_POINT, RunConfig
from idp_agents.run_flags import (
    CHANGEABLE_ON_RESUME,
    build_parser,
    compared_on_resume,
    parse_config,
    resume_differences,
    write_config_file,
)


def out_flags(tmp_path) -> list[str]:
    """--out in the test's folder: a config that wrongly passed would train there, not in the checkout."""
    return ["--out", str(tmp_path / "run")]


# a training setting added the way a maintainer would add one: one field
Extended = dataclasses.make_dataclass(
    "Extended",
    [("warmup_epochs", int, setting(0, "epochs at a rising learning rate", minimum=0))],
    bases=(RunConfig,),
)


def test_a_new_field_is_a_flag_a_config_file_setting_a_check_and_a_resume_comparison(tmp_path):
    parser = build_parser(cls=Extended)
    config = parse_config(["--warmup-epochs", "3", "--planner", "vin"], parser, cls=Extended)
    assert config.warmup_epochs == 3 and "--warmup-epochs" in parser.format_help()
    with pytest.raises(ValueError, match="--warmup-epochs must be at least 0, got -1"):
        parse_config(["--warmup-epochs", "-1"], build_parser(cls=Extended), cls=Extended)
    write_config_file(config, tmp_path / "config.json")
    assert parse_config(["--config", str(tmp_path / "config.json")], cls=Extended) == config
    assert "warmup_epochs" in compared_on_resume(Extended)
    saved = dataclasses.asdict(config)
    assert resume_differences(saved, config) == {}
    assert resume_differences({**saved, "warmup_epochs": 1}, config) == {"warmup_epochs": (1, 3)}
    assert resume_differences({k: v for k, v in saved.items() if k != "warmup_epochs"}, config) == {
        "warmup_epochs": (0, 3)  # a checkpoint older than the setting trained with its default
    }


def test_every_field_has_one_flag_and_every_fixed_point_setting_a_field():
    parser = build_parser()
    dests = [a.dest for a in parser._actions if a.option_strings and a.dest not in ("help", "config")]
    assert sorted(dests) == sorted(f.name for f in dataclasses.fields(RunConfig))
    assert set(FIELD_OF_FIXED_POINT) == set(FIXED_POINT_KEYS)  # every solver setting reachable from flags and YAML
    assert set(CHANGEABLE_ON_RESUME) <= {f.name for f in dataclasses.fields(RunConfig)}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--solver-fwd", "andersen"], "argument --solver-fwd: invalid choice: 'andersen'"),
        (["--jac-reg", "-1"], "--jac-reg must be at least 0, got -1.0"),
        (["--gradient-gain-cap", "0.5"], "--gradient-gain-cap must be at least 1"),
        (["--phantom-steps", "0"], "--phantom-steps must be at least 1, got 0"),
        (["--k-fwd", "0"], "--k-fwd must be at least 1, got 0"),
        (["--planner", "convgppn", "--discount", "0.9"], "convgppn does not take ['discount']"),
        (["--lr", "nan"], "--lr must be a finite number"),
        (["--planner", "vin", "--discount", "1.5"], "--planner vin: discount must lie in (0, 1)"),
        (["--planner", "vin", "--kernel", "4"], "--planner vin: kernel must be a positive odd int"),
    ],
)
def test_a_bad_value_fails_before_any_dataset_naming_its_flag(tmp_path, flags, message):
    with pytest.raises(SystemExit) as exc:
        imitate.main([*flags, "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "data")])
    assert message in str(exc.value.code) and str(exc.value.code).startswith("error: ")
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_flags_beside_a_config_file_override_it(tmp_path):
    write_config_file(RunConfig(planner="vin", lr=5e-4, epochs=3), tmp_path / "config.json")
    config = parse_config(["--config", str(tmp_path / "config.json"), "--epochs", "7"])
    assert (config.planner, config.lr, config.epochs) == ("vin", 5e-4, 7)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"planner": "vin", "learning_rate": 1}', "['learning_rate'] are not settings of a run"),
        ('{"planner": ', "is not a JSON config file"),
        ("[1, 2]", "holds list, not a mapping"),
        ('{"planner": "gppn"}', "--planner 'gppn': choose one of"),
        ('{"lr": [0.001]}', "--lr must be float, got [0.001]"),
        ('{"k_fwd": 2.5}', "--k-fwd must be int, got 2.5"),
        ('{"gif": 1}', "--no-gif must be bool, got 1"),
    ],
)
def test_a_bad_config_file_is_named(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(SystemExit, match="error: .*" + message.replace("[", r"\[").replace("]", r"\]")):
        imitate.main(
            ["--config", str(tmp_path / "config.json"), "--cache-dir", str(tmp_path / "data")] + out_flags(tmp_path)
        )
    assert not (tmp_path / "data").exists()


def test_settings_reach_the_planner_and_programmatic_configs_are_checked_too():
    config = RunConfig(planner="id-vin", phantom_steps=3, forward_dtype="bfloat16", discount=0, kernel=3)
    planner = make_planner(config.planner, **config.planner_kwargs())
    assert planner.fixed_point.phantom_steps == 3 and planner.fixed_point.forward_dtype == "bfloat16"
    assert planner.step.discount is None and planner.step.kernel == 3  # 0: the unbounded step
    assert RunConfig(clip=0).clip is None  # no clip
    anderson = make_planner("id-vin", **RunConfig(anderson_memory=3, anderson_mixing=0.7).planner_kwargs())
    assert configured_solver(anderson.fixed_point, "anderson").keywords == {"m": 3, "beta": 0.7}
    with pytest.raises(ValueError, match="--solver-bwd 'newton': choose one of"):
        RunConfig(solver_bwd="newton")


def test_a_config_file_holds_every_field(tmp_path):
    write_config_file(RunConfig(), tmp_path / "config.json")
    assert set(json.loads((tmp_path / "config.json").read_text())) == {f.name for f in dataclasses.fields(RunConfig)}


def test_a_regulariser_schedule_and_step_switches_from_the_command_line_reach_training(tmp_path, monkeypatch):
    """--jac-reg-every numbers the training steps across epochs (not the calls a config object has seen)."""
    tiny = ["--env", "GridMaze-v0", "--size", "7", "--planner", "id-vin", "--l-h", "4", "--l-q", "4"]
    tiny += ["--train", "8", "--val", "4", "--test", "4", "--threads", "1", "--no-gif", "--no-progress"]
    due, built = [], []
    original_due, original_make = implicit._jac_loss_due, imitate.make_planner
    monkeypatch.setattr(implicit, "_jac_loss_due", lambda c, step: due.append(step) or original_due(c, step))
    monkeypatch.setattr(imitate, "make_planner", lambda *a, **k: built.append(original_make(*a, **k)) or built[-1])
    report = imitate.main(
        [*tiny, "--batch-size", "4", "--epochs", "2", "--jac-reg", "0.1", "--jac-reg-every", "3", "--plain-steps"]
        + ["--compile", "0", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "data")]
    )
    assert report["config"]["planner_kwargs"]["jac_reg_every"] == 3
    training = [s for s in due if s is not None]
    assert training[-4:] == [0, 1, 2, 3]  # two batches of 4 maps per epoch, numbered across the two epochs
    assert [s for s in training[-4:] if s % 3 == 0] == [0, 3]
    assert not built[-1].step.fused and built[-1].step.compile == "0"  # the step attributes reach the planner
