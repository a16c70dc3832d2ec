"""The command line, run as users run it: make-model, quantize, doctor, and start-up without a model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chatbot", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(("fmt", "shards"), [("fp8", 1), ("compressed-tensors", 1), ("bf16", 2), ("fp8", 3)])
def test_make_model_writes_the_real_format(tmp_path, fmt, shards) -> None:
    out = tmp_path / "model"
    result = cli("make-model", str(out), "--format", fmt, "--shards", str(shards))
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).exists()
    if shards > 1:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) == shards
    if fmt == "fp8":
        assert config["quantization_config"] == {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [128, 128],
        }


def test_make_model_06b_has_exactly_qwen3_06b_dimensions() -> None:
    from chatbot.authoring.modelgen import SIZES

    assert SIZES["0.6b"] == {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
        "tie_word_embeddings": True,
    }


def test_quantize_command(make_checkpoint, tmp_path) -> None:
    result = cli("quantize", str(make_checkpoint("bf16")), str(tmp_path / "fp8"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "fp8" / "config.json").read_text())["quantization_config"]["quant_method"] == "fp8"
    again = cli("quantize", str(tmp_path / "fp8"), str(tmp_path / "twice"))
    assert again.returncode == 1 and "already quantized" in again.stderr


def test_doctor_reports_device_checkpoint_and_precision(scripted_fp8) -> None:
    result = cli("doctor", "--model", str(scripted_fp8))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "torch" in out and "GPU: none visible" in out
    assert "FP8 e4m3, 128x128 blocks" in out
    assert "would run FP16 (auto): FP16 fallback: no CUDA GPU" in out
    assert "FP16 -> BF16 -> FP32" in out
    assert "No problems found." in out


def test_doctor_load_runs_the_probe(scripted_fp8) -> None:
    result = cli("doctor", "--model", str(scripted_fp8), "--load", "--precision", "fp32")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "probe forward gave finite logits" in result.stdout


def test_start_without_network_fails_fast_naming_the_way_out() -> None:
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": "/nonexistent-cache"}
    env = {**os.environ, **env}
    # No retries for minutes: the timeout turns a hang into a failure (it is a bound, not a measurement).
    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 1
    assert "Qwen/Qwen3-0.6B-FP8" in result.stderr
    assert "--model PATH" in result.stderr and "--demo" in result.stderr


def test_offline_mode_says_the_model_is_not_cached() -> None:
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-cache"},
    )
    assert result.returncode == 1
    assert "not in the local Hugging Face cache" in result.stderr and "--demo" in result.stderr


def test_invalid_setting_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "app.py", "--demo", "--auth", "nocolon"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "auth must look like user:password" in result.stderr


def test_terminal_chat_streams_replies_and_keeps_history(scripted_fp8) -> None:
    from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING

    done = subprocess.run(
        [sys.executable, "-m", "chatbot", "chat", "--model", str(scripted_fp8), "--think"],
        cwd=ROOT,
        input="Hello\n/clear\nAgain /no_think\n/quit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert SCRIPTED_THINKING in done.stdout and done.stdout.count(SCRIPTED_ANSWER) == 2
    assert done.stdout.count(SCRIPTED_THINKING) == 1  # /no_think turned thinking off for the second message
    assert "(history cleared)" in done.stdout and "FP16 fallback on cpu" in done.stdout
    # The precision line comes before the first reply; thinking and answer have their own labelled lines.
    assert done.stdout.index("FP16 fallback on cpu") < done.stdout.index(SCRIPTED_ANSWER)
    assert re.search(r"^thinking:\n" + re.escape(SCRIPTED_THINKING), done.stdout, re.M)
    assert re.search(r"^answer:\n" + re.escape(SCRIPTED_ANSWER), done.stdout, re.M)


def test_terminal_commands_alone_are_not_sent_and_thinking_defaults_on(scripted_fp8) -> None:
    from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING

    done = subprocess.run(
        [sys.executable, "-m", "chatbot", "chat", "--model", str(scripted_fp8)],
        cwd=ROOT,
        input="/help\nHello\n/no_think\nAgain\n/quit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "/clear       forget the history" in done.stdout  # /help printed, not sent
    assert done.stdout.count(SCRIPTED_ANSWER) == 2  # two replies: /help and /no_think were not messages
    assert done.stdout.count(SCRIPTED_THINKING) == 1  # on by default, then off from /no_think on
    assert "(thinking off from the next message)" in done.stdout


def test_terminal_chat_has_line_editing_history_and_a_loading_bar(scripted_fp8) -> None:
    from helpers.terminal import UP_ARROW, Terminal

    left = "\x1b[D"
    chat = Terminal([sys.executable, "-m", "chatbot", "chat", "--model", str(scripted_fp8), "--device", "cpu"])
    try:
        at = chat.expect("you> ", 0)
        loading = chat.output[:at]
        # A bar while the model loads, ending full once it is ready (before the first prompt).
        assert re.search(r"loading \[#{24}\] 100%", loading), loading[-2000:]
        chat.type("/hlp" + left * 2 + "e\r")  # edited to /help with the arrow keys: a command, not a message
        at = chat.expect("/clear       forget the history", at)
        at = chat.expect("you> ", at)
        chat.type(UP_ARROW + "\r")  # the previous line again
        at = chat.expect("/clear       forget the history", at)
        at = chat.expect("you> ", at)
        chat.type("/quit\r")
    finally:
        status = chat.close()
    assert status == 0, chat.output[-3000:]
    assert "^[[A" not in chat.output and "^[[D" not in chat.output  # keys, not printed escape codes
    assert "answer:" not in chat.output  # nothing was sent to the model


def test_a_demo_model_from_an_older_version_is_remade_with_the_current_template(tmp_path, monkeypatch) -> None:
    from chatbot.authoring import tokenizer_build
    from chatbot.authoring.modelgen import ensure_demo_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = ensure_demo_model()
    (path / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")  # an older template, no tools
    assert ensure_demo_model() == path
    assert (path / "chat_template.jinja").read_text(encoding="utf-8") == tokenizer_build.chat_template()
    assert "<tools>" in tokenizer_build.chat_template()
