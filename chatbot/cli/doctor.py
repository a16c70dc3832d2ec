"""``python -m chatbot doctor``: what this machine can run, whether the checkpoint is sound, and
which precision would be chosen and why. Every problem is printed with its fix; the exit status is
1 when there is one. Nothing heavy runs: safetensors headers are parsed, weights are not loaded
(add ``--load`` to load the model and run the probe forward too).
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ChatbotError
from ..model.checkpoint import inspect_checkpoint, resolve_checkpoint
from ..model.device import DeviceInfo, cpu_device, cpu_flags, detect_device, unusable_cuda_reason
from ..model.precision import no_fp8_tensor_cores, plan_precision, resolve_request

CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: int = 0

    def section(self, title: str) -> None:
        self.lines.append(f"\n{title}")

    def ok(self, text: str) -> None:
        self.lines.append(f"  ok   {text}")

    def info(self, text: str) -> None:
        self.lines.append(f"       {text}")

    def problem(self, error: ChatbotError | str) -> None:
        self.problems += 1
        if isinstance(error, ChatbotError):
            self.lines.append(f"  FAIL {error.message}")
            if error.fix:
                self.lines.append(f"       fix: {error.fix}")
        else:
            self.lines.append(f"  FAIL {error}")

    def text(self) -> str:
        verdict = "No problems found." if not self.problems else f"{self.problems} problem(s) found."
        return "\n".join([*self.lines, "", verdict])


def _versions() -> str:
    import gradio
    import transformers

    return (
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}), "
        f"transformers {transformers.__version__}, gradio {gradio.__version__}"
    )


def system_section(report: Report, device: str) -> DeviceInfo | None:
    report.section("System")
    report.info(_versions())
    cpu = cpu_device()
    flags = cpu_flags()
    features = ", ".join(f for f in CPU_FEATURES if f in flags) or "unknown"
    memory = f", {cpu.total_memory / 2**30:.0f} GiB RAM" if cpu.total_memory else ""
    report.info(f"CPU: {cpu.name}, {torch.get_num_threads()} threads, features: {features}{memory}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            gpu = detect_device(f"cuda:{index}")
            fp8 = "FP8 native" if gpu.has_fp8 else f"FP8 weight-only ({no_fp8_tensor_cores(gpu)})"
            bf16 = "BF16 yes" if gpu.has_bf16 else "BF16 no"
            report.info(f"GPU {index}: {gpu.describe()}; {fp8}; {bf16}")
        triton_section(report)
    elif problem := unusable_cuda_reason():
        report.problem(problem)  # a GPU is there but this torch cannot use it: everything would run on the CPU
    else:
        report.info("GPU: none visible to torch (CPU only)")
    try:
        chosen = detect_device(device)
    except ChatbotError as exc:
        report.problem(exc)
        return None
    report.ok(f"device {device!r} -> {chosen.describe()}")
    return chosen


def triton_section(report: Report) -> None:
    """The FP8 kernels are Triton's: it needs a C compiler and a writable cache the first time it builds one."""
    try:
        import triton
    except ImportError:
        report.problem(
            ChatbotError(
                "Triton is not installed: the FP8 kernels cannot run, so FP8 checkpoints load in BF16/FP16.",
                fix="pip install triton (it comes with CUDA builds of torch on Linux).",
            )
        )
        return
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        report.problem(
            ChatbotError(
                "No C compiler found: Triton needs one to build its kernels the first time.",
                fix="Install one (apt-get install gcc) or set CC.",
            )
        )
    cache = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
    writable = cache if cache.exists() else next((p for p in cache.parents if p.exists()), cache)
    if not os.access(writable, os.W_OK):
        report.problem(
            ChatbotError(
                f"Triton's kernel cache {cache} is not writable.", fix="Set TRITON_CACHE_DIR to a writable folder."
            )
        )
    else:
        report.ok(f"Triton {triton.__version__}, compiler {compiler}, cache {cache}")


def checkpoint_section(report: Report, model: str, chosen: DeviceInfo | None, precision: str | None) -> None:
    report.section(f"Checkpoint: {model}")
    try:
        path = resolve_checkpoint(model)
        info = inspect_checkpoint(path, model)
    except ChatbotError as exc:
        report.problem(exc)
        return
    report.ok(f"folder {path}")
    for file in info.files:
        count = sum(1 for meta in info.tensors.values() if meta.file == file)
        report.ok(f"{file.name}: {file.stat().st_size / 2**20:.1f} MiB, header parsed, {count} tensors")
    report.ok(f"format: {info.format.describe()}")
    qcfg = info.config.get("quantization_config")
    if qcfg:
        report.info(f"quantization_config: { {k: v for k, v in qcfg.items() if k != 'config_groups'} }")
    report.ok("tokenizer and chat template present")
    generated = info.config.get("generated")
    if isinstance(generated, dict):
        report.info(f"generated by make-model: {generated.get('kind')} ({generated.get('note')})")
    if chosen is None:
        return
    report.section("Precision")
    try:
        requested, source = resolve_request(precision)
    except ChatbotError as exc:
        report.problem(exc)
        return
    candidates, refused = plan_precision(
        requested, chosen, checkpoint_fp8=info.format.is_fp8, checkpoint_dtype=info.native_dtype
    )
    for attempt in refused:
        report.info(attempt.detail)
    report.ok(f"would run {candidates[0].mode.upper()} ({source}): {candidates[0].reason}")
    if requested == "auto" and chosen.kind == "cpu":
        report.info("on a CPU, auto measures INT8 against FP16 at load for models beyond 256 MiB (see --load)")
    if len(candidates) > 1:
        report.info(
            "fallback chain if loading or the probe forward fails: " + " -> ".join(c.mode.upper() for c in candidates)
        )


def load_section(report: Report, model: str, device: str, precision: str | None) -> None:
    """Load the model as the servers do and print its status: the line the badge and ``/health`` show."""
    from ..chat.local import LocalBackend
    from ..engine.engine import ChatEngine

    report.section("Load and probe")
    backend = LocalBackend(ChatEngine(model, device=device, precision=precision))
    try:
        loaded = backend.load()
    except ChatbotError as exc:
        report.problem(exc)
        return
    finally:
        backend.close()
    status = backend.status()
    report.ok(status.summary())
    for attempt in status.precision.attempts if status.precision is not None else ():
        report.info(f"{'ok  ' if attempt.ok else 'fail'} {attempt.mode}: {attempt.detail}")
    report.ok(f"weights {(status.weights_bytes or 0) / 2**20:.0f} MiB, loaded in {loaded.load_seconds:.1f} s")


def run_doctor(model: str, device: str = "auto", precision: str | None = None, load: bool = False) -> int:
    report = Report()
    chosen = system_section(report, device)
    checkpoint_section(report, model, chosen, precision)
    if load and not report.problems:
        load_section(report, model, device, precision)
    print(report.text().lstrip("\n"))
    sys.stdout.flush()
    return 1 if report.problems else 0
