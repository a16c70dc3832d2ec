"""llama.cpp reads our generated checkpoints: its converter, quantizer and server reproduce the scripted model.

A scripted checkpoint (real Qwen3 tokenizer and chat template, block-FP8 weights) goes through llama.cpp's own
``convert_hf_to_gguf.py`` and ``llama-quantize``; ``llama-server`` then has to write the script word for word,
thinking and answer apart. That makes the GGUF copies trustworthy stand-ins for the peer benchmark and a real
third-party OpenAI-compatible server for the remote-backend tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.clients import openai_client
from helpers.llamacpp import running_llama_server

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING

# The first use builds llama.cpp when ./start.sh test has not (about 15 minutes on 2 cores): a bound, not a goal.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_llama_server_writes_the_scripted_reply_from_our_checkpoint(
    llamacpp, scripted_gguf: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    with running_llama_server(
        llamacpp, scripted_gguf[kind], tmp_path / "llama-server.log", "--jinja", "--reasoning-format", "deepseek"
    ) as server:
        client = openai_client(server.url)
        messages = [{"role": "user", "content": "Hello there"}]
        thinking = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=64)
        message = thinking.choices[0].message
        assert message.model_extra.get("reasoning_content", "").strip() == SCRIPTED_THINKING
        assert message.content.strip() == SCRIPTED_ANSWER
        assert thinking.choices[0].finish_reason == "stop"

        plain = client.chat.completions.create(
            model="m",
            messages=messages,
            temperature=0,
            max_tokens=64,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        assert plain.choices[0].message.content.strip() == SCRIPTED_ANSWER
        assert not plain.choices[0].message.model_extra.get("reasoning_content")


def test_our_engine_writes_the_same_script_over_qwen3s_real_tokenizer(scripted_qwen3: Path) -> None:
    from chatbot import Qwen3ChatBot

    bot = Qwen3ChatBot(str(scripted_qwen3), device="cpu", load="now")
    try:
        reply = bot.chat("Hello there", enable_thinking=True, max_new_tokens=64)
        assert (reply["thinking"], reply["answer"]) == (SCRIPTED_THINKING, SCRIPTED_ANSWER)
        assert bot.chat("Again", enable_thinking=False, max_new_tokens=64)["answer"] == SCRIPTED_ANSWER
    finally:
        bot.close()
