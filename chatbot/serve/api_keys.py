"""Who is asking the API: the ``--api-key`` check and the client key that fair turns go by.

The key comes as ``Authorization: Bearer KEY`` or, as Anthropic's clients send it, ``x-api-key: KEY``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from .api_errors import APIError

# Module level: the dependency's annotation names it, and annotations resolve in the module's globals.
BEARER = HTTPBearer(auto_error=False, description="The key given to --api-key (or QWEN_API_KEY).")


def given_key(request: Request) -> str | None:
    """The key the request carries: ``Authorization: Bearer KEY``, else ``x-api-key: KEY``; None without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip() or None


def has_key(request: Request, key: SecretStr) -> bool:
    """Whether the request carries ``key`` (compared in constant time)."""
    given = given_key(request)
    return given is not None and hmac.compare_digest(given.encode(), key.get_secret_value().encode())


def client_key(request: Request) -> str:
    """Who is asking, for fair turns: the remote address.

    Never the key as sent (``Authorization: Bearer`` or ``x-api-key``): without ``--api-key`` any token is
    accepted, so each made-up token would be a new client with its own turns and queue places. With a key,
    every request that gets here carries that one key, which tells its holders apart no better than their
    addresses do.
    """
    address = request.client.host if request.client else "unknown"
    return f"api:{address}"


def api_key_guard(key: SecretStr) -> Callable[..., Any]:
    """A dependency that lets a request through only with the key (``Authorization: Bearer`` or ``x-api-key``)."""
    expected = key.get_secret_value().encode()

    async def require_key(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
    ) -> None:
        given = credentials.credentials if credentials is not None else given_key(request)
        if given is None:
            raise APIError(
                401,
                "Missing API key: send the header 'Authorization: Bearer KEY' (or 'x-api-key: KEY') with the key "
                "the server was started with (--api-key or QWEN_API_KEY).",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # Constant-time comparison: response timing must not reveal how much of a guess was right.
        if not hmac.compare_digest(given.encode(), expected):
            raise APIError(
                401,
                "Incorrect API key: use the key the server was started with (--api-key or QWEN_API_KEY).",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_key
