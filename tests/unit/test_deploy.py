"""The deployment examples in deploy/ stay in step with the app: they parse, and the app accepts their settings.

Nothing here starts vLLM, SGLang, Docker or Kubernetes (none of them can run on the machines this is
tested on); deploy/README.md says what was and was not run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers.app import ROOT

from chatbot.cli.main import build_parser, settings_from

DEPLOY = ROOT / "deploy"


def app_settings(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The settings the app would run with: its flags parsed by our CLI, its QWEN_* variables applied."""
    for name, value in env.items():
        if name.endswith("_FILE"):  # the secrets are mounted files: stand-ins with the same shape
            target = tmp_path / name.lower()
            target.write_text("user:password" if "AUTH" in name else "key")
            value = str(target)
        monkeypatch.setenv(name, value)
    return settings_from(build_parser().parse_args(["serve", *args]))


def test_compose_file_runs_vllm_with_the_reasoning_parser_and_the_app_in_front(monkeypatch, tmp_path) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    vllm, chat = compose["services"]["vllm"], compose["services"]["chat"]
    assert vllm["command"][:3] == ["Qwen/Qwen3-0.6B-FP8", "--reasoning-parser", "qwen3"]
    env = {k: v for k, v in chat["environment"].items() if not v.startswith("$")}
    settings = app_settings(chat["command"], env, monkeypatch, tmp_path)
    assert settings.backend == "http://vllm:8000/v1" and settings.backend_precision == "fp8"
    assert settings.api_key is not None and settings.auth is not None
    assert (ROOT / chat["build"]["dockerfile"]).exists()


def test_kubernetes_manifests_pair_a_vllm_service_with_the_app(monkeypatch, tmp_path) -> None:
    documents = [
        doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
    ]
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in documents}
    assert kinds == {
        ("Deployment", "vllm"),
        ("Service", "vllm"),
        ("Deployment", "qwen3-chat"),
        ("Service", "qwen3-chat"),
    }
    by_name = {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}
    vllm = by_name[("Deployment", "vllm")]["spec"]["template"]["spec"]["containers"][0]
    assert "--reasoning-parser" in vllm["args"] and vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    chat = by_name[("Deployment", "qwen3-chat")]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item["value"] for item in chat["env"] if "value" in item}
    settings = app_settings(chat["args"], env, monkeypatch, tmp_path)
    port = by_name[("Service", "vllm")]["spec"]["ports"][0]["port"]
    assert settings.backend == f"http://vllm:{port}/v1"
    assert by_name[("Service", "qwen3-chat")]["spec"]["sessionAffinity"] == "ClientIP"


def test_the_serving_scripts_name_the_reasoning_parser() -> None:
    for script in ("vllm.sh", "sglang.sh"):
        text = (DEPLOY / script).read_text()
        assert "Qwen/Qwen3-0.6B-FP8" in text and "--reasoning-parser qwen3" in text
