"""Structured output: ``response_format`` (OpenAI's shape) as a grammar the answer must match.

``{"type": "json_object"}`` asks for any JSON object, ``{"type": "json_schema", "json_schema":
{"name", "schema", "strict"}}`` for JSON matching the schema; both are enforced by constrained
decoding (engine/constraints.py), ``strict`` or not. Thinking stays free: with thinking on, the
grammar starts after ``</think>``.
"""

from __future__ import annotations

import json
from typing import Any

from ..engine.constraints import Constraint
from ..errors import InvalidRequestError

# The largest JSON schema a response_format may carry (as compact JSON), counted before it is compiled.
MAX_SCHEMA_BYTES = 64 * 1024


def response_format_constraint(response_format: Any, *, after_thinking: bool) -> Constraint | None:
    """The constraint for ``response_format`` (a dict as OpenAI sends it, or None).

    Raises:
        InvalidRequestError: an unknown type, json_schema without a schema object, or a schema over
            ``MAX_SCHEMA_BYTES``.
    """
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in (None, "text"):
        if kind is None:
            raise InvalidRequestError("response_format must be an object with a type", param="response_format.type")
        return None
    if kind == "json_object":
        return Constraint("json_object", after_thinking=after_thinking)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequestError(
                "response_format.json_schema.schema must be a JSON Schema object",
                param="response_format.json_schema.schema",
                fix='Send {"type": "json_schema", "json_schema": {"name": "...", "schema": {...}}}.',
            )
        text = json.dumps(schema, sort_keys=False)
        size = len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if size > MAX_SCHEMA_BYTES:
            raise InvalidRequestError(
                f"response_format.json_schema.schema is {size / 1024:.0f} KiB; this server takes schemas of at "
                f"most {MAX_SCHEMA_BYTES // 1024} KiB.",
                param="response_format.json_schema.schema",
                fix="Send a smaller schema: fewer properties, shorter enums.",
            )
        return Constraint("json_schema", text, after_thinking=after_thinking)
    raise InvalidRequestError(
        f"response_format.type {kind!r} is not supported; use text, json_object or json_schema",
        param="response_format.type",
    )
