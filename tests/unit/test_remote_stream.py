"""Remote chunks to chat events (``chat/remote_stream.py``): both shapes of thinking, cut replies, tool calls.

The chunks are ``openai``'s own ``ChatCompletionChunk`` objects, built from the JSON a server sends;
the servers themselves are in tests/app/test_remote.py.
"""

from __future__ import annotations

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from chatbot.chat.remote import drop_oldest_turn
from chatbot.chat.remote_stream import RemoteReply, backend_error, request_body
from chatbot.chat.reply import AnswerDelta, ChatDone, ThinkingDelta, ToolCallDelta
from chatbot.engine.sampling import sampling_options
from chatbot.errors import (
    BackendError,
    BackendUnavailableError,
    ContextLengthError,
    InvalidRequestError,
    QueueFullError,
)


def chunk(content: str | None = None, finish: str | None = None, **delta: object) -> ChatCompletionChunk:
    body = {"role": "assistant", **({"content": content} if content is not None else {}), **delta}
    return ChatCompletionChunk.model_validate(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": body, "finish_reason": finish}],
        }
    )


def run(reply: RemoteReply, chunks: list[ChatCompletionChunk], cancelled: bool = False) -> tuple[str, str, ChatDone]:
    events = [event for c in chunks for event in reply.feed(c)] + reply.finish(cancelled=cancelled)
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    answer = "".join(e.text for e in events if isinstance(e, AnswerDelta))
    done = events[-1]
    assert isinstance(done, ChatDone)
    return thinking, answer, done


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_thinking_in_its_own_field(field: str) -> None:
    chunks = [chunk(**{field: "\nLet me"}), chunk(**{field: " think."}), chunk("\n\nHi"), chunk(" there.", "stop")]
    thinking, answer, done = run(RemoteReply(thinking=True, continues=False), chunks)
    assert (thinking, answer) == ("Let me think.", "Hi there.")
    assert (done.thinking, done.answer, done.finish_reason) == ("Let me think.", "Hi there.", "stop")
    assert done.full_response.startswith("<think>") and "</think>" in done.full_response


def test_raw_think_tags_split_across_chunks() -> None:
    pieces = ["<thi", "nk>\nPlan", " it.</th", "ink>\n\nThe", " answer."]
    chunks = [chunk(p) for p in pieces] + [chunk(None, "stop")]
    thinking, answer, done = run(RemoteReply(thinking=True, continues=False), chunks)
    assert (thinking, answer) == ("Plan it.", "The answer.")
    assert done.full_response == "".join(pieces)


def test_raw_thinking_without_the_opening_tag_and_cut_at_max_tokens() -> None:
    thinking, answer, done = run(RemoteReply(True, False), [chunk("Still thinking about"), chunk(" it", "length")])
    assert (thinking, answer, done.finish_reason) == ("Still thinking about it", "", "length")
    assert (done.thinking, done.answer) == ("Still thinking about it", "")


def test_thinking_off_keeps_a_stray_close_tag_as_answer() -> None:
    thinking, answer, done = run(RemoteReply(False, False), [chunk("a </think> b", "stop")])
    assert (thinking, answer, done.answer) == ("", "a </think> b", "a </think> b")


def test_thinking_off_but_the_reply_opens_with_think_tags() -> None:
    # llama-server --reasoning-format none echoes the template's empty block; the answer starts after it.
    pieces = ["<th", "ink>\n\n</think>\n\nHello", " </think> stays"]
    thinking, answer, done = run(RemoteReply(False, False), [chunk(p) for p in pieces] + [chunk(None, "stop")])
    assert (thinking, answer, done.thinking, done.answer) == ("", "Hello </think> stays", "", "Hello </think> stays")
    # A server that ignores the switch and thinks anyway: the thinking is shown as thinking.
    thinking, answer, _ = run(RemoteReply(False, False), [chunk("<think>Hmm.</think>Yes."), chunk(None, "stop")])
    assert (thinking, answer) == ("Hmm.", "Yes.")
    thinking, answer, done = run(RemoteReply(False, False), [chunk("<thi"), chunk(None, "length")])
    assert (thinking, answer, done.answer) == ("", "<thi", "<thi")


def test_cancelled_and_unfinished_streams() -> None:
    *_, done = run(RemoteReply(False, False), [chunk("Part")], cancelled=True)
    assert done.finish_reason == "cancelled" and done.answer == "Part"
    reply = RemoteReply(False, False)
    reply.feed(chunk("Part"))
    with pytest.raises(BackendError, match="closed the stream"):
        reply.finish()


def test_tool_call_fragments_become_one_call() -> None:
    calls = [
        chunk(tool_calls=[{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get"}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
        chunk(None, "tool_calls", tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
    ]
    reply = RemoteReply(False, False)
    events = [e for c in calls for e in reply.feed(c)] + reply.finish()
    (call,) = [e for e in events if isinstance(e, ToolCallDelta)]
    assert (call.call.id, call.call.name, call.call.arguments) == ("call_1", "get", '{"city": "Paris"}')
    assert events[-1].finish_reason == "tool_calls" and events[-1].tool_calls == (call.call,)


def test_request_body_names_the_switch_and_the_vllm_extras() -> None:
    options = sampling_options(True, max_new_tokens=32, min_new_tokens=4, top_k=0, seed=5, stop=["END"])
    messages = [{"role": "user", "content": "Hi"}]
    body = request_body("m", messages, options, thinking=True, send_max_tokens=True)
    assert body["extra_body"]["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["extra_body"]["top_k"] == -1 and body["extra_body"]["min_tokens"] == 4
    assert (body["max_tokens"], body["seed"], body["stop"], body["stream"]) == (32, 5, ["END"], True)
    assert body["stream_options"] == {"include_usage": True}
    assert "max_tokens" not in request_body("m", messages, options, thinking=False, send_max_tokens=False)
    history = [*messages, {"role": "assistant", "content": "Hel"}]
    continuing = request_body("m", history, options, thinking=False, send_max_tokens=True)
    assert continuing["extra_body"]["continue_final_message"] is True


def status_error(status: int, body: dict, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    """What the openai client raises for an HTTP error (its body is the server's "error" object)."""
    request = httpx2.Request("POST", "http://server/v1/chat/completions")
    response = httpx2.Response(status, request=request, json={"error": body}, headers=headers)
    kind = {400: openai.BadRequestError, 401: openai.AuthenticationError, 429: openai.RateLimitError}.get(
        status, openai.InternalServerError
    )
    return kind(f"Error code: {status}", response=response, body=body)


def test_the_servers_errors_become_errors_a_user_can_act_on() -> None:
    url = "http://server/v1"
    unreachable = backend_error(openai.APIConnectionError(request=httpx2.Request("GET", url)), url)
    assert isinstance(unreachable, BackendUnavailableError) and unreachable.status == 503
    assert "cannot be reached" in unreachable.message and "retrying" in unreachable.fix

    key = backend_error(status_error(401, {"message": "Invalid API key"}), url)
    assert type(key) is BackendError and key.status == 502 and "--backend-api-key" in key.fix
    assert "Invalid API key" in key.message

    busy = backend_error(status_error(429, {"message": "slow down"}, {"retry-after": "7"}), url)
    assert isinstance(busy, QueueFullError) and busy.retry_after == 7

    too_long = {"message": "This model's maximum context length is 4096 tokens", "code": "context_length_exceeded"}
    assert isinstance(backend_error(status_error(400, too_long), url), ContextLengthError)
    bad = backend_error(status_error(400, {"message": "top_p must be in (0, 1]", "param": "top_p"}), url)
    assert isinstance(bad, InvalidRequestError) and bad.param == "top_p"

    loading = backend_error(status_error(503, {"message": "model is loading"}), url)
    assert isinstance(loading, BackendUnavailableError)
    broken = backend_error(status_error(500, {"message": "CUDA error"}), url)
    assert type(broken) is BackendError and "CUDA error" in broken.message


def test_drop_oldest_turn_keeps_the_system_prompt_and_the_new_message() -> None:
    system, new = {"role": "system", "content": "s"}, {"role": "user", "content": "new"}
    turn = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": []},
        {"role": "tool", "content": "r"},
        {"role": "assistant", "content": "a"},
    ]
    shorter, count = drop_oldest_turn([system, *turn, {"role": "user", "content": "q2"}, new])
    assert (shorter, count) == ([system, {"role": "user", "content": "q2"}, new], 4)
    assert drop_oldest_turn(shorter) == ([system, new], 1)
    assert drop_oldest_turn([system, new]) is None


@pytest.mark.parametrize("thinking", [True, False])
def test_a_continued_answer_keeps_the_space_that_joins_it(thinking: bool) -> None:
    chunks = [chunk(" generated"), chunk(" on your"), chunk(" machine.\n", "stop")]
    _, answer, done = run(RemoteReply(thinking, continues="answer"), chunks)
    assert (answer, done.answer, done.thinking) == (" generated on your machine.", " generated on your machine.", "")


@pytest.mark.parametrize("field", ["content", "reasoning_content"])
def test_continued_thinking_keeps_the_space_that_joins_it(field: str) -> None:
    if field == "content":  # a server without a reasoning parser: the close tag comes as text
        chunks = [chunk(" and then"), chunk(" answer.</think>\n\n"), chunk("Hi.", "stop")]
    else:
        chunks = [chunk(reasoning_content=" and then"), chunk(reasoning_content=" answer."), chunk("\n\nHi.", "stop")]
    thinking, answer, done = run(RemoteReply(True, continues="thinking"), chunks)
    assert (thinking, answer) == (" and then answer.", "Hi.")
    assert (done.thinking, done.answer) == (" and then answer.", "Hi.")
