"""``Qwen3ChatBot``: a multi-turn chat with a Qwen3 model, in a few lines of Python.

from chatbot import Qwen3ChatBot
bot = Qwen3ChatBot("Qwen/Qwen3-0.6B-FP8")          # cheap: the model loads on first use
reply = bot.chat("Hello!", enable_thinking=True)  # {"thinking", "answer", "full_response", ...}
for event in bot.stream_chat("And in French?"):   # ThinkingDelta / AnswerDelta / ... / ChatDone
    ...
remote = Qwen3ChatBot(backend="http://gpu-box:8000/v1")  # the same over vLLM, SGLang, llama-server...

with Qwen3ChatBot("Qwen/Qwen3-0.6B-FP8") as bot:   # closes the engine at the end of the block
    ...

Leaving a ``stream_chat`` loop early (``break``, an exception, Ctrl+C, the generator collected) stops
that reply's generation at once; its exchange is not added to the history. A script may also simply
end: whatever is still generating or loading is stopped before the interpreter exits (``close()``
runs for every engine at exit; see ``engine/shutdown.py``).
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Generator
from types import TracebackType
from typing import Any

from ..engine.engine import ChatEngine
from ..errors import ChatbotError
from ..model.loader import LoadedModel
from ..model.precision import PrecisionDecision
from ..settings import DEFAULT_MODEL
from .backend import Backend, BackendInfo
from .backends import as_backend
from .conversation import Conversation
from .events import ChatDone, ChatEvent
from .remote import RemoteBackend
from .reply import batch_reply
from .request import ChatRequest


def leave_unfinished(stream: tuple[weakref.ref[Generator[ChatEvent, None, None]], int] | None) -> None:
    """Close ``stream`` (a ``stream_chat`` generator and the thread that made it) if this thread left it
    part-way: it holds the bot's history lock, so a new reply waiting for it would wait forever. A stream
    not started yet, finished, or another thread's is left alone (another thread's reply is waited for)."""
    if stream is None or stream[1] != threading.get_ident():
        return
    generator = stream[0]()
    if generator is not None and inspect.getgeneratorstate(generator) == inspect.GEN_SUSPENDED:
        generator.close()


class Qwen3ChatBot:
    """A conversation with a Qwen3 model: history, thinking mode, streaming.

    Args:
        model_path: hub id or local checkpoint folder.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps".
        precision: "auto", "fp8", "int8", "fp16", "bf16", "fp32"; None reads ``QWEN_PRECISION`` (default auto).
        system_prompt: sent first in every prompt; never dropped when the history is trimmed.
        engine: share an existing engine (and its loaded model), or any ``chat.backend.Backend``, instead
            of creating one.
        backend: another OpenAI-compatible server instead of a local model: its /v1 URL or a
            ``RemoteBackend`` (then ``model_path``, ``device``, ``precision`` are not used).
        load: "lazy" (on first use), "background" (start now in a thread) or "now" (block here).
        **engine_kwargs: max_context, gpu_memory_limit, queue_size, prefix_cache_tokens, trust_remote_code.

    Use it in a ``with`` block, or call ``close()``, to stop its engine when done (a script that just
    ends is fine too: engines are closed at exit).
    """

    def __init__(
        self,
        model_path: str = DEFAULT_MODEL,
        device: str = "auto",
        precision: str | None = None,
        *,
        system_prompt: str = "",
        engine: ChatEngine | Backend | None = None,
        backend: str | RemoteBackend | None = None,
        load: str = "lazy",
        **engine_kwargs: Any,
    ) -> None:
        # close() stops what this bot created; an engine or backend object passed in is the caller's.
        self._owns_engine = isinstance(backend, str) or (backend is None and engine is None)
        if isinstance(backend, str):
            backend = RemoteBackend(backend)
        # ``engine`` is what was given or made (a ChatEngine or a backend); ``backend`` answers.
        self.engine: ChatEngine | Backend = (
            backend or engine or ChatEngine(model_path, device=device, precision=precision, **engine_kwargs)
        )
        self.backend: Backend = as_backend(self.engine)
        self.conversation = Conversation(system_prompt)
        self._lock = threading.Lock()  # one reply at a time joins the history
        self._streams_lock = threading.RLock()  # re-entrant: a collected stream's cleanup may run anywhere
        self._replying: set[threading.Event] = set()  # the cancel signals of the replies in progress
        # The newest stream_chat generator and the thread that started it (see leave_unfinished).
        self._last_stream: tuple[weakref.ref[Generator[ChatEvent, None, None]], int] | None = None
        self._closed = False
        if load == "background":
            self.backend.start_loading()
        elif load == "now":
            self.backend.load()
        elif load != "lazy":
            raise ValueError("load must be 'lazy', 'background' or 'now'")

    # --- the loaded model ---------------------------------------------------------------------------------

    def load(self) -> LoadedModel | BackendInfo:
        """Load the model now (no-op when loaded); raises CheckpointError/ModelUnavailableError/PrecisionError.

        With a remote backend: ask the server once and return what it said (``BackendInfo``).
        """
        return self.backend.load()

    def _local(self) -> LoadedModel:
        self.load()
        loaded = self.backend.loaded
        if loaded is None:
            raise ChatbotError(
                f"This bot answers from {self.backend.describe()}: no model, tokenizer or precision "
                "decision is loaded here.",
                fix="Use describe() for what the server reported.",
            )
        return loaded

    @property
    def model(self) -> Any:
        return self._local().model

    @property
    def tokenizer(self) -> Any:
        return self._local().tokenizer

    @property
    def precision(self) -> PrecisionDecision:
        """Mode, device, reason and attempts of the precision decision (loads the model)."""
        return self._local().precision

    def describe(self) -> str:
        """One line on what answers: the precision decision, or the remote server as it reported itself."""
        return self.backend.describe()

    # --- chatting -----------------------------------------------------------------------------------------

    def stream_chat(
        self,
        message: str,
        enable_thinking: bool = False,
        *,
        cancel: threading.Event | None = None,
        **generation_kwargs: Any,
    ) -> Generator[ChatEvent, None, None]:
        """Send ``message`` and stream the reply; the exchange joins the history when it ends.

        Yields Loading, QueuePosition, ThinkingDelta and AnswerDelta events, then one ChatDone.
        Leaving the loop early (``break``, an exception, Ctrl+C, the generator closed or collected) cancels
        the generation at once and leaves the history as it was; so does a new ``stream_chat``/``chat`` call
        from the same thread while this stream is left unfinished. ``cancel``, when given, is set then.
        Raises InvalidRequestError / ContextLengthError (nothing sent, history unchanged),
        QueueFullError, GenerationError; ChatbotError once the bot is closed.
        """
        earlier = self._last_stream
        stream = self._stream(message, enable_thinking, cancel or threading.Event(), generation_kwargs, earlier)
        self._last_stream = (weakref.ref(stream), threading.get_ident())
        return stream

    def _stream(
        self,
        message: str,
        enable_thinking: bool,
        cancel: threading.Event,
        generation_kwargs: dict[str, Any],
        earlier: tuple[weakref.ref[Generator[ChatEvent, None, None]], int] | None,
    ) -> Generator[ChatEvent, None, None]:
        leave_unfinished(earlier)
        with self._lock:
            self._check_open()
            request = ChatRequest.build(
                self.conversation.messages_with(message),
                enable_thinking=enable_thinking,
                limits=self.backend.limits,
                **generation_kwargs,
            )
            events = self.backend.stream(request, cancel)
            with self._streams_lock:
                self._replying.add(cancel)
            finished = False
            try:
                for event in events:
                    if isinstance(event, ChatDone):
                        finished = True
                        self.conversation.add_exchange(message, event)
                    try:
                        yield event
                    except BaseException:  # left early (GeneratorExit, or thrown in): stop generating now
                        if not finished:
                            cancel.set()
                        raise
            finally:
                with self._streams_lock:
                    self._replying.discard(cancel)
                if isinstance(events, Generator):  # at once, not whenever the garbage collector gets to it
                    events.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ChatbotError("This Qwen3ChatBot is closed.", fix="Create a new Qwen3ChatBot to chat again.")

    def chat(self, message: str, enable_thinking: bool = False, **generation_kwargs: Any) -> dict[str, Any]:
        """Send ``message`` and return {"thinking", "answer", "full_response", "finish_reason", "stats"}."""
        done = None
        for event in self.stream_chat(message, enable_thinking, **generation_kwargs):
            if isinstance(event, ChatDone):
                done = event
        assert done is not None  # stream_chat always ends with ChatDone or raises
        return done.as_dict()

    def generate_batch(
        self, prompts: list[str | list[dict[str, str]]], enable_thinking: bool = False, **generation_kwargs: Any
    ) -> list[dict[str, Any]]:
        """Answer several independent prompts in one batch (the chat history is neither used nor changed).

        Each prompt is a user message or a whole list of messages. Returns one dict per prompt:
        thinking, answer, full_response, finish_reason, prompt_tokens, completion_tokens.
        """
        self._check_open()
        system = (
            [{"role": "system", "content": self.conversation.system_prompt}] if self.conversation.system_prompt else []
        )
        conversations = [[*system, {"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
        return batch_reply(self.backend, conversations, enable_thinking=enable_thinking, **generation_kwargs)

    def clear_history(self) -> None:
        self.conversation.clear()

    def get_history(self) -> list[dict[str, Any]]:
        """[{"role": "user", "content"}, {"role": "assistant", "content": answer, "thinking"}, ...]"""
        return self.conversation.to_list()

    def close(self) -> None:
        """Stop this bot: its replies in progress are cancelled, and the engine or remote backend it created
        is shut down (its worker thread joined). An ``engine`` or ``backend`` object passed in stays open for
        its other users. Closing twice is fine; chatting afterwards raises ChatbotError."""
        self._closed = True
        with self._streams_lock:
            replying = list(self._replying)
        for cancel in replying:
            cancel.set()
        if self._owns_engine:
            self.backend.close()

    def __enter__(self) -> Qwen3ChatBot:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
