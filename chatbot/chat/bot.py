"""``Qwen3ChatBot``: a multi-turn chat with a Qwen3 model, in a few lines of Python.

from chatbot import Qwen3ChatBot
bot = Qwen3ChatBot("Qwen/Qwen3-0.6B-FP8")          # cheap: the model loads on first use
reply = bot.chat("Hello!", enable_thinking=True)  # {"thinking", "answer", "full_response", ...}
for event in bot.stream_chat("And in French?"):   # ThinkingDelta / AnswerDelta / ... / ChatDone
    ...
remote = Qwen3ChatBot(backend="http://gpu-box:8000/v1")  # the same over vLLM, SGLang, llama-server...
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
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
        if isinstance(backend, str):
            backend = RemoteBackend(backend)
        # ``engine`` is what was given or made (a ChatEngine or a backend); ``backend`` answers.
        self.engine: ChatEngine | Backend = (
            backend or engine or ChatEngine(model_path, device=device, precision=precision, **engine_kwargs)
        )
        self.backend: Backend = as_backend(self.engine)
        self.conversation = Conversation(system_prompt)
        self._lock = threading.Lock()
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
    ) -> Iterator[ChatEvent]:
        """Send ``message`` and stream the reply; the exchange joins the history when it ends.

        Yields Loading, QueuePosition, ThinkingDelta and AnswerDelta events, then one ChatDone.
        Raises InvalidRequestError / ContextLengthError (nothing sent, history unchanged),
        QueueFullError, GenerationError.
        """
        with self._lock:
            request = ChatRequest.build(
                self.conversation.messages_with(message),
                enable_thinking=enable_thinking,
                limits=self.backend.limits,
                **generation_kwargs,
            )
            for event in self.backend.stream(request, cancel):
                if isinstance(event, ChatDone):
                    self.conversation.add_exchange(message, event)
                yield event

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
        self.backend.close()
