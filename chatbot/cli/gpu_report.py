"""One JSON with what a GPU machine can tell about the GPU path: ``python -m chatbot.cli.gpu_report``.

Run by ``tests/gpu_report.sh`` (which also generates the checkpoint); aimed at under 8 minutes on an H100:

* ``versions``: GPU, driver, CUDA, torch, Triton, transformers;
* ``gpu_tests``: ``pytest -m gpu tests/engine/test_gpu.py`` (passed, failed, skipped, the failures' names);
* ``decode``: for FP8 and BF16, tokens/s with 1, 4 and 16 streams through the engine (what a user gets),
  and the time to first token of a 512-token prompt;
* ``profile``: from ``torch.profiler``, GPU kernels and host synchronizations per generated token at batch 1;
* ``layers``: each FP8 layer shape's kernel time at 1 and 16 rows against cuBLAS BF16 (``F.linear``).

Each section is measured on its own: one that fails records its error and the others still run. Without
CUDA it stops at once with exit status 2 and says why.

    python -m chatbot.cli.gpu_report --model PATH --out report.json [--sections decode,layers] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SECTIONS = ("versions", "gpu_tests", "decode", "profile", "layers")
STREAMS = (1, 4, 16)
TTFT_PROMPT_TOKENS = 512
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
REPORT_VERSION = 1
ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command's options; ``--sections`` is checked against ``SECTIONS``."""
    parser = argparse.ArgumentParser(prog="python -m chatbot.cli.gpu_report", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="FP8 Qwen3 checkpoint folder (tests/gpu_report.sh makes one)")
    parser.add_argument("--out", required=True, type=Path, help="where to write the JSON report")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per stream (default 128)")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (default cuda)")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown or not chosen:
        parser.error(f"unknown section(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(SECTIONS)}")
    if args.new_tokens < 8:
        parser.error("--new-tokens must be at least 8")
    args.sections = chosen
    return args


def cuda_problem(available: bool, torch_version: str, cuda_build: str | None) -> str | None:
    """Why this machine cannot produce the report (None when it can)."""
    if available:
        return None
    build = f"a CUDA {cuda_build} build" if cuda_build else "a CPU-only build"
    return (
        f"The GPU report needs a CUDA GPU, and torch {torch_version} ({build}) sees none. Run it on a machine "
        "with an NVIDIA GPU; if it has one, check `nvidia-smi` and `python -m chatbot doctor`."
    )


def junit_summary(path: Path) -> dict[str, Any]:
    """Counts and failed test names from pytest's ``--junitxml`` file."""
    root = ET.parse(path).getroot()
    cases = root.iter("testcase")
    summary: dict[str, Any] = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "skips": []}
    for case in cases:
        name = case.get("name", "?")
        if case.find("failure") is not None or case.find("error") is not None:
            summary["failed"] += 1
            summary["failures"].append(name)
        elif (skipped := case.find("skipped")) is not None:
            summary["skipped"] += 1
            summary["skips"].append(f"{name}: {skipped.get('message', '')}")
        else:
            summary["passed"] += 1
    return summary


def profile_summary(events: Iterable[tuple[str, bool, int]], tokens: int) -> dict[str, Any]:
    """Per generated token, from (name, runs on the GPU, count) of the profiler's averaged events:
    kernel launches, device-to-host copies and explicit synchronizations, and the busiest kernels."""
    kernels: dict[str, int] = {}
    copies_to_host = syncs = 0
    for name, on_device, count in events:
        if on_device and name.startswith("Memcpy DtoH"):
            copies_to_host += count
        elif on_device and not name.startswith(("Memcpy", "Memset")):
            kernels[name] = kernels.get(name, 0) + count
        elif not on_device and name in SYNC_CALLS:
            syncs += count
    top = sorted(kernels.items(), key=lambda item: -item[1])[:10]
    return {
        "tokens": tokens,
        "kernels_per_token": round(sum(kernels.values()) / tokens, 2),
        "device_to_host_copies_per_token": round(copies_to_host / tokens, 2),
        "synchronizations_per_token": round(syncs / tokens, 2),
        "host_syncs_per_token": round((copies_to_host + syncs) / tokens, 2),
        "top_kernels_per_token": {name[:120]: round(count / tokens, 2) for name, count in top},
    }


def assemble_report(results: dict[str, Any], errors: dict[str, str], started: float, finished: float) -> dict:
    """The JSON document: every section asked for, as measured or with its error."""
    return {
        "report_version": REPORT_VERSION,
        "complete": not errors,
        "seconds": round(finished - started, 1),
        "machine": platform.node(),
        **results,
        "errors": errors,
    }


def run_sections(
    sections: list[str], runners: dict[str, Callable[[], Any]], log: Callable[[str], None] = print
) -> tuple[dict[str, Any], dict[str, str]]:
    """Run each section; a failing one is recorded as its error and the rest go on."""
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in sections:
        started = time.perf_counter()
        try:
            results[name] = runners[name]()
        except Exception as exc:  # the report keeps what the other sections measured
            errors[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        log(
            f"[gpu-report] {name}: {'failed: ' + errors[name] if name in errors else 'done'} "
            f"({time.perf_counter() - started:.0f} s)"
        )
    return results, errors


# --- the measurements (GPU only) --------------------------------------------------------------------------


def versions(device: str) -> dict[str, Any]:
    import torch
    import transformers

    from ..model.device import detect_device, nvidia_driver_version

    info = detect_device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "gpu": info.name,
        "compute_capability": info.capability_text,
        "memory_gib": round((info.total_memory or 0) / 2**30, 1),
        "driver": nvidia_driver_version(),
        "cuda_build": torch.version.cuda,
        "torch": torch.__version__,
        "triton": triton_version,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def gpu_tests(out_dir: Path) -> dict[str, Any]:
    junit = out_dir / "gpu-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/engine/test_gpu.py", "-q", "-p", "no:cacheprovider"]
    completed = subprocess.run([*command, f"--junitxml={junit}"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    (out_dir / "gpu-tests.txt").write_text(completed.stdout + completed.stderr)
    return {"exit_status": completed.returncode, **junit_summary(junit)}


def _prompt(tokenizer: Any, count: int) -> list[int]:
    from ..authoring.tokenizer_build import data_text

    ids = tokenizer.encode(data_text("passage.txt"))
    while len(ids) < count:
        ids = ids + ids
    return ids[:count]


def _streams(loaded: Any, streams: int, new_tokens: int) -> dict[str, Any]:
    """``streams`` requests at once through the engine; aggregate and per-stream decode speed."""
    from ..engine.engine import ChatEngine
    from ..engine.jobs import Failed, Finished
    from ..engine.sampling import sampling_options

    engine = ChatEngine.from_loaded(loaded, max_batch=max(STREAMS), prefix_cache_tokens=0)
    options = sampling_options(False, temperature=0, min_new_tokens=new_tokens, max_new_tokens=new_tokens)
    prompt = _prompt(loaded.tokenizer, 32)
    try:
        started = time.perf_counter()
        jobs = [engine.submit(prompt[: 24 + i % 8], options, client=f"s{i}") for i in range(streams)]
        results = []
        for job in jobs:
            while not isinstance(event := job.events.get(timeout=600), Finished | Failed):
                pass
            if isinstance(event, Failed):
                raise event.error
            results.append(event.result.stats)
        wall = time.perf_counter() - started
    finally:
        engine.close()
    return {
        "streams": streams,
        "total_tokens_per_second": round(sum(s.new_tokens for s in results) / wall, 1),
        "per_stream_decode_tokens_per_second_median": round(statistics.median(s.tokens_per_second for s in results), 1),
        "time_to_first_token_ms_median": round(1000 * statistics.median(s.time_to_first_token for s in results), 1),
    }


def _time_to_first_token_ms(loaded: Any, runs: int = 5) -> float:
    """Median time to the first token of a ``TTFT_PROMPT_TOKENS``-token prompt, alone on the engine."""
    from ..engine.engine import ChatEngine
    from ..engine.jobs import Failed, Finished
    from ..engine.sampling import sampling_options

    engine = ChatEngine.from_loaded(loaded, max_batch=1, prefix_cache_tokens=0)
    firsts = []
    prompt, options = _prompt(loaded.tokenizer, TTFT_PROMPT_TOKENS), sampling_options(False, max_new_tokens=1)
    try:
        for _ in range(runs):
            job = engine.submit(prompt, options)
            while not isinstance(event := job.events.get(timeout=600), Finished | Failed):
                pass
            if isinstance(event, Failed):
                raise event.error
            firsts.append(event.result.stats.time_to_first_token)
    finally:
        engine.close()
    return round(1000 * statistics.median(firsts), 1)


def decode(model: str, device: str, new_tokens: int) -> dict[str, Any]:
    from ..model.loader import load_model

    report: dict[str, Any] = {}
    for precision in ("fp8", "bf16"):
        loaded = load_model(model, device=device, precision=precision)
        entry: dict[str, Any] = {"label": loaded.precision.label, "fp8_kernel": loaded.precision.fp8_kernel}
        _streams(loaded, 1, 16)  # warm-up
        entry["runs"] = [_streams(loaded, streams, new_tokens) for streams in STREAMS]
        entry[f"time_to_first_token_ms_{TTFT_PROMPT_TOKENS}_median"] = _time_to_first_token_ms(loaded)
        report[precision] = entry
        del loaded
    return report


def profile(model: str, device: str, tokens: int = 32) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from ..model.loader import load_model

    loaded = load_model(model, device=device, precision="fp8")
    _streams(loaded, 1, 8)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _streams(loaded, 1, tokens)
    events = [(e.key, e.device_type == torch.autograd.DeviceType.CUDA, e.count) for e in prof.key_averages()]
    return {"precision": loaded.precision.label, **profile_summary(events, tokens)}


def layers(model: str, device: str) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from triton.testing import do_bench

    from ..model.fp8 import dequantize_block_fp8
    from ..model.fp8_linear import Fp8Linear
    from ..model.loader import load_model

    loaded = load_model(model, device=device, precision="fp8")
    shapes: dict[tuple[int, int], Fp8Linear] = {}
    for module in loaded.model.modules():
        if isinstance(module, Fp8Linear):
            shapes.setdefault((module.out_features, module.in_features), module)
    rows_report = []
    for (n, k), layer in sorted(shapes.items()):
        dense = dequantize_block_fp8(layer.weight, layer.weight_scale_inv, layer.block, torch.bfloat16)
        for rows in (1, 16):
            x = torch.randn(rows, k, device=layer.weight.device, dtype=torch.bfloat16)
            fp8_us = 1000 * do_bench(lambda: layer(x), warmup=25, rep=100)  # noqa: B023 (run at once)
            bf16_us = 1000 * do_bench(lambda: F.linear(x, dense), warmup=25, rep=100)  # noqa: B023
            rows_report.append(
                {
                    "n": n,
                    "k": k,
                    "rows": rows,
                    "fp8_us": round(fp8_us, 2),
                    "cublas_bf16_us": round(bf16_us, 2),
                    "fp8_over_bf16": round(fp8_us / bf16_us, 3),
                    "fp8_weight_gb_per_s": round(n * k / fp8_us / 1e3, 1),
                }
            )
    return {"kernel": loaded.precision.fp8_kernel, "shapes": rows_report}


def exit_without_cuda() -> None:
    """Exit with status 2 and the reason when torch sees no CUDA GPU (``tests/gpu_report.sh`` checks first)."""
    import torch

    problem = cuda_problem(torch.cuda.is_available(), torch.__version__, torch.version.cuda)
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_without_cuda()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runners: dict[str, Callable[[], Any]] = {
        "versions": lambda: versions(args.device),
        "gpu_tests": lambda: gpu_tests(args.out.parent),
        "decode": lambda: decode(args.model, args.device, args.new_tokens),
        "profile": lambda: profile(args.model, args.device),
        "layers": lambda: layers(args.model, args.device),
    }
    started = time.time()
    results, errors = run_sections(args.sections, runners)
    report = assemble_report(results, errors, started, time.time())
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[gpu-report] wrote {args.out}{'' if report['complete'] else ' (with errors: ' + ', '.join(errors) + ')'}")
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
