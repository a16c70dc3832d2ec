"""``python -m chatbot batch IN.jsonl OUT.jsonl``: answer many prompts, several at a time.

Each input line is a JSON object with ``"prompt"`` (a user message) or ``"messages"`` (a whole
conversation), and optionally ``"id"``, ``"enable_thinking"`` and sampling options
(``max_tokens``/``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``...).
Each output line, in input order, holds ``line``, ``id``, ``thinking``, ``answer``,
``finish_reason``, ``prompt_tokens`` and ``completion_tokens`` — or ``error`` for a bad line,
which is reported with its line number while the rest is still processed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..chat.prompt import build_prompt, normalize_messages
from ..chat.reply import batch_reply
from ..engine.engine import ChatEngine
from ..engine.sampling import SamplingOptions, sampling_options
from ..errors import ChatbotError

log = logging.getLogger(__name__)
OPTION_ALIASES = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "min_tokens": "min_new_tokens",
}
ITEM_KEYS = ("prompt", "messages", "id", "enable_thinking")


@dataclass
class Item:
    line: int
    id: Any
    messages: list[dict[str, str]]
    enable_thinking: bool
    options: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        return json.dumps([self.enable_thinking, self.options], sort_keys=True)


def parse_line(line_number: int, text: str, defaults: dict[str, Any]) -> Item:
    """One input line -> Item; raises ChatbotError with a message that says what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChatbotError(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise ChatbotError("each line must be a JSON object")
    if "messages" in data:
        messages = data["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ChatbotError('"messages" must be a list of {"role", "content"} objects')
    elif isinstance(data.get("prompt"), str):
        messages = [{"role": "user", "content": data["prompt"]}]
    else:
        raise ChatbotError('each line needs "prompt" (a string) or "messages" (a list)')
    options = dict(defaults)
    for key, value in data.items():
        if key not in ITEM_KEYS:
            options[OPTION_ALIASES.get(key, key)] = value
    thinking = data.get("enable_thinking", defaults.get("enable_thinking", False))
    options.pop("enable_thinking", None)
    if not isinstance(thinking, bool):
        raise ChatbotError('"enable_thinking" must be true or false')
    return Item(line_number, data.get("id"), normalize_messages(messages), thinking, options)


def read_items(path: Path, defaults: dict[str, Any]) -> Iterator[Item | dict[str, Any]]:
    """Items, or error records for lines that cannot be used."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                yield parse_line(number, text, defaults)
            except ChatbotError as exc:
                yield {"line": number, "error": exc.message}


def _check(item: Item, engine: ChatEngine) -> SamplingOptions:
    """Validate an item's options and length before it joins a batch (raises ChatbotError)."""
    options = sampling_options(item.enable_thinking, **item.options)
    loaded = engine.load()
    build_prompt(
        loaded.tokenizer,
        item.messages,
        enable_thinking=item.enable_thinking,
        max_context=loaded.max_context,
        max_new_tokens=options.max_new_tokens,
    )
    return options


def run_batch_file(
    engine: ChatEngine, source: Path, target: Path, batch_size: int = 8, defaults: dict[str, Any] | None = None
) -> dict[str, int]:
    """Process ``source`` into ``target``; returns counts of answered and failed lines."""
    entries = list(read_items(source, defaults or {}))
    counts = {"answered": 0, "failed": 0}
    engine.load()
    with target.open("w", encoding="utf-8") as out, tqdm(total=len(entries), unit="line", desc="batch") as bar:
        for start in range(0, len(entries), batch_size):
            chunk = entries[start : start + batch_size]
            records = _process_chunk(engine, chunk)
            for record in sorted(records, key=lambda r: r["line"]):
                counts["failed" if "error" in record else "answered"] += 1
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            bar.update(len(chunk))
    return counts


def _process_chunk(engine: ChatEngine, chunk: list[Item | dict[str, Any]]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = [e for e in chunk if isinstance(e, dict)]
    groups: dict[str, list[Item]] = {}
    for item in (e for e in chunk if isinstance(e, Item)):
        try:
            _check(item, engine)
        except ChatbotError as exc:
            records.append({"line": item.line, "id": item.id, "error": str(exc)})
            continue
        groups.setdefault(item.key(), []).append(item)
    for items in groups.values():
        try:
            replies = batch_reply(
                engine, [i.messages for i in items], enable_thinking=items[0].enable_thinking, **items[0].options
            )
        except ChatbotError as exc:
            records += [{"line": i.line, "id": i.id, "error": str(exc)} for i in items]
            continue
        for item, reply in zip(items, replies, strict=True):
            reply.pop("full_response")
            records.append({"line": item.line, "id": item.id, **reply})
    return records
