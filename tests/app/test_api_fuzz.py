"""Generated requests from the API's own OpenAPI schema: whatever a client sends, never a server error.

Schemathesis derives bodies from ``/openapi.json``; every response is checked against the schema
(status documented, body shape, never a 5xx). Run: ``.venv/bin/python -m pytest tests/app/test_api_fuzz.py -q``.
"""

from __future__ import annotations

import pytest
import schemathesis
from helpers.app import RunningApp
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import positive_data_acceptance

# Each generated request is kept cheap on purpose: at most this many tokens whatever the body asks
# (JSON has no integer type, so 7802.0 is a valid max_tokens too), so an example costs milliseconds
# on any machine. Speed is measured by `python -m chatbot bench`, never here.
MOST_TOKENS = 16
# A bound that turns a hung request into a failure, not a measurement.
REQUEST_TIMEOUT_SECONDS = 120


def cap_lengths(body: object) -> None:
    if isinstance(body, dict):
        for name in ("max_tokens", "max_completion_tokens", "min_tokens", "max_output_tokens"):
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > MOST_TOKENS:
                body[name] = MOST_TOKENS
        # Without a limit a reply may fill the window (as in vLLM), e.g. a json_object the scripted
        # model never closes: give it the cheap limit too.
        if all(body.get(name) is None for name in ("max_tokens", "max_completion_tokens", "max_output_tokens")):
            body["max_tokens"] = body["max_output_tokens"] = MOST_TOKENS  # each API ignores the other's name


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/chat/completions", "POST"),
        ("/v1/messages", "POST"),
        ("/v1/messages/count_tokens", "POST"),
        ("/v1/responses", "POST"),
        ("/v1/responses/{response_id}", "GET"),
        ("/v1/responses/{response_id}/input_items", "GET"),
        ("/v1/models", "GET"),
        ("/health", "GET"),
    ],
)
def test_generated_requests_get_documented_answers_and_never_a_server_error(demo_app: RunningApp, path, method) -> None:
    operation = schemathesis.openapi.from_url(demo_app.api_url + "/openapi.json")[path][method]

    @given(case=operation.as_strategy())
    # No shrinking phase: a failure is reported as generated instead of costing minutes of retries.
    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        database=None,
    )
    def check(case) -> None:
        cap_lengths(case.body)
        # The schema cannot say that the last message must be a non-empty user message (and so on):
        # such schema-valid bodies get a 400, so "valid data is accepted" is not checked.
        case.call_and_validate(
            base_url=demo_app.api_url, excluded_checks=[positive_data_acceptance], timeout=REQUEST_TIMEOUT_SECONDS
        )

    check()
