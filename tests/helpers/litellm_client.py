"""A litellm client run by tests/peers/test_api_litellm.py in litellm's own virtual environment.

litellm 1.106 needs openai 2.x while the project's environment has openai 3.x, so this script runs
under another interpreter and imports nothing of the project. It talks to a running API and prints,
as JSON, what litellm made of each reply: the exception classes it raised and the tool call it read.

    python tests/helpers/litellm_client.py http://127.0.0.1:8000/v1 KEY
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of litellm's price list

import litellm  # after the variable above, which litellm reads at import

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Tokyo"]}}, "required": ["city"]},
    },
}


def complete(base: str, key: str, **kwargs):
    return litellm.completion(model="openai/qwen3", api_base=base, api_key=key, num_retries=0, **kwargs)


def raised(base: str, key: str, **kwargs) -> dict:
    """The litellm exception classes a request raised (each class it is an instance of), or none."""
    try:
        complete(base, key, **kwargs)
    except Exception as exc:  # what litellm raises is what is reported
        kinds = [name for name in dir(litellm) if isinstance(getattr(litellm, name), type)]
        matching = [name for name in kinds if issubclass(getattr(litellm, name), BaseException)]
        return {"raised": sorted(name for name in matching if isinstance(exc, getattr(litellm, name)))}
    return {"raised": []}


def main() -> None:
    base, key = sys.argv[1], sys.argv[2]
    hello = [{"role": "user", "content": "Hi"}]
    reply = complete(
        base, key, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], tool_choice="required"
    )
    call = reply.choices[0].message.tool_calls[0]
    report = {
        "litellm": getattr(litellm, "version", ""),
        "wrong_key": raised(base, "wrong", messages=hello),
        "too_long": raised(base, key, messages=[{"role": "user", "content": "word " * 9000}]),
        "tool_call": {
            "finish_reason": reply.choices[0].finish_reason,
            "name": call.function.name,
            "arguments": call.function.arguments,
        },
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
