"""``RemoteBackend``: replies from another OpenAI-compatible server, nothing loaded here.

``--backend URL`` puts the web chat, the API, ``Qwen3ChatBot(backend=...)`` and the terminal chat in
front of vLLM, SGLang, llama.cpp's ``llama-server`` or another copy of this app. It is a
``chat.backend.Backend``, as the model loaded here is: ``stream(request, cancel)`` sends a
``ChatRequest`` with the official ``openai`` client, and this app's bounds on one reply
(``--max-new-tokens-cap``, ``--max-generation-seconds``) hold as they do locally.

* Requests stream from the server on a private event loop (one thread); Stop cancels the request's
  task, which closes its connection at once, so the server sees the cancel and frees its slot.
* A watcher asks ``GET /v1/models`` when started, then every ``RECHECK_SECONDS`` while the server
  answers, and with backoff (1, 2, 4 ... 30 s) while it does not; ``info()`` is what it learnt
  (model, ``max_model_len`` when the server reports it, reachability, the last error).
* A web chat conversation longer than the server's context loses its oldest whole turns as with a local
  model, worked out from the server's reported context and its refusal, with at most one retry
  (``remote_trim.py``).
* At most ``max_batch`` requests are sent at once; up to ``queue_size`` more wait here with their
  position, and beyond that a request is refused (``QueueFullError``; see ``remote_slots.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import openai

from ..engine.limits import ReplyLimits
from ..engine.shutdown import close_at_exit
from ..errors import BackendError, ChatbotError, ContextLengthError
from .backend import BackendInfo, BackendStatus
from .events import ChatDone, ChatEvent
from .prompt import thinking_is_open
from .remote_slots import RemoteSlots
from .remote_stream import RemoteReply, backend_error, remote_messages, request_body
from .remote_trim import leave_out_what_cannot_fit, trim_to_report
from .request import ChatRequest

__all__ = ["BackendInfo", "RemoteBackend"]

log = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
RECHECK_SECONDS = 15.0  # how often a server that answers is asked again (for /health and the badge)
PROBE_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 600.0  # between two chunks: a long prompt on a busy server can take minutes
CANCEL_POLL_SECONDS = 0.2
DEFAULT_MAX_IN_FLIGHT = 64  # requests sent at once; the server batches them


def one_line(error: BaseException) -> str:
    return str(error).replace("\nFix: ", " Fix: ")


def drop_oldest_turn(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int] | None:
    """``messages`` without their oldest whole turn (a user message and what answered it), and how many
    messages that was; None when only system messages and the newest user message are left."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    if first >= last_user:
        return None
    end = first + 1
    while end < last_user and messages[end]["role"] != "user":
        end += 1
    return messages[:first] + messages[end:], end - first


class ConnectProgress:
    """The 'loading' progress the page shows until the server first answers."""

    def __init__(self, url: str) -> None:
        self.url = url

    def snapshot(self) -> tuple[str, float]:
        return f"connecting to {self.url}", 0.0


class RemoteBackend:
    """See the module docstring. Thread-safe: the web chat and the API share one."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        precision: str | None = None,
        max_batch: int | None = None,
        queue_size: int = 16,
        limits: ReplyLimits | None = None,
    ) -> None:
        self.url = url
        # The server's bounds on one reply (--max-new-tokens-cap, --max-generation-seconds), held here
        # as for a local model: the remote server may allow more.
        self.limits = limits or ReplyLimits()
        self.configured_model = model
        self.max_batch = max_batch or DEFAULT_MAX_IN_FLIGHT
        self.queue_size = queue_size
        self.progress = ConnectProgress(url)
        self.loaded = None  # nothing is loaded here: no local tokenizer, no context meter
        self._info = BackendInfo(url, model=model, precision=precision)
        self._checked = threading.Event()
        self.slots = RemoteSlots(self.max_batch, queue_size)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="remote-backend", daemon=True)
        self._thread.start()
        close_at_exit(self)  # its requests end and the loop stops before the interpreter exits
        # The key is sent as a bearer token; "none" to servers that want none (the client insists on one).
        self._client = openai.AsyncOpenAI(
            base_url=url,
            api_key=api_key or "none",
            max_retries=0,
            timeout=openai.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
        )
        self._watcher: Any = None
        self._nudge: asyncio.Event | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> RemoteBackend:
        key = settings.backend_api_key.get_secret_value() if settings.backend_api_key is not None else None
        return cls(
            settings.backend,
            api_key=key,
            model=settings.backend_model,
            precision=settings.backend_precision,
            max_batch=settings.max_batch,
            queue_size=settings.queue_size,
            limits=ReplyLimits.from_settings(settings),
        )

    # --- what the server is -------------------------------------------------------------------------------

    def info(self) -> BackendInfo:
        return self._info

    @property
    def model_name(self) -> str | None:
        return self._info.model

    def _state(self) -> str:
        """ "not loaded" (not started), "loading" (first answer pending), "ready" or "failed" (unreachable)."""
        if self._watcher is None:
            return "not loaded"
        info = self._info
        if info.reachable is None:
            return "loading"
        return "ready" if info.reachable and info.error is None else "failed"

    def status(self) -> BackendStatus:
        info = self._info
        queue = self.occupancy()
        return BackendStatus(
            state=self._state(),
            stage="connected" if info.reachable else f"connecting to {info.url}",
            fraction=1.0 if info.reachable else 0.0,
            error=info.error,
            settled=False,  # the server may go away and come back: the badge keeps following it
            context_window=info.max_model_len,
            queue={**queue, "size": self.queue_size, "busy": self.busy},
            remote=info,
        )

    def context_window(self) -> int | None:
        return self._info.max_model_len

    @property
    def load_error(self) -> ChatbotError | None:
        info = self._info
        if info.error is None:
            return None
        retry = f" Next try in {info.retry_in:.0f} s." if info.retry_in else ""
        return BackendError(info.error + retry)

    def summary(self) -> str:
        """One line: what serves, as the server reported it."""
        return self.status().summary()

    def describe(self) -> str:
        """Ask the server (a few seconds at most, when not asked yet) and say what serves."""
        self.load()
        return self.summary()

    def start_loading(self) -> None:
        """Start watching the server (no-op when watching)."""
        with self._lock:
            if self._watcher is None and not self.slots.closed:
                self._watcher = asyncio.run_coroutine_threadsafe(self._watch(), self._loop)

    def load(self) -> BackendInfo:
        """Start watching and wait (a few seconds at most) for the server's first answer; returns the info."""
        self.start_loading()
        self._checked.wait(PROBE_TIMEOUT_SECONDS + CONNECT_TIMEOUT_SECONDS)
        return self._info

    async def _watch(self) -> None:
        self._nudge = asyncio.Event()
        delay = RETRY_FIRST_SECONDS
        while True:
            info = await self.probe()
            if info.reachable:
                delay, wait = RETRY_FIRST_SECONDS, RECHECK_SECONDS
            else:
                wait, delay = delay, min(delay * 2, RETRY_MAX_SECONDS)
                self._info = replace(info, retry_in=wait)
            self._checked.set()
            self._nudge.clear()
            with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError itself from Python 3.11 on
                await asyncio.wait_for(self._nudge.wait(), wait)

    async def probe(self) -> BackendInfo:
        """Ask ``GET /v1/models`` once; updates and returns ``info()``."""
        started = time.perf_counter()
        old = self._info
        try:
            page = await self._client.models.list(timeout=PROBE_TIMEOUT_SECONDS)
        except Exception as exc:  # whatever the server sends, the watcher must go on watching
            if not isinstance(exc, openai.APIError):
                log.exception("Reading the model server's GET /v1/models failed")
            text = one_line(backend_error(exc, self.url))
            if old.reachable is not False or old.error != text:
                log.warning("Model server unreachable: %s Retrying with backoff.", text)
            self._info = replace(old, reachable=False, error=text, checked_at=time.time(), retry_in=None)
            return self._info
        cards = list(page.data)
        models = tuple(card.id for card in cards)
        model = self.configured_model or (models[0] if models else None)
        card = next((c for c in cards if c.id == model), None)
        length = getattr(card, "max_model_len", None) if card is not None else None
        error = None
        if not models:
            error = f"The model server at {self.url} lists no models (GET /v1/models)."
        elif card is None:
            error = (
                f"The model server at {self.url} serves {', '.join(models)}, not {model!r}: "
                "fix --backend-model or leave it out."
            )
        if old.reachable is not True or old.error != error:
            log.info("Model server %s answers: %s", self.url, ", ".join(models) or "no models")
        self._info = BackendInfo(
            self.url,
            model,
            models,
            int(length) if isinstance(length, int) else None,
            True,
            error,
            time.time(),
            None,
            round(time.perf_counter() - started, 4),
            old.precision,
        )
        return self._info

    def _heard(self, ok: bool, error: ChatbotError | None = None) -> None:
        """What a request learnt of reachability (called on the event loop)."""
        info = self._info
        if ok and not info.reachable and self._nudge is not None:
            self._nudge.set()  # it answers again: refresh the model info now
        elif not ok and error is not None and info.reachable is not False:
            log.warning("Model server unreachable: %s", error.message)
            self._info = replace(info, reachable=False, error=one_line(error), checked_at=time.time())

    # --- requests -----------------------------------------------------------------------------------------

    def occupancy(self) -> dict[str, int]:
        return self.slots.occupancy()

    @property
    def busy(self) -> bool:
        return self.slots.busy

    def stream(self, request: ChatRequest, cancel: threading.Event | None = None) -> Iterator[ChatEvent]:
        """Stream the reply from the server (see ``chat.backend.Backend.stream``). The request's client is not
        sent: the server schedules requests itself.

        Raises:
            InvalidRequestError, ContextLengthError: the server's 400.
            QueueFullError: too many requests waiting here, or the server answered 429.
            BackendUnavailableError: the server cannot be reached; BackendError: it answered an error.
        """
        clean = list(request.messages)
        thinking = request.thinking
        send_max = self._sends_max_tokens(request)
        cancel = cancel or threading.Event()
        submitted = time.perf_counter()
        if not (yield from self.slots.take(cancel)):
            yield from RemoteReply(thinking, "", submitted).finish(cancelled=True)
            return
        limit = request.limits.max_generation_seconds
        deadline = time.perf_counter() + limit if limit else None  # from the start, not the wait for a slot
        dropped, trimmed = 0, False
        # A continued message is written on in the part it was cut in, as by a local model.
        continued = ("thinking" if thinking_is_open(clean[-1]) else "answer") if request.continues else ""
        context = self._info.max_model_len
        if context and not request.strict_context:  # what certainly cannot fit is not sent at all
            clean, dropped = leave_out_what_cannot_fit(clean, context)
        try:
            while True:
                body = request_body(
                    self._info.model or "",
                    remote_messages(clean),
                    request.options,
                    thinking=thinking,
                    send_max_tokens=send_max,
                    tools=list(request.tools) if request.tools else None,
                    tool_choice=request.tool_choice,
                    parallel_tool_calls=request.parallel_tool_calls,
                    response_format=request.response_format,
                )
                reply = RemoteReply(thinking, continued, submitted)
                reply.queue_seconds = time.perf_counter() - submitted
                reply.dropped_messages = dropped
                started = False
                try:
                    for event in self._stream(body, reply, cancel, deadline):
                        started = True
                        yield event
                    return
                except ContextLengthError as error:
                    if request.fill_context and send_max and not started:
                        # The cap is more than the room the server has left: its context bounds the reply
                        # below the cap already, so the request goes again without max_tokens.
                        send_max = False
                        continue
                    # The web chat's rule, as for a local model: the oldest whole turns make room (never
                    # the system prompt or the new message), worked out once from the server's refusal and
                    # sent once more (remote_trim.py): no tokenizer here, and no request per dropped turn.
                    if request.strict_context or started or trimmed:
                        raise
                    reply_tokens = request.options.max_new_tokens if send_max else 0
                    shorter = trim_to_report(clean, error.message, self._info.max_model_len, reply_tokens)
                    if shorter is None:
                        raise
                    clean, count = shorter
                    dropped += count
                    trimmed = True
        finally:
            self.slots.free()

    def _sends_max_tokens(self, request: ChatRequest) -> bool:
        """Whether ``max_tokens`` goes to the server: always, except for "the room left" (the API with no
        max_tokens) when no cap binds it below the server's context."""
        if not request.fill_context:
            return True
        cap, context = request.limits.max_new_tokens_cap, self._info.max_model_len
        return cap is not None and not (context and cap >= context)

    def batch(self, requests: Sequence[ChatRequest], cancel: threading.Event | None = None) -> list[ChatDone]:
        """One request per item, all at once (up to ``max_batch``): the server batches them."""

        def one(request: ChatRequest) -> ChatDone:
            return next(e for e in self.stream(request, cancel) if isinstance(e, ChatDone))

        with ThreadPoolExecutor(max_workers=max(1, min(len(requests), self.max_batch))) as pool:
            return list(pool.map(one, requests))

    def _stream(
        self, body: dict[str, Any], reply: RemoteReply, cancel: threading.Event, deadline: float | None = None
    ) -> Iterator[ChatEvent]:
        """The events of one request; past ``deadline`` (``time.perf_counter()``) it ends with "length"."""
        out: queue.Queue[tuple[str, Any]] = queue.Queue()
        future = asyncio.run_coroutine_threadsafe(self._pump(body, out), self._loop)
        try:
            while True:
                if cancel.is_set():
                    future.cancel()  # cancels the task: its connection closes and the server stops
                wait = CANCEL_POLL_SECONDS
                if deadline is not None:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        future.cancel()
                        log.info(
                            "remote request stopped at the time limit after %d pieces (--max-generation-seconds)",
                            reply.pieces,
                        )
                        yield from reply.finish(time_limited=True)
                        return
                    wait = min(wait, left)
                try:
                    kind, item = out.get(timeout=wait)
                except queue.Empty:
                    if future.cancelled() and out.empty():  # cancelled before it started
                        kind, item = "cancelled", None
                    else:
                        continue
                if kind == "chunk":
                    yield from reply.feed(item)
                elif kind == "error":
                    raise item
                else:
                    yield from reply.finish(cancelled=kind == "cancelled")
                    return
        finally:
            future.cancel()

    async def _stop_requests(self) -> None:
        """Cancel every request streaming now (each closes its connection), then close the client."""
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.close()

    async def _pump(self, body: dict[str, Any], out: queue.Queue[tuple[str, Any]]) -> None:
        """Stream one request into ``out``: ("chunk", c)..., then ("end"|"cancelled", None) or ("error", e)."""
        try:
            if not body["model"]:  # the server has not been reached yet: ask it which model it serves
                body["model"] = (await self.probe()).model or "default"
            stream = await self._client.chat.completions.create(**body)
            self._heard(True)
            async with stream:  # leaving it (a cancel included) closes the connection
                async for chunk in stream:
                    out.put(("chunk", chunk))
            out.put(("end", None))
        except asyncio.CancelledError:
            out.put(("cancelled", None))
            raise
        except openai.APIError as exc:
            error = backend_error(exc, self.url)
            if isinstance(exc, openai.APIConnectionError):
                self._heard(False, error)
            out.put(("error", error))
        except Exception as exc:  # a bug must reach the waiting caller, or it waits forever
            log.exception("Streaming from the model server failed")
            out.put(("error", backend_error(exc, self.url)))

    def close(self, timeout: float = 10.0) -> None:
        """Stop watching, end the waiting and running requests (they finish "cancelled"), close the
        connections and the event loop. Closing twice is fine; later requests raise ChatbotError."""
        with self._lock:
            if self.slots.closed:
                return
            self.slots.close()
        if self._watcher is not None:
            self._watcher.cancel()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop_requests(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
