"""The benchmark and batch commands on the tiny model: they finish and every field is present and sane
(their timings are not asserted: machines are shared and noisy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatbot import Qwen3ChatBot
from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_report(random_fp8, tmp_path_factory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatbot",
            "bench",
            "--model",
            str(random_fp8),
            "--prompt-tokens",
            "48",
            "--new-tokens",
            "8",
            "--scenario-tokens",
            "4",
            "--runs",
            "2",
            "--serving-tokens",
            "4",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "bench.json").read_text()), done.stdout, out


def test_bench_measures_every_precision_the_device_can_run(bench_report) -> None:
    report, _, _ = bench_report
    assert report["skipped"] == {"fp8": "no CUDA GPU (cpu) to run FP8 matmuls"}
    assert [r["precision"] for r in report["results"]] == ["fp32", "bf16", "fp16", "int8"]  # reference first
    assert report["memory_bandwidth_bytes_s"] > 1e8
    for result in report["results"]:
        assert "error" not in result, result
        assert result["load_s"] > 0 and result["weights_bytes"] > 0 and result["peak_rss_bytes"] > 0
        for figure in ("time_to_first_token_s", "prefill_tok_s", "decode_tok_s", "main_thread_decode_tok_s"):
            spread = result[figure]
            assert 0 < spread["min"] <= spread["median"] <= spread["max"]
        assert result["fidelity"]["perplexity"] > 1
        assert result["served_vs_main_thread"] > 0  # served by the engine's worker thread / the main thread
    fp32, bf16, fp16, int8 = report["results"]
    assert "top1_agreement" not in fp32["fidelity"]  # it is the reference
    for result in (bf16, fp16, int8):
        assert 0.9 <= result["fidelity"]["top1_agreement"] <= 1.0 and result["fidelity"]["mean_kl"] >= 0
    assert int8["mode"] == "int8" and int8["weights_bytes"] < 0.65 * fp16["weights_bytes"]
    assert fp16["default"] and not fp32["default"]


def test_bench_runs_the_chat_scenarios_on_the_default_precision(bench_report) -> None:
    report, _, _ = bench_report
    scenarios = next(r for r in report["results"] if r["default"])["scenarios"]
    for label in ("with_cache", "without_cache"):
        assert set(scenarios[f"ttft_by_turn_{label}"]) == {"1", "2", "4", "8"}
    assert set(scenarios["batch_tok_s"]) == {"1", "4", "8"}
    assert all(v > 0 for v in scenarios["batch_tok_s"].values())
    versus = scenarios["served_vs_main_thread"]
    assert versus["ratio"] > 0 and versus["served_tok_s"]["median"] > 0 and versus["main_thread_tok_s"]["median"] > 0


def test_bench_measures_plain_transformers_beside_ours(bench_report) -> None:
    report, stdout, _ = bench_report
    (baseline,) = report["baselines"]
    assert baseline["baseline"] == "bf16" and "error" not in baseline
    assert baseline["prefill_64_tok_s"]["median"] > 0 and baseline["decode_tok_s"]["median"] > 0
    assert "Plain transformers on the same weights" in stdout
    assert "fp16 decode >= plain transformers bf16 decode" in stdout


def test_bench_prints_table_targets_and_references_and_draws_a_chart(bench_report) -> None:
    _, stdout, out = bench_report
    assert "| precision | mode used |" in stdout
    assert "| fp8 | skipped: no CUDA GPU" in stdout
    assert "TTFT turn 8 <= 1.5x turn 1" in stdout and "served decode >= 0.97x main-thread decode" in stdout
    assert "| served / main |" in stdout
    assert "llama.cpp Q8_0" in stdout
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_reports_concurrent_streams_beside_one_at_a_time(bench_report) -> None:
    report, stdout, _ = bench_report
    serving = report["serving"]
    assert "error" not in serving, serving
    assert [row["streams"] for row in serving["concurrency"]] == [1, 4, 8]
    for row in serving["concurrency"]:
        batched, serial = row["batched"], row["one_at_a_time"]
        assert batched["max_batch"] == row["streams"] and serial["max_batch"] == 1
        for figures in (batched, serial):
            assert figures["aggregate_tok_s"] > 0 and 0 < figures["ttft_p50_s"] <= figures["ttft_p95_s"]
    assert serving["mixed"]["batched"]["short_requests"] >= 1 and serving["mixed"]["one_at_a_time"]["max_batch"] == 1
    assert serving["flood"]["other_client_ttft_s"] > 0
    assert "transformers_continuous_batching" in serving  # figures, or why it does not run here
    assert "| streams | aggregate tok/s batched |" in stdout and "Mixed: a short request" in stdout


def test_generate_batch_answers_each_prompt(scripted_fp8) -> None:
    bot = Qwen3ChatBot(str(scripted_fp8), device="cpu")
    replies = bot.generate_batch(
        ["Hi", "Think first /think", [{"role": "user", "content": "Hello"}]], max_new_tokens=64
    )
    assert [r["thinking"] for r in replies] == ["", SCRIPTED_THINKING, ""]
    assert all(r["answer"] == SCRIPTED_ANSWER and r["finish_reason"] == "stop" for r in replies)
    assert all(r["completion_tokens"] > 0 and r["prompt_tokens"] > 0 for r in replies)
    assert bot.get_history() == []  # batch generation leaves the conversation alone
    bot.close()


def test_batch_generation_matches_one_by_one(random_fp8, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEN_BATCH_INVARIANT", "1")  # rows decoded together run as alone (read at load)
    bot = Qwen3ChatBot(str(random_fp8), device="cpu", precision="fp32")
    prompts = ["short", "a somewhat longer prompt, so the batch needs left padding"]
    together = bot.generate_batch(prompts, temperature=0, max_new_tokens=12)
    alone = [bot.generate_batch([p], temperature=0, max_new_tokens=12)[0] for p in prompts]
    assert [r["full_response"] for r in together] == [r["full_response"] for r in alone]
    bot.close()


def test_batch_command_reports_bad_lines_and_processes_the_rest(scripted_fp8, tmp_path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps({"id": "greeting", "prompt": "Hello"}),
                json.dumps({"messages": [{"role": "user", "content": "Why?"}], "enable_thinking": True}),
                "this is not json",
                json.dumps({"prompt": "too hot", "temperature": 9}),
                json.dumps({"prompt": "short", "max_tokens": 2}),
                json.dumps({"messages": [{"role": "robot", "content": "beep"}]}),
            ]
        )
        + "\n"
    )
    target = tmp_path / "out.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatbot",
            "batch",
            str(source),
            str(target),
            "--model",
            str(scripted_fp8),
            "--batch-size",
            "4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "3 answered, 3 failed" in done.stdout
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["id"] == "greeting" and records[0]["answer"] == SCRIPTED_ANSWER
    assert records[1]["thinking"] == SCRIPTED_THINKING
    assert "not valid JSON" in records[2]["error"]
    assert "temperature" in records[3]["error"]
    assert records[4]["finish_reason"] == "length" and records[4]["completion_tokens"] == 2
    assert "messages[0].role" in records[5]["error"]


def test_bench_measures_the_decode_path_s_fidelity_and_the_int8_kernel_s_error(bench_report) -> None:
    report, stdout, _ = bench_report
    results = {r["precision"]: r for r in report["results"]}
    for precision in ("bf16", "fp16", "int8"):
        fidelity = results[precision]["fidelity"]
        assert 0.9 <= fidelity["decode_top1_agreement"] <= 1.0 and fidelity["decode_mean_kl"] >= 0
    details = results["int8"]["matmul_details"]
    assert details["int8_kernel"] and float(details["int8_kernel_error"]) >= 0 and float(details["int8_rms_error"]) > 0
    assert "Decode path: the passage fed one token at a time" in stdout and "| int8 kernel | kernel error |" in stdout
