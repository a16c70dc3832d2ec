"""``python -m chatbot bench --peer llama.cpp``: our CPU prefill and decode beside llama.cpp's, from one run.

llama.cpp (what Ollama runs on CPUs) is built once from the ``llama-cpp-python`` source distribution
and converts the same checkpoint to GGUF F16 and Q8_0 with its own converter (``cli/llamacpp.py``;
the checkpoint needs Qwen3's real tokenizer: ``make-model OUT --size 0.6b --tokenizer qwen3``). Ours
runs in two worker processes that stay loaded: the mode ``auto`` picks here, and INT8 (or FP16 when
``auto`` picked INT8). Every round measures each contestant once, in turn (ours default, llama.cpp
F16, ours 8-bit, llama.cpp Q8_0), so a busy neighbour slows them alike; the report gives every
round's figure, the medians and the ratios of medians, all from the same run.

Measured as llama-bench measures: prefill of a 512-token prompt (pp512) and 64 tokens generated from
an almost empty context (tg64), with the same number of threads on both sides. Ours are requests
served by ``ChatEngine`` (its worker thread, sampler, stop checks and streaming detokenizer), as a
chat gets them; each round also decodes the same request through the same engine code on the
worker process's main thread, and the report gives served / main thread.

    python -m chatbot make-model /tmp/qwen3-0.6b --size 0.6b --tokenizer qwen3
    python -m chatbot bench --model /tmp/qwen3-0.6b --peer llama.cpp [--peer-rounds 5] [--peer-isa avx2]

``--depth 2048`` adds decode after 2,048 tokens of context (llama-bench ``-d 2048``; ours: a request
whose 2,048-token prompt was read once and is kept in the engine's conversation cache, so each round
prefills one token and then decodes 64), and a third worker of ours in the default mode with PyTorch's
attention reading the cache (``QWEN_CPU_ATTENTION=sdpa``), as before our decode attention kernel.

``--peer-isa avx2`` measures both sides with AVX2 kernels only on a CPU that has AVX-512: llama.cpp
built for AVX2, ours with PyTorch, oneDNN and MKL held to AVX2 (``AVX2_ONLY``). That is the code an
AVX2-only CPU runs, on this machine's memory and clock.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS = ("llama.cpp",)
# What holds PyTorch (its own kernels and Inductor's generated code), oneDNN and MKL to AVX2.
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
PROMPT_TOKENS = 512  # llama-bench's pp512
NEW_TOKENS = 64  # llama-bench's tg64
SDPA_VAR = "QWEN_CPU_ATTENTION"  # =sdpa: PyTorch's attention reads the cache (the third worker at --depth)
SERVED_TARGET = 0.97  # served decode (engine worker thread) against the same decode on the main thread


@dataclass
class Contestant:
    """One engine in one mode; ``measure`` runs one round and returns {"prefill": tok/s, "decode": tok/s}."""

    name: str
    kind: str  # "ours" or "peer"
    measure: Callable[[], dict[str, float]]
    close: Callable[[], None] = lambda: None
    info: dict[str, Any] = field(default_factory=dict)


def interleave(contestants: list[Contestant], rounds: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every contestant once per round, in turn; returns each one's figures per round."""
    figures: dict[str, dict[str, list[float]]] = {c.name: {"prefill": [], "decode": []} for c in contestants}
    for round_number in range(1, rounds + 1):
        for contestant in contestants:
            result = contestant.measure()
            for key, value in result.items():  # ours add "decode_main_thread"; with a depth, "decode_at_depth"
                figures[contestant.name].setdefault(key, []).append(value)
            at_depth = f", at depth {result['decode_at_depth']:.1f}" if "decode_at_depth" in result else ""
            log(
                f"round {round_number}/{rounds}: {contestant.name}: prefill {result['prefill']:.1f}, "
                f"decode {result['decode']:.1f}{at_depth} tok/s"
            )
    return {
        "rounds": rounds,
        "contestants": [{"name": c.name, "kind": c.kind, **c.info, **figures[c.name]} for c in contestants],
    }


# --- llama.cpp -------------------------------------------------------------------------------------------------


def llama_bench_round(binary: Path, gguf: Path, threads: int, depth: int = 0) -> dict[str, float]:
    """One ``llama-bench`` call (one repetition of pp512 and tg64 after its own warm-up); with ``depth``,
    a second one for tg64 after ``depth`` tokens of context (``-d``)."""
    base = [str(binary), "-m", str(gguf), "-t", str(threads), "-r", "1", "-o", "json"]
    figures = parse_llama_bench(_llama_bench([*base, "-p", str(PROMPT_TOKENS), "-n", str(NEW_TOKENS)]))
    if depth:
        deep = parse_llama_bench(_llama_bench([*base, "-p", "0", "-n", str(NEW_TOKENS), "-d", str(depth)]), depth)
        figures["decode_at_depth"] = deep["decode_at_depth"]
    return figures


def _llama_bench(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"llama-bench failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def parse_llama_bench(output: str, depth: int = 0) -> dict[str, float]:
    """{"prefill", "decode"} tokens/s from ``llama-bench -o json`` (the pp and the tg test); with ``depth``,
    {"decode_at_depth"}: its tg test at that depth."""
    figures: dict[str, float] = {}
    for test in json.loads(output):
        if depth:
            if test["n_gen"] and not test["n_prompt"] and test.get("n_depth", 0) == depth:
                figures["decode_at_depth"] = float(test["avg_ts"])
        elif test["n_prompt"] and not test["n_gen"]:
            figures["prefill"] = float(test["avg_ts"])
        elif test["n_gen"] and not test["n_prompt"]:
            figures["decode"] = float(test["avg_ts"])
    if depth:
        if not figures:
            raise RuntimeError(f"llama-bench printed no tg figure at depth {depth}: {output[:300]}")
        return figures
    if set(figures) != {"prefill", "decode"}:
        raise RuntimeError(f"llama-bench printed no pp and tg figures: {output[:300]}")
    return figures


def gguf_copies(
    checkpoint: Path, log: Callable[[str], None], out_dir: Path | None = None, isa: str = "native"
) -> tuple[Any, dict[str, Path]]:
    """The llama.cpp build for ``isa`` (built once) and GGUF F16 and Q8_0 copies of ``checkpoint``
    (converted once, into ``out_dir`` or a folder of the native build's cache named after the checkpoint)."""
    from .llamacpp import LlamaCppError, cache_root, ensure_built

    build = ensure_built(log=log, isa=isa)
    key = hashlib.sha256(str(checkpoint.resolve()).encode()).hexdigest()[:12]
    out_dir = out_dir or cache_root() / "gguf" / f"{checkpoint.name}-{key}"
    log(f"GGUF F16 and Q8_0 of {checkpoint} in {out_dir} (converted once)")
    try:
        return build, build.convert(checkpoint, out_dir)
    except LlamaCppError as error:
        raise LlamaCppError(
            f"llama.cpp could not convert {checkpoint}: {error}",
            fix="llama.cpp's converter needs Qwen3's real tokenizer: make the checkpoint with "
            "`python -m chatbot make-model OUT --size 0.6b --tokenizer qwen3`.",
        ) from error


# --- ours: a worker process per mode that stays loaded between rounds --------------------------------------------


class OurWorker:
    """``python -m chatbot.cli.bench_worker`` in peer mode: loads once, then measures a round per request."""

    def __init__(
        self,
        model: str,
        precision: str,
        threads: int,
        isa: str = "native",
        depth: int = 0,
        environ: dict[str, str] | None = None,
    ) -> None:
        spec = {
            "peer": True,
            "model": model,
            "precision": precision,
            "threads": threads,
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": NEW_TOKENS,
            "depth": depth,
        }
        env = {
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            **(AVX2_ONLY if isa == "avx2" else {}),
            **(environ or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatbot.cli.bench_worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.info = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"our bench worker exited with {self.process.wait()} (its error is above)")
        return json.loads(line)

    def measure(self) -> dict[str, float]:
        assert self.process.stdin is not None
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        return self._reply()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> dict[str, Any]:
        """Ends the worker; returns its last word (peak memory)."""
        assert self.process.stdin is not None
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        last = self._reply()
        self.process.wait(timeout=60)
        return last


def run_peer(
    model: str,
    peer: str,
    rounds: int,
    threads: int | None,
    log: Callable[[str], None],
    gguf_dir: Path | None = None,
    isa: str = "native",
    depth: int = 0,
) -> dict[str, Any]:
    """Build and convert for the peer, start our two workers (three with a ``depth``), interleave ``rounds``
    rounds.

    Raises:
        LlamaCppError: llama.cpp cannot be built, or its converter refuses the checkpoint.
        RuntimeError: a worker or llama-bench failed (with its error).
    """
    if peer not in PEERS:
        raise SystemExit(f"error: unknown peer {peer!r}; choose from {', '.join(PEERS)}")
    from ..model.device import detect_device

    threads = threads or len(os.sched_getaffinity(0))
    build, gguf = gguf_copies(Path(model), log, gguf_dir, isa)
    bench = build.binary("llama-bench")
    workers = [OurWorker(model, "auto", threads, isa, depth)]
    default = workers[0]
    try:
        workers.append(OurWorker(model, "fp16" if default.info["mode"] == "int8" else "int8", threads, isa, depth))
        if depth:  # the default mode as it was before our decode attention kernel
            workers.append(OurWorker(model, default.info["mode"], threads, isa, depth, {SDPA_VAR: "sdpa"}))
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    other = workers[1]
    contestants = [
        Contestant(f"ours, default ({default.info['label']})", "ours", default.measure, info=default.info),
        Contestant("llama.cpp F16", "peer", lambda: llama_bench_round(bench, gguf["f16"], threads, depth)),
        Contestant(f"ours, {other.info['label']}", "ours", other.measure, info=other.info),
        Contestant("llama.cpp Q8_0", "peer", lambda: llama_bench_round(bench, gguf["q8_0"], threads, depth)),
    ]
    if depth:
        sdpa = workers[2]
        name = f"ours, {sdpa.info['label']}, PyTorch's attention"
        contestants.append(Contestant(name, "ours", sdpa.measure, info=sdpa.info))
    try:
        report = interleave(contestants, rounds, log)
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    ends = [worker.close() for worker in workers]
    ours = [c for c in report["contestants"] if c["kind"] == "ours"]
    for contestant, end in zip(ours, ends, strict=True):
        contestant.update(end)
    device = detect_device("cpu")
    report.update(
        model=model,
        peer=peer,
        threads=threads,
        machine=device.name,
        isa=_isa(isa),
        prompt_tokens=PROMPT_TOKENS,
        new_tokens=NEW_TOKENS,
        depth=depth,
    )
    return report


def _isa(isa: str = "native") -> str:
    import torch

    from ..model.device import cpu_flags

    extras = [flag for flag in ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni") if flag in cpu_flags()]
    native = ", ".join([torch.backends.cpu.get_cpu_capability(), *extras])
    return native if isa == "native" else f"AVX2 kernels only, on a CPU with {native}"


# --- report ----------------------------------------------------------------------------------------------------


def ratios(report: dict[str, Any]) -> list[tuple[str, str, float, float | None]]:
    """(comparison, figure, ratio of medians, target or None) for the pairs the targets are about."""
    by_name = {c["name"]: c for c in report["contestants"]}
    ours = [c for c in report["contestants"] if c["kind"] == "ours"]
    default, other = ours[0], ours[1]  # a third, with --depth: the default mode with PyTorch's attention
    eight_bit = other if other.get("mode") == "int8" else default
    sixteen_bit = default if eight_bit is other else other
    f16, q8 = by_name["llama.cpp F16"], by_name["llama.cpp Q8_0"]
    rows = []
    for figure, target in (("decode", 1.0), ("prefill", 1.0)):
        rows.append((f"ours {sixteen_bit['label']} / llama.cpp F16", figure, _ratio(sixteen_bit, f16, figure), target))
    rows.append((f"ours {eight_bit['label']} / llama.cpp Q8_0", "decode", _ratio(eight_bit, q8, "decode"), 0.9))
    rows.append((f"ours {eight_bit['label']} / llama.cpp Q8_0", "prefill", _ratio(eight_bit, q8, "prefill"), None))
    rows.append(("llama.cpp Q8_0 / F16", "decode", _ratio(q8, f16, "decode"), None))
    rows.append(
        (
            f"ours {eight_bit['label']} / ours {sixteen_bit['label']}",
            "decode",
            _ratio(eight_bit, sixteen_bit, "decode"),
            None,
        )
    )
    for contestant in ours:
        if contestant.get("decode_main_thread"):
            served_ratio = statistics.median(contestant["decode"]) / statistics.median(contestant["decode_main_thread"])
            rows.append((f"ours {contestant['label']} served / main thread", "decode", served_ratio, SERVED_TARGET))
    if report.get("depth"):
        rows += _depth_ratios(report, by_name, ours, sixteen_bit, eight_bit)
    if eight_bit.get("peak_rss_bytes") and sixteen_bit.get("peak_rss_bytes"):
        memory = eight_bit["peak_rss_bytes"] / sixteen_bit["peak_rss_bytes"]
        rows.append((f"ours {eight_bit['label']} / ours {sixteen_bit['label']}", "peak memory", memory, 0.65))
    return rows


def _depth_ratios(
    report: dict[str, Any],
    by_name: dict[str, dict[str, Any]],
    ours: list[dict[str, Any]],
    sixteen_bit: dict[str, Any],
    eight_bit: dict[str, Any],
) -> list[tuple[str, str, float, float | None]]:
    """The rows about decode after ``depth`` tokens: against llama.cpp, against PyTorch's attention, against
    depth 0."""
    figure = f"decode at depth {report['depth']}"
    f16, q8 = by_name["llama.cpp F16"], by_name["llama.cpp Q8_0"]
    rows: list[tuple[str, str, float, float | None]] = [
        (f"ours {sixteen_bit['label']} / llama.cpp F16", figure, _ratio(sixteen_bit, f16, "decode_at_depth"), 1.0),
        (f"ours {eight_bit['label']} / llama.cpp Q8_0", figure, _ratio(eight_bit, q8, "decode_at_depth"), 1.0),
    ]
    if len(ours) > 2:
        ratio = _ratio(ours[0], ours[2], "decode_at_depth")
        rows.append((f"ours {ours[0]['label']}: our / PyTorch's decode attention", figure, ratio, None))
    for contestant in [*ours, f16, q8]:
        flat = statistics.median(contestant["decode_at_depth"]) / statistics.median(contestant["decode"])
        rows.append((f"{contestant['name']}: at depth / at the start", "decode", flat, None))
    return rows


def _ratio(a: dict[str, Any], b: dict[str, Any], figure: str) -> float:
    return statistics.median(a[figure]) / statistics.median(b[figure])


def markdown_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        f"{report['peer']} beside this app on {report['machine']} ({report['isa']}), {report['threads']} threads, "
        f"{report['rounds']} interleaved rounds; prefill = {report['prompt_tokens']}-token prompt (pp512), "
        f"decode = {report['new_tokens']} tokens (tg64); tokens/s",
        "",
        "| engine, mode | prefill, each round | median | decode, each round | median "
        "| decode on the main thread, median | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    depth = report.get("depth")
    if depth:
        lines[0] += f"; at depth = {report['new_tokens']} tokens after {depth} tokens of context (llama-bench -d)"
        header = f"| decode at depth {depth}, each round | median | peak RSS MiB |"
        lines[2] = lines[2][: -len("| peak RSS MiB |")] + header
        lines[3] += "---|---|"
    for c in report["contestants"]:
        memory = f"{c['peak_rss_bytes'] / 2**20:.0f}" if c.get("peak_rss_bytes") else "-"
        main_thread = f"{statistics.median(c['decode_main_thread']):.1f}" if c.get("decode_main_thread") else "-"
        deep = f" {_each(c['decode_at_depth'])} | {statistics.median(c['decode_at_depth']):.1f} |" if depth else ""
        lines.append(
            f"| {c['name']} | {_each(c['prefill'])} | {statistics.median(c['prefill']):.1f} "
            f"| {_each(c['decode'])} | {statistics.median(c['decode']):.1f} | {main_thread} |{deep} {memory} |"
        )
    lines += ["", "| ratio of medians | figure | ratio | target |", "|---|---|---|---|"]
    for comparison, figure, ratio, target in ratios(report):
        lower_is_better = figure == "peak memory"
        verdict = (
            "-"
            if target is None
            else ("met" if (ratio <= target if lower_is_better else ratio >= target) else "MISSED")
        )
        bound = "-" if target is None else f"{'<=' if lower_is_better else '>='} {target:.2f}x ({verdict})"
        lines.append(f"| {comparison} | {figure} | {ratio:.2f}x | {bound} |")
    return lines


def _each(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def main(
    model: str, peer: str, rounds: int, threads: int | None, out: Path, isa: str = "native", depth: int = 0
) -> int:
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    from .llamacpp import LlamaCppError

    try:
        report = run_peer(model, peer, rounds, threads, log, isa=isa, depth=depth)
    except LlamaCppError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    name = "peer.json" if isa == "native" else f"peer-{isa}.json"
    (out / name).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print("\n".join(markdown_lines(report)))
    print(f"\nWrote {out / name}")
    return 0
