"""Measurements for ``python -m chatbot bench``, each in a fresh process (``python -m chatbot.cli.bench_worker SPEC``).

``worker`` measures one precision of this project's engine (load, memory, time to first token, prefill
and decode speed, fidelity against a reference, and for the default precision the chat scenarios);
``plain_worker`` measures plain transformers on the same weights as the baseline. Each prints one JSON
line; ``chatbot.cli.bench`` runs them and writes the report.

Every speed of ours comes from ``ChatEngine`` as the servers run it: requests submitted to the engine,
decoded by its worker thread with its sampler, stop checks and streaming detokenizer, timed by the
request's own stats. Beside each served decode, interleaved, the same request runs through the same
engine code on the process's main thread (``ChatEngine.run_on_this_thread``): the ratio shows what
serving from the worker thread costs.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

FIDELITY_TOKENS = 256
FIDELITY_DECODE_TOKENS = 64  # fed one token at a time: the decode kernels' own fidelity
TURNS = (1, 2, 4, 8)
BATCH_SIZES = (1, 4, 8)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _prompt_ids(tokenizer: Any, count: int) -> list[int]:
    from ..authoring.tokenizer_build import data_text

    ids = tokenizer.encode(data_text("passage.txt"))
    while len(ids) < count:
        ids = ids + ids
    return ids[:count]


def bench_engine(loaded: Any) -> Any:
    """An engine over ``loaded`` for speed runs: one request at a time, no prefix cache (each run reads
    its whole prompt)."""
    from ..engine.engine import ChatEngine

    return ChatEngine.from_loaded(loaded, max_batch=1, prefix_cache_tokens=0)


def served(engine: Any, prompt: list[int], options: Any) -> Any:
    """The result of one request served by ``engine``'s worker thread (raises the request's error)."""
    from ..engine.engine import Failed, Finished

    for event in engine.stream(prompt, options):
        if isinstance(event, Finished):
            return event.result
        if isinstance(event, Failed):
            raise event.error
    raise RuntimeError("the request ended without a result")


def greedy(new_tokens: int) -> Any:
    from ..engine.sampling import sampling_options

    return sampling_options(False, temperature=0, min_new_tokens=new_tokens, max_new_tokens=new_tokens)


def _measure_generation(engine: Any, prompt: list[int], new_tokens: int, runs: int) -> dict[str, Any]:
    """Served runs, each followed by the same request on the main thread (decode only)."""
    options = greedy(new_tokens)
    served(engine, prompt[:32], greedy(4))  # warm-up, on both threads
    engine.run_on_this_thread(prompt[:32], greedy(4))
    ttft, prefill, decode, main_thread = [], [], [], []
    for _ in range(runs):
        stats = served(engine, prompt, options).stats
        ttft.append(stats.time_to_first_token)
        prefill.append(len(prompt) / stats.prefill_seconds)
        decode.append(stats.tokens_per_second)
        main_thread.append(engine.run_on_this_thread(prompt, options).stats.tokens_per_second)
    return {
        "time_to_first_token_s": spread(ttft),
        "prefill_tok_s": spread(prefill),
        "decode_tok_s": spread(decode),
        "main_thread_decode_tok_s": spread(main_thread),
        "served_vs_main_thread": statistics.median(decode) / statistics.median(main_thread),
    }


def _fidelity(loaded: Any, reference: Path | None, save: Path | None) -> dict[str, float]:
    """Teacher-forced next-token distributions over the passage, against the reference precision's."""
    import torch

    ids = _prompt_ids(loaded.tokenizer, FIDELITY_TOKENS)
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([ids], device=loaded.device)).logits[0].float().cpu()
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = torch.tensor(ids[1:])
    nll = -logprobs[:-1].gather(1, targets[:, None]).mean()
    result = {"perplexity": float(torch.exp(nll))}
    if save is not None:
        torch.save(logprobs.half(), save)
    if reference is not None and reference.exists():
        ref = torch.load(reference).float()
        result["top1_agreement"] = float((ref.argmax(-1) == logprobs.argmax(-1)).float().mean())
        result["mean_kl"] = float((ref.exp() * (ref - logprobs)).sum(-1).mean())
        # The passage as decode steps (the full forward above is the prefill path, with other kernels).
        decoded, ref = _decode_logprobs(loaded, ids[:FIDELITY_DECODE_TOKENS]), ref[:FIDELITY_DECODE_TOKENS]
        result["decode_top1_agreement"] = float((ref.argmax(-1) == decoded.argmax(-1)).float().mean())
        result["decode_mean_kl"] = float((ref.exp() * (ref - decoded)).sum(-1).mean())
    return result


def _decode_logprobs(loaded: Any, ids: list[int]) -> Any:
    """Next-token log-probabilities with ``ids`` fed one token at a time, as a lone request decodes (the
    compiled decode step where the model has one)."""
    import torch

    from ..engine.kv_cache import new_cache
    from ..model.kv_attention import kv_cache_dtype

    step = getattr(loaded.model, "qwen_decode_step", None)
    cache, rows = new_cache(loaded.model.config, kv_cache_dtype(loaded.model)), []
    with torch.inference_mode():
        for position, token in enumerate(ids):
            if step is not None and position > 0:
                logits = step([token], [cache])[0]
            else:
                ids_in = torch.tensor([[token]], device=loaded.device)
                logits = loaded.model(input_ids=ids_in, cache=cache, use_cache=True).logits[0, -1]
            rows.append(logits.float().cpu())
    return torch.log_softmax(torch.stack(rows), dim=-1)


def _decoded_weight_bytes(model: Any) -> int:
    """Bytes read per decoded token: every matrix the forward pass multiplies by (lm_head included)."""
    seen, total = set(), 0
    for module in model.modules():
        if hasattr(module, "weight") and hasattr(module, "in_features"):
            scales = (getattr(module, "weight_scale_inv", None), getattr(module, "weight_scale", None))
            for tensor in (module.weight, *scales):
                if tensor is not None and tensor.data_ptr() not in seen:
                    seen.add(tensor.data_ptr())
                    total += tensor.numel() * tensor.element_size()
    return total


def _served_vs_main_thread(engine: Any, prompt_tokens: int, new_tokens: int, runs: int) -> dict[str, Any]:
    """Decode through the chat stream (``stream_reply``: engine queue, worker thread, streaming, thinking
    split, stop checks) against the same engine code on the main thread, alternating runs."""
    from ..authoring.tokenizer_build import data_text
    from ..chat.prompt import build_prompt
    from ..chat.reply import ChatDone, stream_reply

    loaded = engine.load()
    words = data_text("passage.txt").split()
    text = " ".join(words[: max(8, prompt_tokens * 3 // 4)])
    messages = [{"role": "user", "content": text}]
    ids = build_prompt(
        loaded.tokenizer, messages, enable_thinking=False, max_context=loaded.max_context, max_new_tokens=new_tokens
    ).ids
    stream, main_thread = [], []
    for _ in range(runs):
        main_thread.append(engine.run_on_this_thread(ids, greedy(new_tokens)).stats.tokens_per_second)
        for event in stream_reply(
            engine, messages, temperature=0, min_new_tokens=new_tokens, max_new_tokens=new_tokens
        ):
            if isinstance(event, ChatDone):
                stream.append(event.stats["tokens_per_second"])
    return {
        "prompt_tokens": len(ids),
        "served_tok_s": spread(stream),
        "main_thread_tok_s": spread(main_thread),
        "ratio": statistics.median(stream) / statistics.median(main_thread),
    }


def _scenarios(loaded_source: str, device: str, precision: str, spec: dict[str, Any]) -> dict[str, Any]:
    from ..chat.reply import ChatDone, Conversation, batch_reply, stream_reply
    from ..engine.engine import ChatEngine

    new_tokens = spec["scenario_tokens"]
    results: dict[str, Any] = {}
    for label, cache_tokens in (("with_cache", 32768), ("without_cache", 0)):
        engine = ChatEngine(loaded_source, device=device, precision=precision, prefix_cache_tokens=cache_tokens)
        conversation = Conversation("You are a helpful assistant.")
        ttft = {}
        for turn in range(1, max(TURNS) + 1):
            message = f"Turn {turn}: " + "please tell me more about the rabbit and the watch. " * 6
            for event in stream_reply(
                engine,
                conversation.messages_with(message),
                temperature=0,
                min_new_tokens=new_tokens,
                max_new_tokens=new_tokens,
            ):
                if isinstance(event, ChatDone):
                    conversation.add_exchange(message, event)
                    if turn in TURNS:
                        ttft[turn] = event.stats["time_to_first_token"]
        results[f"ttft_by_turn_{label}"] = ttft
        if label == "without_cache":
            results["served_vs_main_thread"] = _served_vs_main_thread(
                engine, spec["prompt_tokens"], spec["new_tokens"], spec["runs"]
            )
        if label == "with_cache":
            throughput = {}
            for size in BATCH_SIZES:
                prompts = [
                    [{"role": "user", "content": f"Question {i}: where did the rabbit go?"}] for i in range(size)
                ]
                start = time.perf_counter()
                replies = batch_reply(
                    engine, prompts, temperature=0, min_new_tokens=new_tokens, max_new_tokens=new_tokens
                )
                elapsed = time.perf_counter() - start
                throughput[size] = sum(r["completion_tokens"] for r in replies) / elapsed
            results["batch_tok_s"] = throughput
        engine.close()
    return results


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import resource

    import torch

    from ..model.loader import load_model

    started = time.perf_counter()
    loaded = load_model(spec["model"], device=spec["device"], precision=spec["precision"])
    load_seconds = time.perf_counter() - started
    prompt = _prompt_ids(loaded.tokenizer, spec["prompt_tokens"])
    result: dict[str, Any] = {
        "precision": spec["precision"],
        "mode": loaded.precision.mode,
        "label": loaded.precision.label,
        "reason": loaded.precision.reason,
        "device": loaded.precision.device_name,
        "load_s": load_seconds,
        "weights_bytes": loaded.weights_bytes,
        "decoded_weight_bytes": _decoded_weight_bytes(loaded.model),
        "matmul_details": {k: v for k, v in loaded.precision.details.items() if k.startswith(("int8_", "decode_step"))},
        "prompt_tokens": len(prompt),
        "new_tokens": spec["new_tokens"],
    }
    engine = bench_engine(loaded)
    result.update(_measure_generation(engine, prompt, spec["new_tokens"], spec["runs"]))
    engine.close()
    reference = Path(spec["reference"]) if spec.get("reference") else None
    save = Path(spec["save_logprobs"]) if spec.get("save_logprobs") else None
    result["fidelity"] = _fidelity(loaded, reference, save)
    # Peak memory of serving this precision, before the scenarios load the model again in engines.
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if loaded.device.type == "cuda":  # the model's own GPU, not whichever is current
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(loaded.device)
    if spec.get("scenarios"):
        del loaded
        result["scenarios"] = _scenarios(spec["model"], spec["device"], spec["precision"], spec)
    return result


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The baseline: plain transformers modules in one dtype, prefill by forward and decode by ``generate``."""
    import torch

    from ..model.loader import load_model

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["baseline"]]
    loaded = load_model(spec["model"], device=spec["device"], precision="fp32")  # unmodified transformers layers
    model = loaded.model.to(dtype)
    prompt = _prompt_ids(loaded.tokenizer, spec["prompt_tokens"])
    ids = torch.tensor([prompt], device=loaded.device)
    result: dict[str, Any] = {"baseline": spec["baseline"], "prompt_tokens": len(prompt)}
    with torch.inference_mode():
        for count in sorted({64, len(prompt)}):
            model(input_ids=ids[:, :count], logits_to_keep=1)  # warm-up
            times = []
            for _ in range(spec["runs"]):
                _synchronize(loaded.device)
                start = time.perf_counter()
                model(input_ids=ids[:, :count], logits_to_keep=1)
                _synchronize(loaded.device)  # GPU work is asynchronous: time it finished, not it was queued
                times.append(time.perf_counter() - start)
            result[f"prefill_{count}_tok_s"] = spread([count / t for t in times])
        short = ids[:, :64]
        settings = {"do_sample": False, "pad_token_id": loaded.tokenizer.pad_token_id}
        model.generate(short, max_new_tokens=4, **settings)  # warm-up
        speeds = []
        for _ in range(spec["runs"]):
            start = time.perf_counter()
            model.generate(short, max_new_tokens=1, **settings)
            first = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(short, max_new_tokens=spec["new_tokens"], min_new_tokens=spec["new_tokens"], **settings)
            speeds.append((spec["new_tokens"] - 1) / (time.perf_counter() - start - first))
        result["decode_tok_s"] = spread(speeds)
    return result


def serving_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Concurrency, mixed and flood scenarios (``bench_serving``) on the default precision."""
    from ..model.loader import load_model
    from .bench_serving import serving

    loaded = load_model(spec["model"], device=spec["device"], precision=spec.get("precision"))
    result = {"label": loaded.precision.label, "device": loaded.precision.device_name}
    result.update(serving(loaded, spec["serving"], spec["serving_tokens"]))
    return result


def peer_worker(spec: dict[str, Any]) -> None:
    """``bench --peer``: load once, then one round (prefill and decode) per ``round`` line on stdin.

    Prints one JSON line when loaded (mode, label), one per round ({"prefill", "decode",
    "decode_main_thread"} tokens/s) and one on ``quit`` (peak memory). Decode is measured as
    llama-bench's tg: from an almost empty context; served by the engine's worker thread, then the same
    request on the main thread. With a ``depth``, each round adds "decode_at_depth": served after that
    many tokens of prompt, which are read once, before the first round, and kept in a conversation
    cache of their own (each round prefills the prompt's last token, as ``llama-bench -d`` times only
    the generation after its context).
    """
    import resource

    import torch

    from ..engine.generation import PrefixCache
    from ..model.loader import load_model

    torch.set_num_threads(spec["threads"])
    loaded = load_model(spec["model"], device="cpu", precision=spec["precision"])
    engine = bench_engine(loaded)
    prompt = _prompt_ids(loaded.tokenizer, spec["prompt_tokens"])
    new = spec["new_tokens"]
    # One token of prompt, then new + 1 tokens: the first comes from the prompt step, the next `new` are decoded.
    one_token, decode = greedy(1), greedy(new + 1)
    served(engine, prompt[:32], greedy(4))  # warm-up, on both threads
    engine.run_on_this_thread(prompt[:32], greedy(4))
    depth = spec.get("depth", 0)
    no_cache, deep_cache = engine.prefix_cache, PrefixCache(depth + new + 64)
    deep_prompt = _prompt_ids(loaded.tokenizer, depth + 1)[::-1]  # shares no prefix with ``prompt``
    if depth:
        engine.prefix_cache = deep_cache
        served(engine, deep_prompt, greedy(2))  # reads the context once
        engine.prefix_cache = no_cache
    decision = loaded.precision
    _say(
        {
            "mode": decision.mode,
            "label": decision.label,
            "reason": decision.reason,
            "weights_bytes": loaded.weights_bytes,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # what ATEN_CPU_CAPABILITY left in use
            "kv_cache_dtype": decision.kv_cache_dtype,
        }
    )
    for command in sys.stdin:
        if command.strip() != "round":
            break
        prefill = served(engine, prompt, one_token).stats
        stats = served(engine, prompt[:1], decode).stats
        main_thread = engine.run_on_this_thread(prompt[:1], decode).stats
        figures = {
            "prefill": len(prompt) / prefill.prefill_seconds,
            "decode": stats.tokens_per_second,
            "decode_main_thread": main_thread.tokens_per_second,
        }
        if depth:
            engine.prefix_cache = deep_cache
            figures["decode_at_depth"] = served(engine, deep_prompt, decode).stats.tokens_per_second
            engine.prefix_cache = no_cache
        _say(figures)
    engine.close()
    _say({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    if job.get("peer"):
        peer_worker(job)
    elif "serving" in job:
        print(json.dumps(serving_worker(job)))
    else:
        print(json.dumps(plain_worker(job) if "baseline" in job else worker(job)))
