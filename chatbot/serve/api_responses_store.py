"""The replies ``/v1/responses`` keeps, and the routes that read them: ``GET /v1/responses/{id}`` (the
response object as it was returned), ``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``
(the items it read, as OpenAI's list object, paged with ``limit``, ``order`` and ``after``).

A kept reply also lets a later request continue it with ``previous_response_id``. ``ResponseStore`` holds
at most ``--responses-store`` replies (256 by default; 0 keeps none) and ``STORE_BYTES`` of them in all
(response objects and input items, as JSON), the oldest dropped first, in memory only. Each is found only
by its owner (``owner_of``): requests from the same address that carry the same key (or, without
``--api-key``, the same bearer token); anyone else gets the 404 an unknown id gets.

    curl http://127.0.0.1:8000/v1/responses/resp_... ; curl -X DELETE http://127.0.0.1:8000/v1/responses/resp_...
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

from ..chat.tools import json_size
from .api_errors import ERROR_RESPONSES, APIError
from .api_keys import client_key, given_key
from .api_models import ErrorResponse
from .api_responses_items import new_id

STORE_BYTES = 64 * 2**20  # kept replies, all together
MAX_LIST_LIMIT = 100  # most input items one page lists (OpenAI's bound)
KEPT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"model": ErrorResponse, "description": "This client has no kept response with this id."},
}


def owner_of(request: Request) -> str:
    """Who may read a kept reply: the request's address and a digest of the key it carries (the key itself
    is not kept). With ``--api-key`` every request carries that key, so the address tells holders apart;
    without one, clients that send different tokens do not see each other's replies."""
    key = hashlib.sha256((given_key(request) or "").encode()).hexdigest()[:32]
    return f"{client_key(request)}|{key}"


# --- input items as OpenAI lists them -------------------------------------------------------------------------


def text_parts(content: Any, kind: str) -> list[dict[str, Any]]:
    """A message's content as text parts of ``kind`` (input_text or output_text); input was checked before."""
    texts = [content] if isinstance(content, str) else [part.get("text", "") for part in content or []]
    extra: dict[str, list[Any]] = {"annotations": [], "logprobs": []} if kind == "output_text" else {}
    return [{"type": kind, "text": text, **extra} for text in texts]


def item_resource(item: dict[str, Any]) -> dict[str, Any]:
    """One input item as it is listed: with an id and a status, its text as typed parts."""
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        parts = text_parts(item.get("content"), "output_text" if role == "assistant" else "input_text")
        return {
            "id": item.get("id") or new_id("msg"),
            "type": "message",
            "role": role,
            "status": "completed",
            "content": parts,
        }
    if kind == "function_call":
        return {
            "id": item.get("id") or new_id("fc"),
            "type": "function_call",
            "call_id": item.get("call_id"),
            "name": item["name"],
            "arguments": item.get("arguments", "{}"),
            "status": "completed",
        }
    if kind == "function_call_output":
        output = item.get("output", "")
        text = output if isinstance(output, str) else "".join(part.get("text", "") for part in output)
        return {
            "id": item.get("id") or new_id("fco"),
            "type": "function_call_output",
            "call_id": item.get("call_id"),
            "output": text,
            "status": "completed",
        }
    # A reasoning item (the only other kind the input accepts): as it was sent, with an id.
    return {**item, "id": item.get("id") or new_id("rs"), "summary": item.get("summary") or []}


def item_resources(given: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A request's ``input`` (text or items, already checked) as listed items."""
    if isinstance(given, str):
        return [item_resource({"type": "message", "role": "user", "content": given})]
    return [item_resource(item) for item in given]


# --- the store ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredResponse:
    """A kept reply: its response object and the items it read (the kept conversation it continued, then
    its own input), each item with an id."""

    owner: str
    body: dict[str, Any]
    items: tuple[dict[str, Any], ...]

    def conversation(self) -> list[dict[str, Any]]:
        """The items a reply continuing this one reads first: these inputs, then this reply's output."""
        return [*self.items, *self.body["output"]]


class ResponseStore:
    """Kept replies: at most ``capacity`` of them and ``max_bytes`` (as JSON) in all, the oldest dropped
    first; each is found only by its owner. Thread-safe."""

    def __init__(self, capacity: int, max_bytes: int = STORE_BYTES) -> None:
        self.capacity, self.max_bytes = capacity, max_bytes
        self._items: OrderedDict[str, tuple[StoredResponse, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, stored: StoredResponse) -> None:
        """Keep ``stored`` (under its body's id), dropping the oldest past the bounds; one larger than all
        of ``max_bytes`` is not kept."""
        size = json_size(stored.body) + json_size(list(stored.items))
        if self.capacity == 0 or size > self.max_bytes:
            return
        with self._lock:
            self._items[stored.body["id"]] = (stored, size)
            self._bytes += size
            while len(self._items) > self.capacity or self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def get(self, response_id: str, owner: str) -> StoredResponse | None:
        with self._lock:
            kept = self._items.get(response_id)
        return kept[0] if kept is not None and kept[0].owner == owner else None

    def delete(self, response_id: str, owner: str) -> bool:
        """Forget ``response_id``; False when ``owner`` has no such reply."""
        with self._lock:
            kept = self._items.get(response_id)
            if kept is None or kept[0].owner != owner:
                return False
            del self._items[response_id]
            self._bytes -= kept[1]
            return True

    def __len__(self) -> int:
        return len(self._items)


# --- routes -----------------------------------------------------------------------------------------------------


def not_found(store: ResponseStore, response_id: str) -> APIError:
    return APIError(
        404,
        f"Response with id {response_id!r} not found: it never existed, was made by another client, was created "
        f"with store: false, was deleted, or was dropped (this server keeps the latest {store.capacity} replies, "
        "in memory only).",
        param="response_id",
    )


def page(items: list[dict[str, Any]], limit: int, order: str, after: str | None) -> dict[str, Any]:
    """OpenAI's list object of ``items``: ``limit`` of them in ``order``, from the one after ``after``.

    Raises:
        APIError: 400 when ``after`` is not one of the items.
    """
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise APIError(400, f"after={after!r} is not the id of one of this response's input items", param="after")
        start = ids.index(after) + 1
    data = ordered[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(ordered),
    }


def add_stored_routes(store: ResponseStore, v1: APIRouter) -> None:
    """Add ``GET`` / ``DELETE /responses/{response_id}`` and ``GET /responses/{response_id}/input_items``."""

    def kept(response_id: str, request: Request) -> StoredResponse:
        stored = store.get(response_id, owner_of(request))
        if stored is None:
            raise not_found(store, response_id)
        return stored

    @v1.get("/responses/{response_id}", responses=KEPT_RESPONSES, summary="A reply this server kept")
    async def retrieve(response_id: str, request: Request, stream: bool = False) -> Any:
        if stream:
            raise APIError(
                400,
                "Streaming a kept response again is not served: leave stream out to get the response object.",
                param="stream",
            )
        return kept(response_id, request).body

    @v1.delete("/responses/{response_id}", responses=KEPT_RESPONSES, summary="Forget a reply this server kept")
    async def delete(response_id: str, request: Request) -> Any:
        if not store.delete(response_id, owner_of(request)):
            raise not_found(store, response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    @v1.get(
        "/responses/{response_id}/input_items",
        responses=KEPT_RESPONSES,
        summary="The input items a kept reply read",
    )
    async def input_items(
        response_id: str,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 20,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
    ) -> Any:
        return page(list(kept(response_id, request).items), limit, order, after)
