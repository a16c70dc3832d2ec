"""Continuing a reply cut at max_tokens through the API, with the official ``openai`` client: vLLM's
``continue_final_message`` and the cut message's ``reasoning_content`` (the scripted model, exact words).

.venv/bin/python -m pytest tests/app/test_api_continue.py -q
"""

from __future__ import annotations

import httpx
import openai
import pytest

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING

HELLO = [{"role": "user", "content": "Hello"}]
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


def test_a_reply_cut_in_its_thinking_is_continued_with_the_openai_client(client) -> None:
    cut = client.chat.completions.create(model="qwen3", messages=HELLO, max_tokens=3, temperature=0)
    thinking = cut.choices[0].message.reasoning_content
    assert cut.choices[0].finish_reason == "length" and thinking and SCRIPTED_THINKING.startswith(thinking)
    partial = {"role": "assistant", "content": "", "reasoning_content": thinking}
    rest = client.chat.completions.create(model="qwen3", messages=[*HELLO, partial], temperature=0, extra_body=CONTINUE)
    message = rest.choices[0].message
    assert thinking + message.reasoning_content == SCRIPTED_THINKING
    assert message.content == SCRIPTED_ANSWER and rest.choices[0].finish_reason == "stop"


def test_a_streamed_continuation_of_an_answer_joins_it_exactly(client) -> None:
    cut = client.chat.completions.create(model="qwen3", messages=HELLO, max_tokens=16, temperature=0)
    answer = cut.choices[0].message.content
    assert answer and SCRIPTED_ANSWER.startswith(answer) and answer != SCRIPTED_ANSWER
    partial = {"role": "assistant", "content": answer, "reasoning_content": cut.choices[0].message.reasoning_content}
    stream = client.chat.completions.create(
        model="qwen3", messages=[*HELLO, partial], temperature=0, stream=True, extra_body=CONTINUE
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert answer + "".join(pieces) == SCRIPTED_ANSWER


def test_continue_final_message_without_an_assistant_message_is_a_400(client, api) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="qwen3", messages=HELLO, extra_body={"continue_final_message": True})
    assert "continue_final_message" in str(caught.value)
    both = {"continue_final_message": True, "add_generation_prompt": True}
    body = {"model": "qwen3", "messages": [*HELLO, {"role": "assistant", "content": "Hi"}], **both}
    refused = httpx.post(api.api_url + "/v1/chat/completions", json=body, timeout=60)
    assert refused.status_code == 400 and "add_generation_prompt" in refused.text
