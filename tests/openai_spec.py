"""OpenAI's published schemas (vendored from openai/openai-openapi, see spec/openai_chat_schemas.json)
as validators: every response body, stream chunk and error the tests see can be checked against them."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

SCHEMAS = json.loads((Path(__file__).parent / "spec" / "openai_chat_schemas.json").read_text(encoding="utf-8"))


@cache
def validator(name: str) -> Any:
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": SCHEMAS["components"]}
    )


def assert_valid(name: str, body: Any) -> None:
    """Fail with every violation of OpenAI's ``components.schemas.<name>``."""
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator(name).iter_errors(body)]
    assert not errors, f"{name} violations:\n" + "\n".join(errors[:10]) + f"\nbody: {json.dumps(body)[:2000]}"
