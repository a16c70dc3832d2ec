"""Serving figures for ``python -m chatbot bench``: concurrent streams with continuous batching beside one
at a time (``--max-batch 1``), all in one process on one loaded model, one scenario after another.

* concurrency: for each level N, N streams from N clients at once, with ``max_batch = N`` and with
  ``max_batch = 1``: aggregate tokens/s, tokens/s per stream, p50/p95 time to first token and the
  p95 gap between tokens of a stream;
* mixed: a short request arrives while 4 long replies stream (default ``max_batch``, and one at a
  time): its time to first token and the longest stall of the long streams meanwhile;
* flood: one client fills its share of the queue with long requests, then another client asks a
  short question: its time to first token, in scheduling rounds (the flood's median gap between tokens).

Run in a worker process: ``python -m chatbot.cli.bench_worker '{"serving": ...}'``.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

MIXED_LONG_STREAMS = 4
MIXED_SHORT_REQUESTS = 5
FLOOD_REQUESTS = 12


@dataclass
class Trace:
    """What one stream saw: when it asked, when each token came, and how it ended."""

    submitted: float
    arrivals: list[float] = field(default_factory=list)
    tokens: int = 0
    ttft: float | None = None
    ended: float | None = None
    error: str | None = None

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


def _follow(job: Any, trace: Trace) -> None:
    from ..engine.engine import Failed, Finished, TextDelta

    while True:
        event = job.events.get()
        now = time.perf_counter()
        if isinstance(event, TextDelta):
            continue  # token times come from job.token_times (random weights often decode to no text)
        if isinstance(event, Finished):
            stats = event.result.stats
            trace.tokens = stats.new_tokens
            trace.ttft = stats.queue_seconds + stats.time_to_first_token
            trace.ended = now
            return
        elif isinstance(event, Failed):
            trace.error, trace.ended = event.error.message, now
            return


def _start(engine: Any, ids: list[int], options: Any, client: str) -> tuple[Any, Trace, threading.Thread]:
    trace = Trace(time.perf_counter())
    job = engine.submit(ids, options, client=client)
    job.token_times = trace.arrivals  # from the second token on at least: the first may come before this
    follower = threading.Thread(target=_follow, args=(job, trace), daemon=True)
    follower.start()
    return job, trace, follower


def _prompt(loaded: Any, text: str) -> list[int]:
    from ..chat.prompt import build_prompt

    messages = [{"role": "user", "content": text}]
    return build_prompt(
        loaded.tokenizer, messages, enable_thinking=False, max_context=loaded.max_context, max_new_tokens=64
    ).ids


def _options(tokens: int) -> Any:
    from ..engine.sampling import sampling_options

    return sampling_options(False, temperature=0, min_new_tokens=tokens, max_new_tokens=tokens)


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _engine(loaded: Any, max_batch: int | None, queue_size: int = 64) -> Any:
    from ..engine.engine import ChatEngine

    return ChatEngine.from_loaded(loaded, max_batch=max_batch, queue_size=queue_size, prefix_cache_tokens=0)


def concurrency_level(loaded: Any, streams: int, max_batch: int, tokens: int) -> dict[str, Any]:
    """``streams`` requests from as many clients at once, ``max_batch`` of them running together."""
    engine = _engine(loaded, max_batch)
    started = time.perf_counter()
    runs = [
        _start(engine, _prompt(loaded, f"Stream {i}: tell me about the rabbit."), _options(tokens), f"bench {i}")
        for i in range(streams)
    ]
    for _, _, follower in runs:
        follower.join()
    engine.close()
    traces = [trace for _, trace, _ in runs]
    errors = [t.error for t in traces if t.error]
    if errors:
        return {"error": errors[0]}
    wall = max(t.ended for t in traces) - started
    ttfts = [t.ttft for t in traces]
    decoding = [(t.tokens - 1, t.ended - t.submitted - t.ttft) for t in traces if t.tokens > 1]
    per_stream = [tokens / seconds for tokens, seconds in decoding if seconds > 0]
    gaps = [gap for t in traces for gap in t.gaps()]
    return {
        "streams": streams,
        "max_batch": max_batch,
        "aggregate_tok_s": sum(t.tokens for t in traces) / wall,
        "per_stream_tok_s": statistics.median(per_stream) if per_stream else None,
        "ttft_p50_s": _percentile(ttfts, 0.5),
        "ttft_p95_s": _percentile(ttfts, 0.95),
        "gap_p95_s": _percentile(gaps, 0.95),
    }


def mixed(loaded: Any, max_batch: int | None, tokens: int, shorts: int) -> dict[str, Any]:
    """A short request (or several, one after another) while 4 long replies stream."""
    engine = _engine(loaded, max_batch)
    long_tokens = tokens * 4
    longs = [
        _start(engine, _prompt(loaded, f"Long reply {i}, please."), _options(long_tokens), f"long {i}")
        for i in range(MIXED_LONG_STREAMS)
    ]
    while any(not trace.arrivals and trace.ended is None for _, trace, _ in longs):
        time.sleep(0.01)
    window_start = time.perf_counter()
    short_ttfts = []
    for i in range(shorts):
        _, trace, follower = _start(engine, _prompt(loaded, f"Quick question {i}?"), _options(8), f"short {i}")
        follower.join()
        short_ttfts.append(trace.ttft)
        if all(t.ended is not None for _, t, _ in longs):
            break
    window_end = time.perf_counter()
    for _, _, follower in longs:
        follower.join()
    engine.close()
    stalls = [
        gap
        for _, trace, _ in longs
        for start, gap in zip(trace.arrivals, trace.gaps(), strict=False)
        if window_start <= start + gap and start <= window_end
    ]
    return {
        "max_batch": engine.max_batch,
        "short_requests": len(short_ttfts),
        "short_ttft_p95_s": _percentile(short_ttfts, 0.95),
        "short_ttft_max_s": max(short_ttfts),
        "long_stall_max_s": max(stalls, default=None),
    }


def flood(loaded: Any, tokens: int) -> dict[str, Any]:
    """One client floods its share of the queue; another client's first token, in scheduling rounds."""
    from ..errors import QueueFullError

    engine = _engine(loaded, None, queue_size=16)
    floods = []
    for i in range(FLOOD_REQUESTS):
        try:
            floods.append(_start(engine, _prompt(loaded, f"Flood {i}"), _options(tokens * 4), "flooder"))
        except QueueFullError:
            break
    # Until the running slots stream (a reply may also end before writing any text).
    while sum(1 for _, t, _ in floods if t.arrivals or t.ended) < min(len(floods), engine.max_batch):
        time.sleep(0.01)
    time.sleep(0.5)
    _, polite, follower = _start(engine, _prompt(loaded, "A polite question?"), _options(8), "polite")
    follower.join()
    for job, _, _ in floods:
        job.cancel.set()
    for _, _, thread in floods:
        thread.join()
    engine.close()
    flood_gaps = [gap for _, t, _ in floods for gap in t.gaps()]
    round_s = statistics.median(flood_gaps) if flood_gaps else None
    return {
        "accepted_from_flooder": len(floods),
        "other_client_ttft_s": polite.ttft,
        "round_s": round_s,
        "other_client_ttft_rounds": polite.ttft / round_s if round_s else None,
    }


def _generate_batch_figures(model: Any, loaded: Any, levels: list[int], tokens: int) -> dict[str, Any]:
    from transformers import ContinuousBatchingConfig, GenerationConfig

    # A cache sized for this workload: by default it takes a share of all free memory, which on a CPU
    # host is most of the machine's RAM.
    blocks = ContinuousBatchingConfig(num_blocks=2 * max(levels) + 4, max_batch_tokens=512)
    config = GenerationConfig(
        max_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=loaded.tokenizer.pad_token_id
    )
    figures: dict[str, Any] = {}
    try:
        for streams in levels:
            prompts = [_prompt(loaded, f"Stream {i}: tell me about the rabbit.") for i in range(streams)]
            model.generate_batch(prompts[:1], generation_config=config, continuous_batching_config=blocks)  # warm-up
            started = time.perf_counter()
            outputs = model.generate_batch(prompts, generation_config=config, continuous_batching_config=blocks)
            wall = time.perf_counter() - started
            made = sum(len(output.generated_tokens) for output in outputs.values())
            if not made:
                figures["error"] = "no tokens: its requests failed inside generate_batch (its log says why)"
                break
            figures[str(streams)] = {"aggregate_tok_s": made / wall, "tokens": made}
    except Exception as exc:  # reported as the comparison's result: which part of it does not run here
        figures["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return figures


def transformers_batching(loaded: Any, levels: list[int], tokens: int) -> dict[str, Any]:
    """transformers' own continuous batching (``generate_batch``: paged cache, its scheduler), greedy,
    for comparison with ours: on our loaded model and layers, then on plain transformers layers in BF16."""
    import torch

    from ..engine.batching import ROW_PREFIX
    from ..model.kv_attention import ATTENTION_NAME
    from ..model.loader import load_model

    model = loaded.model
    ours = model.config._attn_implementation
    inner = ours.removeprefix(ROW_PREFIX)
    # transformers' paged cache holds what attention computes in: its own SDPA, not ours over a 16-bit cache.
    model.config._attn_implementation = "sdpa" if inner == ATTENTION_NAME else inner
    try:
        on_ours = _generate_batch_figures(model, loaded, levels, tokens)
    finally:
        model.config._attn_implementation = ours
    plain = load_model(str(loaded.checkpoint.path), device=str(loaded.device), precision="fp32")
    plain.model.to(torch.bfloat16)
    return {"our_layers": on_ours, "plain_bf16": _generate_batch_figures(plain.model, plain, levels, tokens)}


def serving(loaded: Any, levels: list[int], tokens: int) -> dict[str, Any]:
    """All serving scenarios on ``loaded`` (warm-up first)."""
    concurrency_level(loaded, 2, 2, 4)  # warm-up: kernels and caches of both paths
    concurrency_level(loaded, 1, 1, 4)
    table = []
    for streams in levels:
        table.append(
            {
                "streams": streams,
                "batched": concurrency_level(loaded, streams, streams, tokens),
                "one_at_a_time": concurrency_level(loaded, streams, 1, tokens),
            }
        )
    return {
        "tokens": tokens,
        "concurrency": table,
        "mixed": {
            "batched": mixed(loaded, None, tokens, MIXED_SHORT_REQUESTS),
            "one_at_a_time": mixed(loaded, 1, tokens, 1),
        },
        "flood": flood(loaded, tokens),
        "transformers_continuous_batching": transformers_batching(loaded, levels, tokens),
    }


# --- report ---------------------------------------------------------------------------------------------------

TARGET_RATIOS = {4: 2.0, 8: 2.5}  # aggregate decode of N streams over one stream (CPU targets)
TARGET_SHORT_TTFT_S = 1.5
TARGET_STALL_S = 1.0


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def targets(serving: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the serving targets this run can judge."""
    rows = {row["streams"]: row for row in serving.get("concurrency", [])}
    one = rows.get(1, {}).get("batched", {}).get("aggregate_tok_s")
    out = []
    for streams, ratio in TARGET_RATIOS.items():
        figure = rows.get(streams, {}).get("batched", {}).get("aggregate_tok_s")
        if figure is not None and one:
            out.append((f"{streams} streams >= {ratio}x one stream", f"{figure / one:.2f}x", figure / one >= ratio))
    mixed = serving.get("mixed", {}).get("batched", {})
    if mixed.get("short_ttft_p95_s") is not None:
        ttft, stall = mixed["short_ttft_p95_s"], mixed.get("long_stall_max_s")
        out.append(
            (f"short request beside 4 streams: TTFT p95 <= {TARGET_SHORT_TTFT_S} s", f"{ttft:.2f} s", ttft <= 1.5)
        )
        if stall is not None:
            out.append((f"no stream stalls > {TARGET_STALL_S} s meanwhile", f"{stall:.2f} s", stall <= TARGET_STALL_S))
    flood_result = serving.get("flood", {})
    rounds = flood_result.get("other_client_ttft_rounds")
    if rounds is not None:
        out.append(("a flood delays another client by <= 1 round", f"{rounds:.1f} rounds", None))
    return out


def markdown_lines(serving: dict[str, Any]) -> list[str]:
    if "error" in serving:
        return ["", f"Serving scenarios failed: {serving['error']}"]
    lines = [
        "",
        f"Serving ({serving.get('label', '')}; {serving['tokens']} new tokens per stream; "
        "batched = continuous batching with max_batch = streams, serial = --max-batch 1, same run):",
        "",
        "| streams | aggregate tok/s batched | serial | ratio | tok/s per stream batched | serial "
        "| TTFT p50 / p95 s batched | serial | p95 gap s batched | serial |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in serving["concurrency"]:
        b, s = row["batched"], row["one_at_a_time"]
        if "error" in b or "error" in s:
            lines.append(f"| {row['streams']} | failed: {b.get('error') or s.get('error')} |" + " |" * 8)
            continue
        lines.append(
            f"| {row['streams']} | {_f(b['aggregate_tok_s'])} | {_f(s['aggregate_tok_s'])} "
            f"| {b['aggregate_tok_s'] / s['aggregate_tok_s']:.2f}x | {_f(b['per_stream_tok_s'])} "
            f"| {_f(s['per_stream_tok_s'])} | {_f(b['ttft_p50_s'], 2)} / {_f(b['ttft_p95_s'], 2)} "
            f"| {_f(s['ttft_p50_s'], 2)} / {_f(s['ttft_p95_s'], 2)} "
            f"| {_f(b['gap_p95_s'], 2)} | {_f(s['gap_p95_s'], 2)} |"
        )
    mixed_result, flood_result = serving["mixed"], serving["flood"]
    b, s = mixed_result["batched"], mixed_result["one_at_a_time"]
    lines += [
        "",
        f"Mixed: a short request while {MIXED_LONG_STREAMS} long replies stream: TTFT p95 "
        f"{_f(b['short_ttft_p95_s'], 2)} s (max_batch {b['max_batch']}, {b['short_requests']} requests; "
        f"longest stall of a long stream meanwhile {_f(b['long_stall_max_s'], 2)} s); one at a time "
        f"{_f(s['short_ttft_max_s'], 2)} s.",
        f"Flood: one client sent {flood_result['accepted_from_flooder']} long requests (the rest got 429); another "
        f"client's first token came after {_f(flood_result['other_client_ttft_s'], 2)} s = "
        f"{_f(flood_result['other_client_ttft_rounds'])} rounds of {_f(flood_result['round_s'], 3)} s.",
        "",
        "| serving target | measured | met |",
        "|---|---|---|",
    ]
    for target, measured, met in targets(serving):
        lines.append(f"| {target} | {measured} | {'-' if met is None else ('yes' if met else 'no')} |")
    theirs = serving.get("transformers_continuous_batching", {})
    if theirs:
        ours = {row["streams"]: row["batched"].get("aggregate_tok_s") for row in serving["concurrency"]}
        lines += [
            "",
            "transformers' continuous batching (generate_batch, greedy), aggregate tok/s, same run:",
            "",
            "| streams | this engine | generate_batch on our layers | generate_batch, plain BF16 layers |",
            "|---|---|---|---|",
        ]
        for streams in sorted(ours):
            cells = []
            for figures in (theirs.get("our_layers", {}), theirs.get("plain_bf16", {})):
                figure = figures.get(str(streams))
                cells.append(_f(figure["aggregate_tok_s"]) if figure else figures.get("error", "-"))
            lines.append(f"| {streams} | {_f(ours[streams])} | {cells[0]} | {cells[1]} |")
    return lines
