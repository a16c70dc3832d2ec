"""The GPU report command, on a machine without a GPU: it stops at once saying why, and the parts that need
no GPU (options, the JUnit and profiler summaries, a failing section, the JSON) work. Its measurements
run only where CUDA is (tests/gpu_report.sh)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chatbot.cli import gpu_report

ROOT = Path(__file__).resolve().parents[2]


def test_without_cuda_the_script_and_the_module_stop_at_once_saying_why(tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    script = subprocess.run(
        ["bash", str(ROOT / "tests/gpu_report.sh"), str(tmp_path / "out")], capture_output=True, text=True, timeout=120
    )
    assert script.returncode == 2 and "needs a CUDA GPU" in script.stderr and "CPU-only build" in script.stderr
    assert not (tmp_path / "out").exists()  # nothing generated before the check
    module = subprocess.run(
        [sys.executable, "-m", "chatbot.cli.gpu_report", "--model", "m", "--out", str(tmp_path / "r.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert module.returncode == 2 and "needs a CUDA GPU" in module.stderr and not (tmp_path / "r.json").exists()


def test_cuda_problem_names_the_build() -> None:
    assert gpu_report.cuda_problem(True, "2.13.0", "13.0") is None
    assert "a CUDA 12.8 build" in gpu_report.cuda_problem(False, "2.11.0+cu128", "12.8")


def test_options_are_checked(capsys) -> None:
    args = gpu_report.parse_args(["--model", "m", "--out", "r.json", "--sections", "decode, layers"])
    assert args.sections == ["decode", "layers"] and args.new_tokens == 128
    assert gpu_report.parse_args(["--model", "m", "--out", "r.json"]).sections == list(gpu_report.SECTIONS)
    for bad in (["--sections", "decode,speed"], ["--new-tokens", "2"], ["--sections", ","]):
        with pytest.raises(SystemExit):
            gpu_report.parse_args(["--model", "m", "--out", "r.json", *bad])
    assert "unknown section(s) speed" in capsys.readouterr().err


def test_junit_summary_counts_and_names(tmp_path) -> None:
    junit = tmp_path / "j.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="t" name="test_ok"/>'
        '<testcase classname="t" name="test_bad"><failure message="x"/></testcase>'
        '<testcase classname="t" name="test_two_gpus"><skipped message="needs two GPUs"/></testcase>'
        "</testsuite></testsuites>"
    )
    summary = gpu_report.junit_summary(junit)
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (1, 1, 1)
    assert summary["failures"] == ["test_bad"] and summary["skips"] == ["test_two_gpus: needs two GPUs"]


def test_profile_summary_per_token() -> None:
    events = [
        ("_w8a16_small_m_kernel", True, 7 * 28 * 10),
        ("void at::native::elementwise_kernel<...>", True, 50 * 28 * 10),
        ("Memcpy DtoH (Device -> Pageable)", True, 10),
        ("Memcpy HtoD (Pageable -> Device)", True, 30),
        ("cudaStreamSynchronize", False, 10),
        ("aten::mm", False, 500),
    ]
    summary = gpu_report.profile_summary(events, tokens=10)
    assert summary["kernels_per_token"] == 57 * 28
    assert summary["device_to_host_copies_per_token"] == 1 and summary["synchronizations_per_token"] == 1
    assert summary["host_syncs_per_token"] == 2
    assert next(iter(summary["top_kernels_per_token"])).startswith("void at::native::elementwise_kernel")


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path) -> None:
    def broken():
        raise RuntimeError("CUDA out of memory (simulated)\nmore details")

    runners = {"versions": lambda: {"torch": "2.13.0"}, "decode": broken, "layers": lambda: {"shapes": []}}
    lines: list[str] = []
    results, errors = gpu_report.run_sections(["versions", "decode", "layers"], runners, log=lines.append)
    assert results == {"versions": {"torch": "2.13.0"}, "layers": {"shapes": []}}
    assert errors == {"decode": "RuntimeError: CUDA out of memory (simulated)"}
    assert any("decode: failed" in line for line in lines)
    report = gpu_report.assemble_report(results, errors, 100.0, 160.5)
    text = json.dumps(report)  # one JSON document
    assert json.loads(text)["complete"] is False and report["seconds"] == 60.5
    assert report["versions"] == {"torch": "2.13.0"} and report["errors"]["decode"].startswith("RuntimeError")
    assert gpu_report.assemble_report(results, {}, 0, 1)["complete"] is True
