"""``python -m chatbot bench``: speed, memory and fidelity of each precision, measured on this machine.

For every precision the device can run (the others are listed as skipped, with the reason), a fresh
worker process loads the model and measures load time, weights bytes, peak memory, time to first
token, prefill and decode speed (median of several runs after a warm-up, with min and max), the
share of the memory-bandwidth limit that decode reaches, and fidelity against the highest precision
(top-1 agreement, mean KL divergence, perplexity on the passage shipped in ``chatbot/data``). The
default precision also runs the chat scenarios: time to first token at turns 1, 2, 4 and 8 of one
conversation (with and without the conversation cache), decode through the chat stream against the
same decode on the main thread, and batch throughput at batch sizes 1, 4 and 8.

Every speed of ours is the served one: requests to ``ChatEngine``, decoded on its worker thread as
the servers run them (see ``bench_worker``); beside each, interleaved, the same request through the
same engine code on the main thread, and their ratio.

Output: a Markdown table on stdout, ``bench.json`` and ``bench.png`` in ``--out``.

    python -m chatbot make-model /tmp/qwen3-0.6b --size 0.6b     # the real architecture, random weights
    python -m chatbot bench --model /tmp/qwen3-0.6b --out bench-out
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import bench_serving
from .bench_worker import BATCH_SIZES, TURNS

ALL_PRECISIONS = ("fp8", "int8", "fp16", "bf16", "fp32")
SERVED_TARGET = 0.97  # served decode (engine worker thread) against the same decode on the main thread
# Figures to compare with, measured on a 2-core AVX2 CPU with the Qwen3-0.6B architecture (tokens/s).
REFERENCE_FIGURES = {
    "plain transformers 5.23, FP32": {"prefill_64": 72, "decode": 7.9},
    "plain transformers 5.23, BF16": {"prefill_64": 17, "decode": 18.0},
    "plain transformers 5.23, FP16": {"prefill_64": 20, "decode": 18.0},
    "llama.cpp F16": {"prefill_512": 164, "decode": 23.1},
    "llama.cpp Q8_0": {"prefill_512": 131, "decode": 36.6},
}


# --- the parent: plan, run workers, report ------------------------------------------------------------------


def memory_bandwidth(device: str = "cpu", size_mb: int = 512) -> float:
    """Bytes per second a large copy moves (read + write), median of 5."""
    import torch

    elements = size_mb * 2**20 // 4
    source = torch.ones(elements, device=device)
    target = torch.empty_like(source)
    times = []
    for _ in range(6):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        target.copy_(source)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * source.numel() * 4 / statistics.median(times[1:])


def plan(precisions: list[str], device_name: str) -> tuple[list[str], dict[str, str]]:
    from ..model.device import detect_device
    from ..model.precision import unsupported_reason

    device = detect_device(device_name)
    runnable, skipped = [], {}
    for precision in precisions:
        why = unsupported_reason(precision, device)
        if why:
            skipped[precision] = why
        else:
            runnable.append(precision)
    return runnable, skipped


def default_precision(runnable: list[str], model: str, device: str) -> str:
    """The precision auto would choose here (it gets the chat scenarios)."""
    from ..model.checkpoint import inspect_checkpoint, resolve_checkpoint
    from ..model.device import detect_device
    from ..model.precision import plan_precision

    info = inspect_checkpoint(resolve_checkpoint(model), model)
    candidates, _ = plan_precision(
        "auto", detect_device(device), checkpoint_fp8=info.format.is_fp8, checkpoint_dtype=info.native_dtype
    )
    return next((c.mode for c in candidates if c.mode in runnable), runnable[0])


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh process (clean peak-memory figures); errors become ``{"error": ...}``."""
    command = [sys.executable, "-m", "chatbot.cli.bench_worker", json.dumps(spec)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        name = spec.get("precision") or (f"plain {spec['baseline']}" if "baseline" in spec else "serving")
        return {"precision": name, "error": tail or f"worker exited with {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in ALL_PRECISIONS]
    if unknown:
        raise SystemExit(f"error: unknown precision(s) {unknown}; choose from {', '.join(ALL_PRECISIONS)}")
    runnable, skipped = plan(precisions, args.device)
    report: dict[str, Any] = {
        "model": args.model,
        "device": args.device,
        "skipped": skipped,
        "results": [],
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
    }
    if not runnable:
        return report
    device_for_bandwidth = "cpu" if args.device in ("auto", "cpu") and not _cuda() else "cuda"
    report["memory_bandwidth_bytes_s"] = memory_bandwidth(device_for_bandwidth)
    main = default_precision(runnable, args.model, args.device)
    order = sorted(runnable, key=lambda p: -ALL_PRECISIONS.index(p))  # highest precision first: the reference
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "reference.pt"
        for precision in tqdm(order, desc="bench", unit="precision"):
            spec = {
                "model": args.model,
                "device": args.device,
                "precision": precision,
                "prompt_tokens": args.prompt_tokens,
                "new_tokens": args.new_tokens,
                "runs": args.runs,
                "scenarios": precision == main,
                "scenario_tokens": args.scenario_tokens,
                "reference": str(reference) if precision != order[0] else None,
                "save_logprobs": str(reference) if precision == order[0] else None,
            }
            result = run_worker(spec, timeout=args.timeout)
            result["default"] = precision == main
            report["results"].append(result)
    report["reference_precision"] = order[0]
    report["baselines"] = []
    for baseline in [b.strip() for b in args.baseline.split(",") if b.strip() and b.strip() != "none"]:
        spec = {
            "model": args.model,
            "device": args.device,
            "baseline": baseline,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "runs": args.runs,
        }
        report["baselines"].append(run_worker(spec, timeout=args.timeout))
    return report


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- report -------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _kl(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def markdown(report: dict[str, Any]) -> str:
    bandwidth = report.get("memory_bandwidth_bytes_s")
    lines = [
        f"Model: {report['model']}; prompt {report['prompt_tokens']} tokens, {report['new_tokens']} new tokens; "
        + (f"measured memory bandwidth {bandwidth / 1e9:.1f} GB/s" if bandwidth else "no precision ran"),
        "",
        "| precision | mode used | load s | weights MiB | peak RSS MiB | TTFT s | prefill tok/s | decode tok/s "
        "served (min-max) | main thread | served / main | bandwidth use | top-1 agree | mean KL | perplexity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['precision']} | failed: {r['error'].splitlines()[-1]} |" + " |" * 12)
            continue
        decode = r["decode_tok_s"]
        share = r["decoded_weight_bytes"] * decode["median"] / bandwidth if bandwidth else None
        fidelity = r["fidelity"]
        lines.append(
            f"| {r['precision']}{' (default)' if r['default'] else ''} | {r['label']} | {_fmt(r['load_s'])} "
            f"| {r['weights_bytes'] / 2**20:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} "
            f"| {_fmt(r['time_to_first_token_s']['median'], 2)} | {_fmt(r['prefill_tok_s']['median'])} "
            f"| {_fmt(decode['median'])} ({_fmt(decode['min'])}-{_fmt(decode['max'])}) "
            f"| {_fmt(r['main_thread_decode_tok_s']['median'])} | {r['served_vs_main_thread']:.2f}x "
            f"| {'-' if share is None else f'{share:.0%}'} | {_fmt(fidelity.get('top1_agreement'), 3)} "
            f"| {_kl(fidelity.get('mean_kl'))} | {_fmt(fidelity['perplexity'])} |"
        )
    for precision, why in report["skipped"].items():
        lines.append(f"| {precision} | skipped: {why} |" + " |" * 12)
    lines += _decode_fidelity_lines(report)
    lines += _baseline_lines(report) + _scenario_lines(report) + _target_lines(report) + _reference_lines()
    if "serving" in report:
        lines += bench_serving.markdown_lines(report["serving"])
    return "\n".join(lines)


def _decode_fidelity_lines(report: dict[str, Any]) -> list[str]:
    """The decode path's fidelity (the table above measures the prompt path), with the int8 kernel's error."""
    rows = [r for r in report["results"] if "decode_top1_agreement" in r.get("fidelity", {})]
    if not rows:
        return []
    lines = [
        "",
        f"Decode path: the passage fed one token at a time, against {report.get('reference_precision', '-')}'s "
        "prompt-path log-probabilities; the int8 kernel's error is its load-time check against FP32 "
        "(largest difference relative to the largest output, Gaussian inputs).",
        "",
        "| precision | int8 kernel | kernel error | int8 weights RMS error | top-1 agree | mean KL |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        details, fidelity = r.get("matmul_details", {}), r["fidelity"]
        lines.append(
            f"| {r['precision']} | {details.get('int8_kernel', '-')} | {details.get('int8_kernel_error', '-')} "
            f"| {details.get('int8_rms_error', '-')} | {_fmt(fidelity['decode_top1_agreement'], 3)} "
            f"| {_kl(fidelity['decode_mean_kl'])} |"
        )
    return lines


def _baseline_lines(report: dict[str, Any]) -> list[str]:
    rows = [b for b in report.get("baselines", []) if "error" not in b]
    if not rows:
        return []
    lines = [
        "",
        "Plain transformers on the same weights (forward for prefill, generate() for decode), tokens/s:",
        "",
        f"| dtype | prefill 64 | prefill {rows[0]['prompt_tokens']} | decode |",
        "|---|---|---|---|",
    ]
    for b in rows:
        long = b.get(f"prefill_{b['prompt_tokens']}_tok_s", b["prefill_64_tok_s"])
        lines.append(
            f"| {b['baseline']} | {_fmt(b['prefill_64_tok_s']['median'])} | {_fmt(long['median'])} "
            f"| {_fmt(b['decode_tok_s']['median'])} |"
        )
    return lines


def _scenario_lines(report: dict[str, Any]) -> list[str]:
    main = next((r for r in report["results"] if r.get("default") and "scenarios" in r), None)
    if main is None:
        return []
    s = main["scenarios"]
    cached, fresh = s["ttft_by_turn_with_cache"], s["ttft_by_turn_without_cache"]
    lines = [
        "",
        f"Chat scenarios ({main['precision']}):",
        "",
        "| turn | " + " | ".join(str(t) for t in TURNS) + " |",
        "|---" * (len(TURNS) + 1) + "|",
        "| TTFT s, conversation cache | " + " | ".join(_fmt(cached[str(t)], 3) for t in TURNS) + " |",
        "| TTFT s, no cache | " + " | ".join(_fmt(fresh[str(t)], 3) for t in TURNS) + " |",
        "",
        "| batch size | " + " | ".join(str(b) for b in BATCH_SIZES) + " |",
        "|---" * (len(BATCH_SIZES) + 1) + "|",
        "| total new tok/s | " + " | ".join(_fmt(s["batch_tok_s"][str(b)]) for b in BATCH_SIZES) + " |",
    ]
    versus = s["served_vs_main_thread"]
    lines += [
        "",
        f"Decode, {versus['prompt_tokens']}-token prompt: served (chat stream, engine worker thread) "
        f"{_fmt(versus['served_tok_s']['median'])} tok/s, the same engine code on the main thread "
        f"{_fmt(versus['main_thread_tok_s']['median'])} tok/s ({versus['ratio']:.2f}x), interleaved",
    ]
    return lines


def targets(report: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the performance targets that this run can judge."""
    results = {r["precision"]: r for r in report["results"] if "error" not in r}
    main = next((r for r in results.values() if r.get("default")), None)
    rows: list[tuple[str, str, bool | None]] = []
    if main and "scenarios" in main:
        s = main["scenarios"]
        ratio = s["served_vs_main_thread"]["ratio"]
        target = f"served decode >= {SERVED_TARGET}x main-thread decode (chat stream)"
        rows.append((target, f"{ratio:.2f}x", ratio >= SERVED_TARGET))
        turns = s["ttft_by_turn_with_cache"]
        growth = turns[str(max(TURNS))] / turns["1"]
        rows.append(("TTFT turn 8 <= 1.5x turn 1", f"{growth:.2f}x", growth <= 1.5))
    if main and "fp32" in results and main is not results["fp32"]:
        prefill = main["prefill_tok_s"]["median"] / results["fp32"]["prefill_tok_s"]["median"]
        decode = main["decode_tok_s"]["median"] / results["fp32"]["decode_tok_s"]["median"]
        rows.append((f"{main['precision']} prefill >= FP32 prefill", f"{prefill:.2f}x", prefill >= 0.95))
        rows.append((f"{main['precision']} decode vs FP32 decode (half the bytes)", f"{decode:.2f}x", None))
    for precision, r in results.items():
        if "served_vs_main_thread" in r:
            ratio = r["served_vs_main_thread"]
            rows.append(
                (f"{precision} served decode >= {SERVED_TARGET}x main thread", f"{ratio:.2f}x", ratio >= SERVED_TARGET)
            )
    for b in report.get("baselines", []):
        if main and "error" not in b and b["baseline"] in ("bf16", "fp16"):
            ratio = main["decode_tok_s"]["median"] / b["decode_tok_s"]["median"]
            rows.append(
                (
                    f"{main['precision']} decode >= plain transformers {b['baseline']} decode",
                    f"{ratio:.2f}x",
                    ratio >= 0.95,
                )
            )
    if "int8" in results and "fp16" in results:
        speed = results["int8"]["decode_tok_s"]["median"] / results["fp16"]["decode_tok_s"]["median"]
        memory = results["int8"]["peak_rss_bytes"] / results["fp16"]["peak_rss_bytes"]
        rows.append(("INT8 decode vs FP16 decode (half the bytes)", f"{speed:.2f}x", None))
        rows.append(("INT8 peak memory <= 0.65x FP16's", f"{memory:.2f}x", memory <= 0.65))
    if "fp8" in results and "fp16" in results:
        speed = results["fp8"]["decode_tok_s"]["median"] / results["fp16"]["decode_tok_s"]["median"]
        memory = results["fp8"]["weights_bytes"] / results["fp16"]["weights_bytes"]
        rows.append(("FP8 decode >= FP16 decode", f"{speed:.2f}x", speed >= 1.0))
        rows.append(("FP8 weights <= 0.65x FP16", f"{memory:.2f}x", memory <= 0.65))
    return rows


def _target_lines(report: dict[str, Any]) -> list[str]:
    rows = targets(report)
    if not rows:
        return []
    mark = {True: "met", False: "MISSED", None: "-"}
    return ["", "| target | measured | |", "|---|---|---|", *[f"| {t} | {m} | {mark[ok]} |" for t, m, ok in rows]]


def _reference_lines() -> list[str]:
    lines = [
        "",
        "Reference figures (2-core AVX2 CPU, Qwen3-0.6B architecture), tokens/s:",
        "",
        "| software | prefill 64 | prefill 512 | decode |",
        "|---|---|---|---|",
    ]
    for name, figures in REFERENCE_FIGURES.items():
        lines.append(
            f"| {name} | {figures.get('prefill_64', '-')} | {figures.get('prefill_512', '-')} | {figures['decode']} |"
        )
    return lines


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in report["results"] if "error" not in r]
    if not results:
        return
    names = [r["precision"] for r in results]
    panels = [
        ("decode tok/s", [r["decode_tok_s"]["median"] for r in results]),
        ("prefill tok/s", [r["prefill_tok_s"]["median"] for r in results]),
        ("weights MiB", [r["weights_bytes"] / 2**20 for r in results]),
        ("mean KL vs reference", [r["fidelity"].get("mean_kl", 0.0) for r in results]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for axis, (title, values) in zip(axes, panels, strict=True):
        axis.bar(names, values, color=["#6d5dfc", "#22a39f", "#f29e4c", "#8a8f98"][: len(names)])
        axis.set_title(title)
        for x, value in enumerate(values):
            axis.annotate(f"{value:.3g}", (x, value), ha="center", va="bottom", fontsize=8)
    figure.suptitle(f"{Path(report['model']).name}: precision comparison on {results[0]['device']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="checkpoint folder or hub id, e.g. one from make-model (default: QWEN_MODEL or the Qwen3 hub id)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", default=",".join(ALL_PRECISIONS))
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--scenario-tokens", type=int, default=32, help="reply length in the chat scenarios")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--baseline",
        default="bf16",
        help="plain transformers dtypes to measure beside ours (fp32, bf16, fp16, or none)",
    )
    parser.add_argument(
        "--concurrency",
        help="only the serving bench, at these stream counts, e.g. 1,2,4,8,16 (the default run does 1,4,8)",
    )
    parser.add_argument("--serving-tokens", type=int, default=32, help="new tokens per stream in the serving bench")
    parser.add_argument(
        "--peer",
        choices=["llama.cpp"],
        help="only compare CPU prefill and decode with this engine, interleaved (builds and converts once)",
    )
    parser.add_argument("--peer-rounds", type=int, default=5, help="interleaved rounds of the peer comparison")
    parser.add_argument(
        "--peer-isa",
        choices=["native", "avx2"],
        default="native",
        help="instruction set of both sides of --peer: this CPU's (default), or AVX2 only, as an AVX2 CPU runs them "
        "(llama.cpp built for AVX2, ours with ATEN_CPU_CAPABILITY=avx2 and oneDNN/MKL limited to AVX2)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads for both sides of --peer (default: all cores)")
    parser.add_argument(
        "--depth",
        type=int,
        default=0,
        help="with --peer: also decode after this many tokens of context (llama-bench -d), and beside our "
        "default mode the same mode with PyTorch's attention instead of our decode attention kernel (e.g. 2048)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per precision")


DEFAULT_LEVELS = (1, 4, 8)


def run_serving(args: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    spec = {"model": args.model, "device": args.device, "serving": levels, "serving_tokens": args.serving_tokens}
    return run_worker(spec, timeout=args.timeout)


def serving_main(args: argparse.Namespace, levels: list[int]) -> int:
    serving = run_serving(args, levels)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(serving, indent=2) + "\n", encoding="utf-8")
    print(f"Model: {args.model}")
    print("\n".join(bench_serving.markdown_lines(serving)))
    print(f"\nWrote {args.out / 'serving.json'}")
    return 1 if "error" in serving else 0


def main(args: argparse.Namespace) -> int:
    if args.model is None:
        from ..settings import Settings

        args.model = Settings().model
    if args.peer:
        from . import bench_peer

        return bench_peer.main(
            args.model, args.peer, args.peer_rounds, args.threads, args.out, isa=args.peer_isa, depth=args.depth
        )
    if args.concurrency:
        return serving_main(args, [int(level) for level in args.concurrency.split(",") if level.strip()])
    report = run_bench(args)
    report["serving"] = run_serving(args, list(DEFAULT_LEVELS))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    chart(report, args.out / "bench.png")
    print(markdown(report))
    print(f"\nWrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    return 0 if all("error" not in r for r in report["results"]) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m chatbot bench", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
