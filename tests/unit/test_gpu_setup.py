"""Setting up on GPU machines, tested without one: which torch start.sh installs for a driver, and the
loud warning when a driver is there but torch cannot use it (instead of silently running on the CPU)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from chatbot.model import device

ROOT = Path(__file__).resolve().parents[2]


def torch_choice(tmp_path: Path, smi_output: str | None, **env: str) -> tuple[str, str, str]:
    """start.sh's torch_choice with a fake ``nvidia-smi`` printing ``smi_output`` (None: no nvidia-smi).

    Returns (spec, index URL or "", what it said on stderr)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    if smi_output is not None:
        smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{smi_output}\nEOF\n")
        smi.chmod(0o755)
    path = f"{bin_dir}:/usr/bin:/bin"
    result = subprocess.run(
        ["bash", "-c", f"source {ROOT / 'start.sh'}; torch_choice"],
        capture_output=True,
        text=True,
        env={"PATH": path, **env},
        check=True,
    )
    spec, _, index = result.stdout.strip().partition(" ")
    return spec, index, result.stderr


def smi_header(cuda: str) -> str:
    return f"| NVIDIA-SMI 570.00       Driver Version: 570.00       CUDA Version: {cuda}     |"


@pytest.mark.parametrize(
    ("cuda", "index"),
    [
        ("13.0", ""),  # PyPI's default Linux torch is built for CUDA 13
        ("12.9", "https://download.pytorch.org/whl/cu128"),
        ("12.8", "https://download.pytorch.org/whl/cu128"),
        ("12.6", "https://download.pytorch.org/whl/cu126"),
    ],
)
def test_start_sh_installs_a_torch_built_for_the_cuda_the_driver_supports(tmp_path, cuda, index) -> None:
    assert torch_choice(tmp_path, smi_header(cuda))[:2] == ("torch", index)


def test_start_sh_says_when_the_driver_is_too_old(tmp_path) -> None:
    said = torch_choice(tmp_path, smi_header("12.2"))[2]
    assert "supports CUDA 12.2 only" in said and "Update the driver" in said


def test_start_sh_without_nvidia_takes_the_pinned_cpu_build_and_honours_overrides(tmp_path) -> None:
    assert torch_choice(tmp_path, None)[:2] == ("torch==2.13.0", "")
    chosen = torch_choice(tmp_path, smi_header("13.0"), TORCH_INDEX_URL="https://example.invalid/whl/cu126")
    assert chosen[:2] == ("torch", "https://example.invalid/whl/cu126")


def test_a_driver_that_torch_cannot_use_is_a_loud_warning_not_a_silent_cpu_run(monkeypatch, caplog) -> None:
    reason = device.unusable_cuda_reason(driver="550.54.15", cuda_available=False)
    assert reason is not None and "NVIDIA driver (550.54.15) is installed but torch cannot use the GPU" in reason
    assert device.unusable_cuda_reason(driver=None, cuda_available=False) is None  # no driver: plain CPU machine
    assert device.unusable_cuda_reason(driver="550.54.15", cuda_available=True) is None

    monkeypatch.setattr(device, "nvidia_driver_version", lambda: "550.54.15")
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="chatbot.model.device"):
        chosen = device.detect_device("auto")
    assert chosen.kind in ("cpu", "mps")
    assert "torch cannot use the GPU" in caplog.text and "Running on the CPU instead" in caplog.text
