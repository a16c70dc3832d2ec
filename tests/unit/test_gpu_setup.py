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


CU128 = "https://download.pytorch.org/whl/cu128"
CU126 = "https://download.pytorch.org/whl/cu126"


@pytest.mark.parametrize(
    ("cuda", "spec", "index"),
    [
        ("13.0", "torch==2.13.0", ""),  # PyPI's Linux torch is built for CUDA 13
        ("12.9", "torch==2.11.0+cu128", CU128),  # 2.11 is the last release with CUDA 12.8 builds
        ("12.8", "torch==2.11.0+cu128", CU128),
        ("12.7", "torch==2.13.0+cu126", CU126),
        ("12.6", "torch==2.13.0+cu126", CU126),
    ],
)
def test_start_sh_installs_a_pinned_torch_built_for_the_cuda_the_driver_supports(tmp_path, cuda, spec, index) -> None:
    assert torch_choice(tmp_path, smi_header(cuda))[:2] == (spec, index)


def install_commands(tmp_path: Path, smi_output: str | None) -> tuple[list[list[str]], str]:
    """The commands start.sh's install_torch runs, through a fake interpreter that only records them.

    Returns (each command's arguments after the interpreter, the constraint file it wrote)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    if smi_output is not None:
        smi = fake_bin / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{smi_output}\nEOF\n")
        smi.chmod(0o755)
    log = tmp_path / "commands.txt"
    python = tmp_path / "fake-python"
    python.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\t" "$a"; done >>{log}\necho >>{log}\n')
    python.chmod(0o755)
    constraint = tmp_path / "torch-constraint.txt"
    subprocess.run(
        ["bash", "-c", f"source {ROOT / 'start.sh'}; install_torch {python} {constraint}"],
        capture_output=True,
        text=True,
        env={"PATH": f"{fake_bin}:/usr/bin:/bin"},
        check=True,
    )
    commands = [line.rstrip("\t").split("\t") for line in log.read_text().splitlines()]
    return commands, constraint.read_text().strip()


@pytest.mark.parametrize("cuda", ["12.8", "12.9"])
def test_a_cuda_12_8_driver_gets_torch_from_the_cu128_index_only(tmp_path, cuda) -> None:
    """No --extra-index-url: with PyPI beside the cu128 index, pip took PyPI's newer CUDA 13 torch."""
    commands, constraint = install_commands(tmp_path, smi_header(cuda))
    assert constraint == "torch==2.11.0+cu128"
    assert commands == [
        ["-m", "pip", "install", "--quiet", "--no-deps", "--index-url", CU128, "torch==2.11.0+cu128"],
        # its dependencies from PyPI; PyPI has no +cu128 build, so the constraint leaves only the installed one
        ["-m", "pip", "install", "--quiet", "-c", str(tmp_path / "torch-constraint.txt"), "torch==2.11.0+cu128"],
    ]
    assert not any("--extra-index-url" in command for command in commands)


def test_a_cuda_12_6_driver_gets_the_cu126_build_and_cuda_13_the_pinned_pypi_one(tmp_path) -> None:
    (tmp_path / "cu126").mkdir()
    commands, constraint = install_commands(tmp_path / "cu126", smi_header("12.6"))
    assert constraint == "torch==2.13.0+cu126"
    assert commands[0] == ["-m", "pip", "install", "--quiet", "--no-deps", "--index-url", CU126, "torch==2.13.0+cu126"]
    (tmp_path / "cu130").mkdir()
    commands, constraint = install_commands(tmp_path / "cu130", smi_header("13.0"))
    assert constraint == "torch==2.13.0"
    assert commands == [
        ["-m", "pip", "install", "--quiet", "-c", str(tmp_path / "cu130/torch-constraint.txt"), "torch==2.13.0"]
    ]


def test_start_sh_says_when_the_driver_is_too_old(tmp_path) -> None:
    said = torch_choice(tmp_path, smi_header("12.2"))[2]
    assert "supports CUDA 12.2 only" in said and "Update the driver" in said


def test_start_sh_without_nvidia_takes_the_pinned_cpu_build_and_honours_overrides(tmp_path) -> None:
    assert torch_choice(tmp_path, None)[:2] == ("torch==2.13.0", "")
    chosen = torch_choice(tmp_path, smi_header("12.8"), TORCH_INDEX_URL="https://example.invalid/whl/cu126")
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


def stub_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A pure-Python wheel standing in for a real one (only its name, version and dependencies matter)."""
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{info}/METADATA": "\n".join(
            [
                "Metadata-Version: 2.1",
                f"Name: {name}",
                f"Version: {version}",
                *(f"Requires-Dist: {r}" for r in requires),
            ]
        )
        + "\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


def file_index(root: Path, wheels: list[tuple[str, str, tuple[str, ...]]]) -> str:
    """A PEP 503 simple index in a folder, as a file:// URL."""
    for name, version, requires in wheels:
        project = root / name.replace("_", "-")
        project.mkdir(parents=True, exist_ok=True)
        stub_wheel(project, name, version, requires)
    for project in root.iterdir():
        links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in sorted(project.glob("*.whl")))
        (project / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    return root.as_uri()


def test_pip_keeps_the_cu128_build_against_a_newer_pypi_torch_stub_wheels(tmp_path) -> None:
    """Real pip, local indexes: "PyPI" has a newer (CUDA 13) torch, the cu128 index only 2.11.0+cu128.

    The command start.sh ran before took PyPI's; install_torch installs the cu128 build, then its
    dependency from "PyPI", and a later requirement install with the constraint cannot replace it."""
    import sys

    pypi = file_index(
        tmp_path / "pypi",
        [("torch", "2.13.0", ("nvidia_cu13_stub",)), ("nvidia_cu13_stub", "1.0", ()), ("cu12_runtime_stub", "1.0", ())],
    )
    cu128 = file_index(tmp_path / "cu128", [("torch", "2.11.0+cu128", ("cu12_runtime_stub",))])
    env = {
        "PATH": "/usr/bin:/bin",
        "PIP_INDEX_URL": pypi,  # what PyPI is to pip in this test
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    }

    def fresh_environment(name: str) -> Path:
        """An empty virtual environment and an interpreter stand-in that runs our pip on it."""
        target = tmp_path / name
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
        python = tmp_path / f"{name}-python"
        python.write_text(f'#!/bin/sh\nshift 2\nexec {sys.executable} -m pip --python {target}/bin/python "$@"\n')
        python.chmod(0o755)
        return python

    def installed(python: Path) -> dict[str, str]:
        listing = subprocess.run(
            [str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, env=env, check=True
        )
        return dict(line.split("==") for line in listing.stdout.split())

    before = fresh_environment("before")
    old_command = ["-m", "pip", "install", "--quiet", "--index-url", cu128, "--extra-index-url", pypi, "torch"]
    subprocess.run([str(before), *old_command], env=env, check=True, capture_output=True)
    assert installed(before)["torch"] == "2.13.0"  # the defect, reproduced

    after = fresh_environment("after")
    constraint = tmp_path / "torch-constraint.txt"
    choice = {"TORCH_SPEC": "torch==2.11.0+cu128", "TORCH_INDEX_URL": cu128}
    subprocess.run(
        ["bash", "-c", f"source {ROOT / 'start.sh'}; install_torch {after} {constraint}"],
        env={**env, **choice},
        check=True,
        capture_output=True,
    )
    assert installed(after) == {"torch": "2.11.0+cu128", "cu12_runtime_stub": "1.0"}
    later = subprocess.run(
        [str(after), "-m", "pip", "install", "--quiet", "-c", str(constraint), "torch>=2.12"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert later.returncode != 0 and installed(after)["torch"] == "2.11.0+cu128"
