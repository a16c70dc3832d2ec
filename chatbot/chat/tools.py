"""Tool calls as Qwen3 writes them (the "hermes" format vLLM parses for Qwen3).

The model's chat template renders the ``tools`` into the system turn and asks for calls as
``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``. This module parses those blocks
out of the answer, whole (``parse_tool_calls``) or as the answer streams (``ToolCallStream``), and
turns ``tool_choice`` into the grammar that enforces a call (``tool_call_constraint``). Calls are
only looked for in the answer: a ``<tool_call>`` written while thinking is not a call.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.constraints import Constraint
from ..errors import InvalidRequestError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
BLOCK_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
# Most calls one constrained reply may hold when parallel calls are allowed.
MAX_PARALLEL_CALLS = 4
# Most tools one request may offer (OpenAI's own bound), and their size as JSON together: counted before any
# work (rendering them into the prompt, compiling their grammar) is spent on them.
MAX_TOOLS = 128
MAX_TOOLS_BYTES = 256 * 1024


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON text, as OpenAI sends it

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _call_from(body: str) -> ToolCall | None:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", data["name"], text)


def parse_tool_calls(answer: str) -> tuple[str, list[ToolCall]]:
    """(the answer without its tool-call blocks, stripped; the calls). Unparsable blocks stay text."""
    calls: list[ToolCall] = []
    kept: list[str] = []
    last = 0
    for match in BLOCK_RE.finditer(answer):
        call = _call_from(match.group(1))
        if call is None:
            continue
        kept.append(answer[last : match.start()])
        last = match.end()
        calls.append(call)
    kept.append(answer[last:])
    return "".join(kept).strip(), calls


def _partial_suffix(text: str, tag: str) -> int:
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ToolCallStream:
    """Splits a streamed answer into content pieces and whole tool calls.

    Text that may be the start of ``<tool_call>`` is held back until it is known; a block is
    emitted as one call when its ``</tool_call>`` arrives. Whitespace around calls is dropped, as
    the whole-reply parser strips it.
    """

    def __init__(self) -> None:
        self.buffer = ""
        self.inside = False
        self.pending_space = ""
        self.calls = 0
        self.started = False

    def _content(self, out: list[tuple[str, Any]], text: str) -> None:
        # Whitespace is held back until text follows it, so that none is sent before a call or at the end.
        text = self.pending_space + text
        if not self.started:
            text = text.lstrip()
        body = text.rstrip()
        self.pending_space = text[len(body) :]
        if body:
            self.started = True
            out.append(("content", body))

    def feed(self, text: str) -> list[tuple[str, Any]]:
        """[("content", str) | ("tool_call", ToolCall)] for the text that is now known."""
        self.buffer += text
        out: list[tuple[str, Any]] = []
        while True:
            if not self.inside:
                start = self.buffer.find(OPEN)
                if start < 0:
                    keep = _partial_suffix(self.buffer, OPEN)
                    self._content(out, self.buffer[: len(self.buffer) - keep])
                    self.buffer = self.buffer[len(self.buffer) - keep :]
                    return out
                self._content(out, self.buffer[:start])
                self.buffer, self.inside = self.buffer[start:], True
            end = self.buffer.find(CLOSE)
            if end < 0:
                return out
            block, self.buffer = self.buffer[: end + len(CLOSE)], self.buffer[end + len(CLOSE) :]
            self.inside = False
            _, calls = parse_tool_calls(block)
            if calls:
                self.pending_space = ""
                self.calls += 1
                out.append(("tool_call", calls[0]))
            else:
                self._content(out, block)

    def finish(self) -> list[tuple[str, Any]]:
        """The held-back rest (an unfinished block stays text)."""
        out: list[tuple[str, Any]] = []
        rest, self.buffer = self.buffer, ""
        self._content(out, rest.rstrip())
        return out


def check_tools_size(tools: Sequence[dict[str, Any]]) -> None:
    """Refuse more than ``MAX_TOOLS`` tools, or more than ``MAX_TOOLS_BYTES`` of them as JSON.

    Raises:
        InvalidRequestError: param ``tools``, saying the bound and what to send instead.
    """
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(
            f"tools has {len(tools)} functions; this server takes at most {MAX_TOOLS} per request.",
            param="tools",
            fix="Offer only the tools this turn may need.",
        )
    size = json_size(tools)
    if size > MAX_TOOLS_BYTES:
        raise InvalidRequestError(
            f"tools is {size / 1024:.0f} KiB of JSON; this server takes at most {MAX_TOOLS_BYTES // 1024} KiB of "
            "tool definitions per request.",
            param="tools",
            fix="Offer fewer tools, or shorter descriptions and parameter schemas.",
        )


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (how it is counted against the request bounds)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def tool_names(tools: Sequence[dict[str, Any]]) -> list[str]:
    return [tool["function"]["name"] for tool in tools]


def tool_call_constraint(
    tools: Sequence[dict[str, Any]], tool_choice: Any, *, parallel: bool, after_thinking: bool
) -> Constraint | None:
    """The grammar ``tool_choice`` asks for: None for auto/none, at least one call for required, one
    call of the named function for ``{"type": "function", "function": {"name": ...}}``.

    Raises:
        InvalidRequestError: a named function that is not among ``tools``, or a choice without tools.
    """
    if tool_choice in (None, "auto", "none"):
        return None
    if not tools:
        raise InvalidRequestError(
            f"tool_choice {json.dumps(tool_choice)} needs tools", param="tool_choice", fix="Send the tools list."
        )
    names = tool_names(tools)
    if tool_choice == "required":
        chosen = list(tools)
    else:
        name = tool_choice["function"]["name"]
        if name not in names:
            raise InvalidRequestError(
                f"tool_choice names the function {name!r}, which is not in tools ({', '.join(names)})",
                param="tool_choice",
            )
        chosen = [tool for tool in tools if tool["function"]["name"] == name]
    schemas = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                "arguments": tool["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
        }
        for tool in chosen
    ]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    many = parallel and tool_choice == "required"
    return Constraint(
        "json_schema",
        json.dumps(schema),
        wrap=(OPEN + "\n", "\n" + CLOSE),
        max_count=MAX_PARALLEL_CALLS if many else 1,
        after_thinking=after_thinking,
        param="tools",
    )
