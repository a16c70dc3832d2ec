"""The OpenAI-compatible API on the scripted model, through the official ``openai`` client, httpx and curl.

The app is started the way users start it, on free local ports; the scripted model's real forward
pass writes SCRIPTED_THINKING then SCRIPTED_ANSWER, so replies, the thinking split and the token
counts are asserted exactly. Run: ``.venv/bin/python -m pytest tests/app/test_api.py -q``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from helpers.clients import openai_client
from helpers.openai_spec import assert_valid
from transformers import AutoTokenizer

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING
from chatbot.engine.engine import ChatEngine
from chatbot.engine.sampling import SamplingOptions
from chatbot.serve.api import build_api
from chatbot.serve.app_state import App
from chatbot.serve.server import start_api
from chatbot.settings import Settings

HELLO = [{"role": "user", "content": "Hello"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
THINKING_ON = {"chat_template_kwargs": {"enable_thinking": True}}
THINKING_OFF = {"chat_template_kwargs": {"enable_thinking": False}}
# What the scripted model generates with thinking on; <|im_end|> follows it.
SCRIPTED_REPLY = f"<think>{SCRIPTED_THINKING}</think>\n\n{SCRIPTED_ANSWER}"


@pytest.fixture(scope="module")
def tokenizer(scripted_fp8: Path):
    return AutoTokenizer.from_pretrained(str(scripted_fp8))


def prompt_token_count(tokenizer, messages: list[dict[str, str]], thinking: bool) -> int:
    ids = tokenizer.apply_chat_template(
        messages,
        tokenize=True,
        add_generation_prompt=True,
        sanitize_control_tokens=True,
        enable_thinking=thinking,
        return_dict=False,
    )
    return len(ids)


def generated_token_count(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False)) + 1  # + the end-of-turn token


# --- the openai client -------------------------------------------------------------------------------------


def test_reply_with_thinking_keeps_reasoning_apart_from_the_answer(client, tokenizer) -> None:
    reply = client.chat.completions.create(model="qwen3", messages=HELLO, extra_body=THINKING_ON)
    message = reply.choices[0].message
    assert message.role == "assistant"
    assert message.reasoning_content == SCRIPTED_THINKING
    assert message.model_extra["reasoning_content"] == SCRIPTED_THINKING
    assert message.content == SCRIPTED_ANSWER
    assert reply.choices[0].finish_reason == "stop"
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.usage.prompt_tokens == prompt_token_count(tokenizer, HELLO, thinking=True)
    assert reply.usage.completion_tokens == generated_token_count(tokenizer, SCRIPTED_REPLY)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_thinking_is_on_by_default_as_in_the_web_chat_and_vllm(client, tokenizer) -> None:
    reply = client.chat.completions.create(model="qwen3", messages=HELLO)
    message = reply.choices[0].message
    assert message.reasoning_content == SCRIPTED_THINKING and message.content == SCRIPTED_ANSWER
    assert reply.usage.prompt_tokens == prompt_token_count(tokenizer, HELLO, thinking=True)
    assert reply.usage.completion_tokens == generated_token_count(tokenizer, SCRIPTED_REPLY)


def test_thinking_off_gives_no_reasoning(client, tokenizer) -> None:
    reply = client.chat.completions.create(model="qwen3", messages=HELLO, extra_body=THINKING_OFF)
    message = reply.choices[0].message
    assert getattr(message, "reasoning_content", None) is None
    assert message.content == SCRIPTED_ANSWER
    assert reply.usage.prompt_tokens == prompt_token_count(tokenizer, HELLO, thinking=False)
    assert reply.usage.completion_tokens == generated_token_count(tokenizer, SCRIPTED_ANSWER)


def test_top_level_enable_thinking_wins_over_chat_template_kwargs(client) -> None:
    on = client.chat.completions.create(
        model="qwen3", messages=HELLO, extra_body={"enable_thinking": True, "chat_template_kwargs": {}}
    )
    off = client.chat.completions.create(
        model="qwen3", messages=HELLO, extra_body={"enable_thinking": False, **THINKING_ON}
    )
    assert on.choices[0].message.reasoning_content == SCRIPTED_THINKING
    assert off.choices[0].message.reasoning_content is None


def test_streaming_sends_openai_chunks_with_reasoning_then_answer(client, tokenizer) -> None:
    stream = client.chat.completions.create(
        model="qwen3",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=THINKING_ON,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {chunk.id for chunk in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk.created for chunk in chunks} == {chunks[0].created}
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    reasoning = "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas)
    answer = "".join(delta.content or "" for delta in deltas)
    assert reasoning == SCRIPTED_THINKING
    assert answer == SCRIPTED_ANSWER
    # the thinking comes first, the answer after it; no chunk carries both
    kinds = [("r" if getattr(d, "reasoning_content", None) else "") + ("a" if d.content else "") for d in deltas]
    kinds = [kind for kind in kinds if kind]
    assert kinds == sorted(kinds, reverse=True) and "ra" not in kinds and kinds[0] == "r"
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.prompt_tokens == prompt_token_count(tokenizer, HELLO, thinking=True)
    assert usage_chunk.usage.completion_tokens == generated_token_count(tokenizer, SCRIPTED_REPLY)


def test_streaming_without_thinking_has_no_reasoning_deltas(client) -> None:
    chunks = list(client.chat.completions.create(model="qwen3", messages=HELLO, stream=True, extra_body=THINKING_OFF))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert not any(getattr(delta, "reasoning_content", None) for delta in deltas)
    assert "".join(delta.content or "" for delta in deltas) == SCRIPTED_ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)  # no include_usage, no usage


def test_stop_strings_end_the_reply_before_them(client) -> None:
    # thinking off: the stop strings occur in the thinking too
    reply = client.chat.completions.create(model="qwen3", messages=HELLO, stop="demo", extra_body=THINKING_OFF)
    assert reply.choices[0].message.content == SCRIPTED_ANSWER.split("demo")[0]
    assert reply.choices[0].finish_reason == "stop"
    assert getattr(reply.choices[0], "stop_reason", None) == "demo"  # vLLM's field: which string it was
    chunks = list(
        client.chat.completions.create(
            model="qwen3", messages=HELLO, stop=["weights", "xyz"], stream=True, extra_body=THINKING_OFF
        )
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert (
        streamed == SCRIPTED_ANSWER.split("weights")[0].rstrip()
    )  # trailing space of an unfinished answer is held back
    finish = next(chunk.choices[0] for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason)
    assert getattr(finish, "stop_reason", None) == "weights"
    unused = client.chat.completions.create(model="qwen3", messages=HELLO, stop="xyz", extra_body=THINKING_OFF)
    assert getattr(unused.choices[0], "stop_reason", None) is None


def test_max_tokens_cuts_the_reply_with_finish_reason_length(client) -> None:
    reply = client.chat.completions.create(model="qwen3", messages=HELLO, max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3
    assert SCRIPTED_ANSWER.startswith(reply.choices[0].message.content)
    newer = client.chat.completions.create(model="qwen3", messages=HELLO, max_completion_tokens=2, max_tokens=50)
    assert newer.usage.completion_tokens == 2


def test_history_is_stateless_and_earlier_thinking_is_not_resent(client, tokenizer) -> None:
    history = [
        {"role": "system", "content": "You are a test."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": f"<think>{SCRIPTED_THINKING}</think>\n\n{SCRIPTED_ANSWER}"},
        {"role": "user", "content": "Again"},
    ]
    reply = client.chat.completions.create(model="qwen3", messages=history, extra_body=THINKING_OFF)
    answer_only = [*history[:2], {"role": "assistant", "content": SCRIPTED_ANSWER}, history[3]]
    assert reply.usage.prompt_tokens == prompt_token_count(tokenizer, answer_only, thinking=False)
    assert reply.choices[0].message.content == SCRIPTED_ANSWER


def test_common_client_fields_and_vllm_sampling_names_are_accepted(client) -> None:
    reply = client.chat.completions.create(
        model="anything",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}],
        temperature=0.5,
        top_p=0.9,
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        n=1,
        user="someone",
        logit_bias=None,
        response_format={"type": "text"},
        extra_body={"top_k": -1, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 1, "unknown_field": 3},
    )
    assert reply.choices[0].message.content == SCRIPTED_ANSWER


@pytest.mark.parametrize(
    "extreme",
    [{"top_p": 5e-324}, {"top_p": 1.0, "top_k": 1}, {"temperature": 2.0}, {"temperature": 0}, {"min_p": 1.0}],
    ids=str,
)
def test_extreme_but_valid_sampling_values_still_answer(client, extreme) -> None:
    reply = client.chat.completions.create(model="qwen3", messages=HELLO, extra_body=extreme)
    assert reply.choices[0].message.content == SCRIPTED_ANSWER


def test_models_lists_the_served_name_never_a_path(client, api, scripted_fp8) -> None:
    models = client.models.list()
    assert [model.id for model in models.data] == [scripted_fp8.name]  # the folder's name, not its path
    assert models.data[0].object == "model"
    assert client.models.retrieve(scripted_fp8.name).id == scripted_fp8.name
    reply = client.chat.completions.create(model="qwen3", messages=HELLO)
    assert reply.model == scripted_fp8.name
    assert str(scripted_fp8) not in httpx.get(api.api_url + "/health").text


def test_openai_client_raises_its_own_errors(client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="qwen3", messages=HELLO, n=9)
    assert caught.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


# --- bad input -----------------------------------------------------------------------------------------------

LONG_MESSAGE = "word " * 9000  # more tokens than the tiny model's 8192-token window
BAD_REQUESTS = [
    ("missing messages", {}, "messages", None),
    ("empty messages", {"messages": []}, "messages", None),
    ("messages not a list", {"messages": "Hello"}, "messages", None),
    ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", None),
    ("tool message without content", {"messages": [{"role": "tool"}]}, "messages[0]", None),
    ("content not text", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content", None),
    (
        "image part",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "messages[0].content",
        None,
    ),
    ("missing content", {"messages": [{"role": "user"}]}, "messages[0]", None),
    ("empty user message", {"messages": [{"role": "user", "content": "  "}]}, "messages", None),
    ("temperature too high", {"messages": HELLO, "temperature": 2.5}, "temperature", None),
    ("temperature not a number", {"messages": HELLO, "temperature": "hot"}, "temperature", None),
    ("top_p negative", {"messages": HELLO, "top_p": -0.1}, "top_p", None),
    ("top_k negative", {"messages": HELLO, "top_k": -5}, "top_k", None),
    ("min_p above one", {"messages": HELLO, "min_p": 1.5}, "min_p", None),
    ("max_tokens zero", {"messages": HELLO, "max_tokens": 0}, "max_tokens", None),
    ("presence_penalty too low", {"messages": HELLO, "presence_penalty": -3}, "presence_penalty", None),
    ("frequency_penalty too high", {"messages": HELLO, "frequency_penalty": 2.5}, "frequency_penalty", None),
    ("repetition_penalty zero", {"messages": HELLO, "repetition_penalty": 0}, "repetition_penalty", None),
    ("seed beyond 64 bits", {"messages": HELLO, "seed": 2**64}, "seed", None),
    ("top_logprobs without logprobs", {"messages": HELLO, "top_logprobs": 2}, "top_logprobs", None),
    ("top_logprobs above 20", {"messages": HELLO, "logprobs": True, "top_logprobs": 21}, "top_logprobs", None),
    ("logit_bias key not a token", {"messages": HELLO, "logit_bias": {"hello": 5}}, "logit_bias", None),
    ("logit_bias beyond 100", {"messages": HELLO, "logit_bias": {"5": 150}}, "logit_bias", None),
    (
        "response_format unknown type",
        {"messages": HELLO, "response_format": {"type": "xml"}},
        "response_format.type",
        None,
    ),
    (
        "json_schema without a schema",
        {"messages": HELLO, "response_format": {"type": "json_schema"}},
        "response_format",
        None,
    ),
    (
        "tool_choice names no tool",
        {"messages": HELLO, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
        None,
    ),
    ("tool_choice required without tools", {"messages": HELLO, "tool_choice": "required"}, "tool_choice", None),
    ("stop not strings", {"messages": HELLO, "stop": [1, 2]}, "stop", None),
    ("too many stop strings", {"messages": HELLO, "stop": [str(i) for i in range(17)]}, "stop", None),
    ("n above the bound", {"messages": HELLO, "n": 9}, "n", None),
    ("n zero", {"messages": HELLO, "n": 0}, "n", None),
    ("stream not a boolean", {"messages": HELLO, "stream": "sometimes"}, "stream", None),
    (
        "enable_thinking not a boolean",
        {"messages": HELLO, "chat_template_kwargs": {"enable_thinking": "maybe"}},
        "chat_template_kwargs.enable_thinking",
        None,
    ),
    (
        "longer than the context window",
        {"messages": [{"role": "user", "content": LONG_MESSAGE}]},
        "messages",
        "context_length_exceeded",
    ),
    ("reply room beyond the window", {"messages": HELLO, "max_tokens": 8190}, "messages", "context_length_exceeded"),
]


def assert_openai_error(response: httpx.Response, status: int, param: str | None, code: str | None) -> dict:
    assert response.status_code == status, response.text
    assert_valid("ErrorResponse", response.json())  # OpenAI's published schema
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and isinstance(error["message"], str)
    assert error["param"] == param and error["code"] == code
    return error


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("case", "body", "param", "code"), BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_400_with_an_openai_error_body(api, case, body, param, code, stream) -> None:
    del case
    response = httpx.post(api.api_url + "/v1/chat/completions", json={"stream": stream, **body}, timeout=30)
    error = assert_openai_error(response, 400, param, code)
    assert error["type"] == "invalid_request_error"


def test_malformed_bodies_get_actionable_400s(api) -> None:
    url = api.api_url + "/v1/chat/completions"
    not_json = httpx.post(url, content=b"{messages", headers={"Content-Type": "application/json"})
    assert "not valid JSON" in assert_openai_error(not_json, 400, None, None)["message"]
    no_content_type = httpx.post(url, content=json.dumps({"messages": HELLO}).encode())
    assert "Content-Type: application/json" in assert_openai_error(no_content_type, 400, None, None)["message"]
    array = httpx.post(url, json=[1, 2])
    assert_openai_error(array, 400, None, None)


def test_unknown_paths_and_methods_get_openai_error_bodies(api) -> None:
    assert_openai_error(httpx.get(api.api_url + "/v1/nothing"), 404, None, None)
    assert_openai_error(httpx.get(api.api_url + "/v1/chat/completions"), 405, None, None)


def test_the_server_keeps_serving_after_bad_requests(client) -> None:
    reply = client.chat.completions.create(model="qwen3", messages=HELLO)
    assert reply.choices[0].message.content == SCRIPTED_ANSWER


# --- plain HTTP: httpx and curl, as the README shows ---------------------------------------------------------


def sse_payloads(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def test_plain_httpx_streaming_is_server_sent_events(api) -> None:
    body = {"model": "qwen3", "messages": HELLO, "stream": True}
    with httpx.stream("POST", api.api_url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    payloads = sse_payloads(text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks) == SCRIPTED_ANSWER
    assert "\r" not in text  # lines end like OpenAI's: "data: {...}\n\n"


CURL = shutil.which("curl")


def curl(*args: str) -> str:
    assert CURL is not None
    result = subprocess.run([CURL, "-sS", *args], capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_the_readme_curl_commands_work(api) -> None:
    base = api.api_url
    health = json.loads(curl(f"{base}/health"))
    assert health["status"] == "ready"
    models = json.loads(curl(f"{base}/v1/models"))
    assert models["object"] == "list"
    plain = json.loads(
        curl(
            f"{base}/v1/chat/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"model": "qwen3", "messages": [{"role": "user", "content": "Hello"}]}',
        )
    )
    assert plain["choices"][0]["message"]["content"] == SCRIPTED_ANSWER
    streamed = curl(
        "-N",
        f"{base}/v1/chat/completions",
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"model": "qwen3", "stream": true, "chat_template_kwargs": {"enable_thinking": true}, '
        '"messages": [{"role": "user", "content": "Hello"}]}',
    )
    payloads = sse_payloads(streamed)
    assert payloads[-1] == "[DONE]"
    deltas = [json.loads(payload)["choices"][0]["delta"] for payload in payloads[:-1]]
    assert "".join(delta.get("reasoning_content", "") for delta in deltas) == SCRIPTED_THINKING
    assert "".join(delta.get("content", "") for delta in deltas) == SCRIPTED_ANSWER


# --- health and the schema -----------------------------------------------------------------------------------


def test_health_reports_status_precision_memory_queue_and_load(api, scripted_fp8) -> None:
    health = httpx.get(api.api_url + "/health").json()
    assert health["status"] == "ready"
    assert health["model"] == scripted_fp8.name
    precision = health["precision"]
    assert {"mode", "label", "reason", "device"} <= set(precision)
    assert precision["mode"] in ("fp16", "bf16", "fp32") and precision["device"] == "cpu"
    assert health["memory"]["weights_bytes"] > 0 and health["memory"]["process_rss_bytes"] > 0
    assert health["memory"]["cuda_allocated_bytes"] is None  # no GPU here
    assert health["queue"] == {
        "running": 0,
        "waiting": 0,
        "paused": 0,
        "max_batch": 8,  # the CPU default
        "depth": 0,
        "size": 16,
        "busy": False,
    }
    assert health["load"] == {"stage": "ready", "fraction": 1.0}


def test_openapi_schema_describes_every_request_field_with_the_sampling_ranges(api) -> None:
    schema = httpx.get(api.api_url + "/openapi.json").json()
    request = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert all(field.get("description") for field in request.values()), [
        name for name, field in request.items() if not field.get("description")
    ]

    def bounds(name: str) -> dict:
        found = {}
        for option in request[name].get("anyOf", [request[name]]):
            found.update({k: v for k, v in option.items() if k in ("minimum", "maximum", "exclusiveMinimum")})
        return found

    options = SamplingOptions.model_json_schema()["properties"]
    for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        expected = {k: v for k, v in options[name].items() if k in ("minimum", "maximum", "exclusiveMinimum")}
        assert bounds(name) == expected, name
    assert bounds("max_tokens") == {"minimum": 1, "maximum": 131072}
    assert httpx.get(api.api_url + "/docs").status_code == 200


# --- in-process: states a running server passes through too quickly to catch ---------------------------------


def in_process_client(source: str, **settings: object) -> TestClient:
    engine = ChatEngine(source, device="cpu")
    app = build_api(App(Settings(model=source, **settings), engine, "qwen3-test"))
    return TestClient(app, base_url="http://127.0.0.1")  # a name the server answers to


def test_health_says_loading_with_200_before_the_model_is_ready(scripted_fp8) -> None:
    with in_process_client(str(scripted_fp8)) as http:
        response = http.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "loading"
    assert response.json()["precision"] is None


def test_health_is_503_and_requests_fail_clearly_when_loading_failed(tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen3"}')
    with in_process_client(str(broken)) as http:
        reply = http.post("/v1/chat/completions", json={"messages": HELLO})
        health = http.get("/health")
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "model_unavailable"
    assert health.status_code == 503
    assert health.json()["status"] == "failed" and health.json()["error"]


def test_api_port_zero_turns_the_api_off(scripted_fp8) -> None:
    app = App(Settings(model=str(scripted_fp8), api_port=0), ChatEngine(str(scripted_fp8)), "qwen3-test")
    assert start_api(app) is None


def fail_part_way(*args, **kwargs):
    """The batched decode step fails: after the first token (from the prompt's forward pass)."""
    raise RuntimeError("out of memory (simulated)")


def test_a_generation_that_fails_part_way_is_reported_and_the_server_keeps_serving(scripted_fp8, monkeypatch) -> None:
    with in_process_client(str(scripted_fp8)) as http:
        monkeypatch.setattr("chatbot.engine.scheduler.decode_rows", fail_part_way)
        plain = http.post("/v1/chat/completions", json={"messages": HELLO, **THINKING_OFF})
        stream_body = {"messages": HELLO, "stream": True, **THINKING_OFF}
        with http.stream("POST", "/v1/chat/completions", json=stream_body) as response:
            status, payloads = response.status_code, sse_payloads(response.read().decode())
        client = openai_client("http://127.0.0.1/v1", http_client=http)
        with pytest.raises(openai.APIError, match="out of memory"):
            list(client.chat.completions.create(model="qwen3", messages=HELLO, stream=True))
        monkeypatch.undo()
        healthy = http.post("/v1/chat/completions", json={"messages": HELLO, **THINKING_OFF})
    assert plain.status_code == 500
    assert plain.json()["error"]["code"] == "generation_failed"
    assert "out of memory (simulated)" in plain.json()["error"]["message"]
    # a stream has sent its 200 already: the error arrives as an event, which OpenAI clients raise
    assert status == 200
    first = json.loads(payloads[1])["choices"][0]["delta"]
    assert set(first) == {"content"} and first["content"] and SCRIPTED_ANSWER.startswith(first["content"])
    assert json.loads(payloads[-2])["error"]["code"] == "generation_failed"
    assert payloads[-1] == "[DONE]"
    assert healthy.json()["choices"][0]["message"]["content"] == SCRIPTED_ANSWER


def test_an_unexpected_error_reaches_the_client_as_an_id_and_the_details_stay_in_the_log(
    scripted_fp8, monkeypatch, caplog
) -> None:
    def broken(*args, **kwargs):
        raise KeyError("/home/alice/.cache/secret-path")

    with in_process_client(str(scripted_fp8)) as http:
        monkeypatch.setattr("chatbot.chat.local.LocalBackend.stream", broken)
        response = http.post("/v1/chat/completions", json={"messages": HELLO})
    assert response.status_code == 500
    message = response.json()["error"]["message"]
    assert message.startswith("Internal error ") and "secret-path" not in response.text
    error_id = message.split()[2].rstrip(":")
    assert f"Internal error {error_id}" in caplog.text and "secret-path" in caplog.text


def test_after_a_gpu_fault_health_is_503_failed_and_requests_get_the_restart_advice_simulated(
    scripted_fp8, monkeypatch
) -> None:
    def faulting_decode(*args, **kwargs):
        raise RuntimeError("CUDA error: unspecified launch failure (simulated)")

    with in_process_client(str(scripted_fp8)) as http:
        assert http.post("/v1/chat/completions", json={"messages": HELLO}).status_code == 200
        monkeypatch.setattr("chatbot.engine.scheduler.decode_rows", faulting_decode)
        faulted = http.post("/v1/chat/completions", json={"messages": HELLO})
        monkeypatch.undo()
        later = http.post("/v1/chat/completions", json={"messages": HELLO})
        health = http.get("/health")
    for reply in (faulted, later):
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "device_fault"
        assert "unspecified launch failure" in reply.json()["error"]["message"]
        assert "Restart the server" in reply.json()["error"]["message"]
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert "Restart the server" in health.json()["error"]
