"""``bench --peer llama.cpp``: interleaved rounds, the report's medians and ratios, and a real run.

The real run uses llama.cpp's own binaries (built once, see ``tests/peers/conftest.py``) on a tiny
checkpoint with Qwen3's real tokenizer; it checks that every contestant was measured in every round
and in turn, never how fast anything was.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from chatbot.cli import bench_peer
from chatbot.cli.bench_peer import Contestant, interleave, markdown_lines, parse_llama_bench, ratios


def test_rounds_take_every_contestant_once_in_turn() -> None:
    calls: list[str] = []

    def contestant(name: str, kind: str) -> Contestant:
        def measure() -> dict[str, float]:
            calls.append(name)
            figures = {"prefill": 100.0 + len(calls), "decode": 10.0 + len(calls)}
            return {**figures, "decode_main_thread": 9.0} if kind == "ours" else figures

        return Contestant(name, kind, measure)

    names = ["ours a", "peer b", "ours c", "peer d"]
    report = interleave([contestant(n, n.split()[0]) for n in names], rounds=3, log=lambda _: None)
    assert calls == names * 3
    first, peer = report["contestants"][0], report["contestants"][1]
    assert first["prefill"] == [101.0, 105.0, 109.0] and first["decode"] == [11.0, 15.0, 19.0]
    assert first["decode_main_thread"] == [9.0] * 3 and "decode_main_thread" not in peer


LLAMA_BENCH_JSON = json.dumps(
    [
        {"n_prompt": 512, "n_gen": 0, "avg_ts": 75.5, "model_type": "qwen3 0.6B F16"},
        {"n_prompt": 0, "n_gen": 64, "avg_ts": 13.25, "model_type": "qwen3 0.6B F16"},
    ]
)


def test_llama_bench_json_gives_prefill_and_decode() -> None:
    assert parse_llama_bench(LLAMA_BENCH_JSON) == {"prefill": 75.5, "decode": 13.25}
    with pytest.raises(RuntimeError, match="no pp and tg figures"):
        parse_llama_bench("[]")


def fabricated_report() -> dict:
    def entry(name, kind, prefill, decode, **info):
        return {"name": name, "kind": kind, "prefill": prefill, "decode": decode, **info}

    return {
        "peer": "llama.cpp",
        "machine": "Test CPU",
        "isa": "AVX2",
        "threads": 2,
        "rounds": 3,
        "prompt_tokens": 512,
        "new_tokens": 64,
        "contestants": [
            entry(
                "ours, default (FP16 fallback)",
                "ours",
                [70, 72, 40],
                [5, 6, 3],
                decode_main_thread=[5, 6, 4],
                mode="fp16",
                label="FP16 fallback",
                peak_rss_bytes=3000 * 2**20,
            ),
            entry("llama.cpp F16", "peer", [75, 70, 72], [12, 13, 10]),
            entry(
                "ours, INT8", "ours", [60, 61, 30], [9, 10, 4], mode="int8", label="INT8", peak_rss_bytes=1200 * 2**20
            ),
            entry("llama.cpp Q8_0", "peer", [70, 71, 65], [18, 20, 19]),
        ],
    }


def test_report_gives_each_round_the_medians_and_the_ratios_of_medians() -> None:
    report = fabricated_report()
    rows = {(name, figure): (ratio, target) for name, figure, ratio, target in ratios(report)}
    assert rows[("ours FP16 fallback / llama.cpp F16", "decode")] == (5 / 12, 1.0)
    assert rows[("ours FP16 fallback / llama.cpp F16", "prefill")] == (70 / 72, 1.0)
    assert rows[("ours INT8 / llama.cpp Q8_0", "decode")] == (9 / 19, 0.9)
    assert rows[("ours INT8 / ours FP16 fallback", "peak memory")] == (pytest.approx(0.4), 0.65)
    text = "\n".join(markdown_lines(report))
    assert "Test CPU (AVX2), 2 threads, 3 interleaved rounds" in text
    assert rows[("ours FP16 fallback served / main thread", "decode")] == (5 / 5, 0.97)
    assert "| llama.cpp Q8_0 | 70.0, 71.0, 65.0 | 70.0 | 18.0, 20.0, 19.0 | 19.0 | - | - |" in text
    assert "| ours, default (FP16 fallback) | 70.0, 72.0, 40.0 | 70.0 | 5.0, 6.0, 3.0 | 5.0 | 5.0 | 3000 |" in text
    assert "| ours INT8 / llama.cpp Q8_0 | decode | 0.47x | >= 0.90x (MISSED) |" in text
    assert "| ours INT8 / ours FP16 fallback | peak memory | 0.40x | <= 0.65x (met) |" in text


def test_a_depth_adds_decode_after_that_context_beside_pytorchs_attention_and_llama_cpp() -> None:
    deep = json.dumps([{"n_prompt": 0, "n_gen": 64, "n_depth": 2048, "avg_ts": 9.5}])
    assert parse_llama_bench(deep, depth=2048) == {"decode_at_depth": 9.5}
    with pytest.raises(RuntimeError, match="at depth 2048"):
        parse_llama_bench(LLAMA_BENCH_JSON, depth=2048)
    report = fabricated_report()
    report["depth"] = 2048
    at_depth = ([4, 5, 2], [10, 11, 8], [8, 9, 3], [15, 16, 15])
    for contestant, figures in zip(report["contestants"], at_depth, strict=True):
        contestant["decode_at_depth"] = figures
    sdpa = {**report["contestants"][0], "name": "ours, FP16 fallback, PyTorch's attention"}
    report["contestants"].append({**sdpa, "decode_at_depth": [2, 3, 1]})
    rows = {(name, figure): (ratio, target) for name, figure, ratio, target in ratios(report)}
    assert rows[("ours FP16 fallback / llama.cpp F16", "decode at depth 2048")] == (4 / 10, 1.0)
    assert rows[("ours INT8 / llama.cpp Q8_0", "decode at depth 2048")] == (8 / 15, 1.0)
    assert rows[("ours FP16 fallback: our / PyTorch's decode attention", "decode at depth 2048")] == (2.0, None)
    assert rows[("llama.cpp F16: at depth / at the start", "decode")] == (10 / 12, None)
    text = "\n".join(markdown_lines(report))
    assert "| decode at depth 2048, each round | median | peak RSS MiB |" in text
    row = "| llama.cpp F16 | 75.0, 70.0, 72.0 | 72.0 | 12.0, 13.0, 10.0 | 12.0 | - | 10.0, 11.0, 8.0 | 10.0 | - |"
    assert row in text


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the first use builds llama.cpp when ./start.sh test has not: a bound, not a goal
def test_a_real_run_interleaves_llama_bench_with_our_two_modes(llamacpp, scripted_qwen3: Path, tmp_path) -> None:
    lines: list[str] = []
    report = bench_peer.run_peer(str(scripted_qwen3), "llama.cpp", 2, 1, lines.append, gguf_dir=tmp_path)
    names = [c["name"] for c in report["contestants"]]
    assert names[1:4:2] == ["llama.cpp F16", "llama.cpp Q8_0"]
    assert report["contestants"][0]["mode"] == "fp16" and report["contestants"][2]["mode"] == "int8"
    for contestant in report["contestants"]:
        assert len(contestant["prefill"]) == len(contestant["decode"]) == 2
        if contestant["kind"] == "ours":  # served by the engine's worker thread, and on the main thread
            assert len(contestant["decode_main_thread"]) == 2
        assert min(contestant["prefill"] + contestant["decode"]) > 0
    measured = [line.split(": ")[1] for line in lines if line.startswith("round ")]
    assert measured == names * 2  # in turn, round after round
    assert all(c.get("peak_rss_bytes", 1) > 0 for c in report["contestants"] if c["kind"] == "ours")
    text = "\n".join(markdown_lines(report))
    assert "llama.cpp F16" in text and "ratio of medians" in text
    assert statistics.median(report["contestants"][1]["decode"]) > 0


def test_avx2_builds_live_beside_the_native_one_and_unknown_sets_are_refused(monkeypatch, tmp_path) -> None:
    from chatbot.cli import llamacpp

    monkeypatch.setenv("QWEN_LLAMACPP_CACHE", str(tmp_path / "llama"))
    assert llamacpp.cache_root() == tmp_path / "llama"
    assert llamacpp.cache_root("avx2") == tmp_path / "llama-avx2"
    assert "-DGGML_AVX512=OFF" in llamacpp.ISAS["avx2"] and "-DGGML_NATIVE=OFF" in llamacpp.ISAS["avx2"]
    with pytest.raises(llamacpp.LlamaCppError, match="use one of native, avx2"):
        llamacpp.cache_root("avx512")


@pytest.mark.timeout(300)
def test_our_avx2_worker_runs_pytorch_with_avx2_kernels(scripted_qwen3: Path) -> None:
    """``--peer-isa avx2``: our side runs the code an AVX2-only CPU runs, whatever this CPU has."""
    worker = bench_peer.OurWorker(str(scripted_qwen3), "fp16", 1, isa="avx2")
    try:
        assert worker.info["cpu_capability"] == "AVX2"
        figures = worker.measure()
        assert figures["prefill"] > 0 and figures["decode"] > 0 and figures["decode_main_thread"] > 0
        assert worker.close()["peak_rss_bytes"] > 0
    finally:
        worker.kill()
