"""OpenAI's published schemas (vendored from openai/openai-openapi, see tests/spec/openai_*_schemas.json)
as validators: every response body, stream chunk and error the tests see can be checked against them."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

SPEC = Path(__file__).parent.parent / "spec"
SCHEMAS = json.loads((SPEC / "openai_chat_schemas.json").read_text(encoding="utf-8"))
# The Responses API's schemas, from the same commit of the same file.
SCHEMAS["components"]["schemas"].update(
    json.loads((SPEC / "openai_responses_schemas.json").read_text(encoding="utf-8"))["components"]["schemas"]
)


def json_schema(node: Any) -> Any:
    """OpenAPI's ``nullable: true`` (which the published file still uses in places) as JSON Schema:
    ``{"anyOf": [the schema, {"type": "null"}]}``; everything else unchanged."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@cache
def validator(name: str) -> Any:
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": json_schema(SCHEMAS["components"])}
    )


def assert_valid(name: str, body: Any) -> None:
    """Fail with every violation of OpenAI's ``components.schemas.<name>``."""
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator(name).iter_errors(body)]
    assert not errors, f"{name} violations:\n" + "\n".join(errors[:10]) + f"\nbody: {json.dumps(body)[:2000]}"


def validating_http_client() -> Any:
    """An httpx client for ``openai.OpenAI(http_client=...)`` that checks every JSON body it receives
    (completions, responses, input items, models, errors) against OpenAI's schemas; streams are checked
    chunk by chunk elsewhere."""
    import httpx

    def check(response: httpx.Response) -> None:
        if "json" not in response.headers.get("content-type", ""):
            return
        response.read()
        body = response.json()
        path = response.request.url.path
        if response.status_code >= 400:
            assert_valid("ErrorResponse", body)
        elif path.endswith("/chat/completions"):
            assert_valid("CreateChatCompletionResponse", body)
        elif path.endswith("/input_items"):
            assert_valid("ResponseItemList", body)
        elif path.endswith("/responses") or ("/responses/" in path and response.request.method == "GET"):
            assert_valid("Response", body)
        elif path.endswith("/models"):
            assert_valid("ListModelsResponse", body)
        elif "/models/" in path:
            assert_valid("Model", body)

    return httpx.Client(event_hooks={"response": [check]}, timeout=120)
