"""The command line's setting flags are made from the ``Settings`` fields: every command that takes settings
gets its flags, help, choices, types and ranges from there, and a flag beats its environment variable,
which beats the field's default (pure, no model).
Run: ``.venv/bin/python -m pytest tests/unit/test_settings_flags.py -q``.
"""

from __future__ import annotations

import argparse
from typing import get_args

import pytest

from chatbot.cli.main import (
    BACKEND_SETTINGS,
    MODEL_SETTINGS,
    TUNING_SETTINGS,
    build_parser,
    env_of,
    flag_of,
    main,
    setting_help,
    settings_from,
)
from chatbot.settings import PrecisionChoice, Settings


def command(name: str) -> argparse.ArgumentParser:
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return commands.choices[name]


def setting_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.dest in Settings.model_fields}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("serve", set(Settings.model_fields)),
        ("chat", {*MODEL_SETTINGS, *BACKEND_SETTINGS, *TUNING_SETTINGS, "system_prompt"}),
        ("doctor", {*MODEL_SETTINGS, *BACKEND_SETTINGS, *TUNING_SETTINGS}),
        ("batch", {*MODEL_SETTINGS, *TUNING_SETTINGS}),
    ],
)
def test_each_command_takes_its_settings_as_flags_made_from_the_fields(name: str, expected: set[str]) -> None:
    actions = setting_actions(command(name))
    assert set(actions) == expected
    for field, action in actions.items():
        on_by_default = Settings.model_fields[field].default is True  # a switch that is on also has its --no- form
        assert action.option_strings == [flag_of(field), *(["--no-" + flag_of(field)[2:]] if on_by_default else [])]
        assert action.default is None  # not given: the environment or the field's default decides
        description = Settings.model_fields[field].description
        assert description and action.help == setting_help(field) and description in action.help
        assert env_of(field) in action.help


def test_help_lists_every_flag_with_its_description_default_range_and_variable() -> None:
    text = " ".join(command("serve").format_help().split())  # argparse wraps lines
    for field in Settings.model_fields:
        assert flag_of(field) in text
    assert "Web UI port. [default 7860; from 1 to 65535; env QWEN_PORT]" in text
    assert "[more than 0, at most 1; env QWEN_GPU_MEMORY_LIMIT]" in text
    assert "--demo Use a generated tiny demo model" in text and "[off by default; env QWEN_DEMO]" in text
    assert "--max-batch N" in text and "--auth-file FILE" in text and "--backend URL" in text


def test_types_and_choices_come_from_the_fields() -> None:
    actions = setting_actions(command("serve"))
    assert actions["precision"].choices == list(get_args(PrecisionChoice))
    assert actions["log_level"].choices == ["debug", "info", "warning", "error"]
    assert actions["port"].type is int and actions["max_upload_mb"].type is float
    assert actions["demo"].nargs == 0  # a switch, no value


def test_a_flag_beats_its_environment_variable_which_beats_the_default(monkeypatch) -> None:
    def settings(*args: str) -> Settings:
        return settings_from(build_parser().parse_args(["serve", *args]))

    assert (settings().port, settings().precision, settings().demo) == (7860, "auto", False)
    monkeypatch.setenv("QWEN_PORT", "9000")
    monkeypatch.setenv("QWEN_PRECISION", "fp16")
    monkeypatch.setenv("QWEN_DEMO", "1")
    assert (settings().port, settings().precision, settings().demo) == (9000, "fp16", True)
    assert settings("--port", "9100", "--precision", "bf16").port == 9100
    assert settings("--precision", "bf16").precision == "bf16"
    monkeypatch.setenv("QWEN_SYSTEM_PROMPT", "from the environment")
    chat = settings_from(build_parser().parse_args(["chat", "--system-prompt", "from the flag"]))
    assert chat.system_prompt == "from the flag"


def test_values_out_of_range_are_refused_by_the_settings_and_bad_numbers_by_the_parser(capsys) -> None:
    assert main(["serve", "--port", "70000"]) == 2  # refused before anything starts
    assert "invalid setting port" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--max-batch", "many"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--precision", "fp4"])


def test_cpu_tuning_switches_are_settings_whose_flags_reach_the_model_layer(monkeypatch) -> None:
    """A tuning flag is exported to its variable, where the model layer (and the bench's workers) read it."""
    from chatbot.model.cpu_decode import requested_mode
    from chatbot.model.cpu_layers import batched_decode_rows, packing_works
    from chatbot.model.precision import batch_invariant_requested

    for name in TUNING_SETTINGS:
        monkeypatch.delenv(env_of(name), raising=False)
    args = ["serve", "--cpu-decode-step", "eager", "--cpu-decode-rows", "16", "--no-cpu-prefill-pack"]
    settings = settings_from(build_parser().parse_args([*args, "--batch-invariant"]))
    assert (settings.cpu_decode_step, settings.cpu_decode_rows, settings.cpu_prefill_pack) == ("eager", 16, False)
    exported: dict[str, str] = {}
    settings.export_tuning(exported)  # os.environ by default; here through monkeypatch, undone after the test
    for variable, value in exported.items():
        monkeypatch.setenv(variable, value)
    assert requested_mode() == "eager" and batched_decode_rows() == 16
    assert not packing_works() and batch_invariant_requested()
    monkeypatch.setenv("QWEN_CPU_DECODE_ROWS", "2")  # a flag beats the variable it is exported to
    assert settings_from(build_parser().parse_args(["chat", "--cpu-decode-rows", "3"])).cpu_decode_rows == 3


def test_a_bad_tuning_variable_names_itself_and_what_it_takes(monkeypatch, capsys) -> None:
    from chatbot.settings import tuning

    with pytest.raises(ValueError, match="QWEN_CPU_DECODE_ROWS: input should be less than or equal to 16, not '99'"):
        tuning({"QWEN_CPU_DECODE_ROWS": "99"})
    with pytest.raises(ValueError, match="QWEN_INT8_ISA: input should be 'auto', 'avx512-vnni', 'avx-vnni' or 'avx2'"):
        tuning({"QWEN_INT8_ISA": "sse2"})
    monkeypatch.setenv("QWEN_CPU_DECODE_STEP", "fast")
    assert main(["doctor"]) == 2  # the command refuses to start, naming the setting
    assert "invalid setting cpu_decode_step" in capsys.readouterr().err
