"""The one way tests build the ``openai`` client: no retries (a retry would hide the error under test)."""

from __future__ import annotations

from typing import Any

import openai

from helpers.app import RunningApp


def openai_client(
    app: RunningApp | str, *, api_key: str = "x", validate: bool = False, **options: Any
) -> openai.OpenAI:
    """An ``openai.OpenAI`` on ``app``'s API (or on a base URL ending in ``/v1``), with ``max_retries=0``.

    ``validate=True`` checks every JSON body received against OpenAI's published schemas
    (``helpers.openai_spec``); ``options`` go to ``openai.OpenAI`` (``timeout``, ``http_client``...).
    """
    base_url = app if isinstance(app, str) else app.api_url + "/v1"
    if validate:
        from helpers.openai_spec import validating_http_client

        options["http_client"] = validating_http_client()
    return openai.OpenAI(base_url=base_url, api_key=api_key, **{"max_retries": 0, **options})


def carries_text(chunk: Any) -> bool:
    """Whether a streamed chat chunk brings text, answer or thinking (a random model may never end its thinking,
    and thinking is on by default)."""
    delta = chunk.choices[0].delta if chunk.choices else None
    return bool(delta and (delta.content or getattr(delta, "reasoning_content", None)))
