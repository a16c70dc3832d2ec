"""The chat engine: one model shared by every caller (UI sessions, API requests, ``Qwen3ChatBot``).

* Lazy loading: constructing an engine is cheap; the model loads on first use, or in the
  background after ``start_loading()``, reporting progress.
* One worker thread owns the model and serves requests first come, first served from a bounded
  queue; a full queue raises ``QueueFullError`` at once instead of piling up.
* Every request has its own stop signal; a cancelled request stops within one model step and the
  next one starts right away. An error inside one generation ends that request only.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import ChatbotError, GenerationError, QueueFullError
from ..model.loader import LoadedModel, LoadProgress, load_model
from ..settings import Settings
from .generation import GenerationResult, GenerationStats, Generator, PrefixCache
from .sampling import SamplingOptions

log = logging.getLogger(__name__)
CANCEL_POLL_SECONDS = 0.2  # how often a waiting request checks its stop signal


@dataclass(frozen=True)
class Queued:
    position: int  # 1 = next to run


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    result: GenerationResult


@dataclass(frozen=True)
class BatchFinished:
    results: list[GenerationResult]


@dataclass(frozen=True)
class Failed:
    error: ChatbotError


EngineEvent = Queued | TextDelta | Finished | BatchFinished | Failed


@dataclass
class Job:
    prompt_ids: list[int]
    options: SamplingOptions
    cancel: threading.Event
    id: int = 0
    submitted: float = field(default_factory=time.perf_counter)
    events: queue.Queue[EngineEvent] = field(default_factory=queue.Queue)
    batch: list[list[int]] | None = None  # several prompts generated together (run_batch)


def _cancelled_result(job: Job) -> GenerationResult:
    queue_seconds = time.perf_counter() - job.submitted
    return GenerationResult("", (), "cancelled", GenerationStats(len(job.prompt_ids), queue_seconds=queue_seconds))


class ChatEngine:
    """Owns the model; see the module docstring."""

    def __init__(
        self,
        source: str,
        *,
        device: str = "auto",
        precision: str | None = None,
        max_context: int | None = None,
        gpu_memory_limit: float | None = None,
        trust_remote_code: bool = False,
        queue_size: int = 16,
        prefix_cache_tokens: int = 16384,
    ) -> None:
        self.source = source
        self._load_kwargs = dict(
            device=device,
            precision=precision,
            max_context=max_context,
            gpu_memory_limit=gpu_memory_limit,
            trust_remote_code=trust_remote_code,
        )
        self.queue_size = queue_size
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self.progress = LoadProgress()
        self._loaded: LoadedModel | None = None
        self._load_error: BaseException | None = None
        self._load_lock = threading.Lock()
        self._load_thread: threading.Thread | None = None
        self._pending: deque[Job] = deque()
        self._running: Job | None = None
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._worker: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, source: str | None = None) -> ChatEngine:
        """An engine for ``source`` (default: ``settings.model``) configured by ``settings``."""
        return cls(
            source or settings.model,
            device=settings.device,
            precision=settings.precision,
            max_context=settings.max_context,
            gpu_memory_limit=settings.gpu_memory_limit,
            trust_remote_code=settings.trust_remote_code,
            queue_size=settings.queue_size,
            prefix_cache_tokens=settings.prefix_cache_tokens,
        )

    # --- loading ------------------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """ "not loaded", "loading", "ready" or "failed"."""
        if self._loaded is not None:
            return "ready"
        if self._load_error is not None:
            return "failed"
        if self._load_lock.locked() or (self._load_thread is not None and self._load_thread.is_alive()):
            return "loading"
        return "not loaded"

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    @property
    def load_error(self) -> BaseException | None:
        return self._load_error

    def start_loading(self) -> None:
        """Load the model in a background thread (no-op if loading or loaded)."""
        with self._cv:
            if self._loaded is not None or (self._load_thread is not None and self._load_thread.is_alive()):
                return
            self._load_thread = threading.Thread(target=self._load_quietly, name="model-loader", daemon=True)
            self._load_thread.start()

    def _load_quietly(self) -> None:
        try:
            self.load()
        except (ChatbotError, RuntimeError, OSError) as exc:
            log.error("Loading %s failed: %s", self.source, exc)

    def load(self) -> LoadedModel:
        """Load the model now (or wait for the load in progress); raises the load error if it failed."""
        if self._loaded is not None:
            return self._loaded
        with self._load_lock:
            if self._loaded is None:
                self._load_error = None
                try:
                    self._loaded = load_model(self.source, progress=self.progress, **self._load_kwargs)
                except BaseException as exc:
                    self._load_error = exc
                    raise
        return self._loaded

    # --- requests -----------------------------------------------------------------------------------------

    def queue_depth(self) -> int:
        """Requests waiting (not counting the one running)."""
        with self._cv:
            return len(self._pending)

    @property
    def busy(self) -> bool:
        return self._running is not None

    def submit(
        self,
        prompt_ids: list[int],
        options: SamplingOptions,
        cancel: threading.Event | None = None,
        batch: list[list[int]] | None = None,
    ) -> Job:
        """Queue a generation (or, with ``batch``, several at once); events arrive on ``job.events``.

        Raises:
            QueueFullError: ``queue_size`` requests are already waiting.
        """
        job = Job(list(prompt_ids), options, cancel or threading.Event(), next(self._ids), batch=batch)
        with self._cv:
            if self._closed:
                raise ChatbotError("The engine is shut down.")
            if len(self._pending) >= self.queue_size:
                raise QueueFullError(f"The queue is full ({self.queue_size} requests waiting).", retry_after=5)
            self._pending.append(job)
            position = len(self._pending)
            self._ensure_worker()
            self._cv.notify_all()
        if position > 1 or self._running is not None:
            job.events.put(Queued(position))
        return job

    def run_batch(
        self, prompts: list[list[int]], options: SamplingOptions, cancel: threading.Event | None = None
    ) -> list[GenerationResult]:
        """Generate replies to ``prompts`` together, waiting its turn in the queue like any request."""
        job = self.submit([], options, cancel, batch=[list(p) for p in prompts])
        while True:
            event = job.events.get()
            if isinstance(event, BatchFinished):
                return event.results
            if isinstance(event, Finished):  # cancelled before its turn came
                return [event.result for _ in prompts]
            if isinstance(event, Failed):
                raise event.error

    def stream(
        self, prompt_ids: list[int], options: SamplingOptions, cancel: threading.Event | None = None
    ) -> Iterator[EngineEvent]:
        """Submit and yield events until the request ends; leaving early cancels it."""
        job = self.submit(prompt_ids, options, cancel)
        done = False
        try:
            while True:
                try:
                    event = job.events.get(timeout=CANCEL_POLL_SECONDS)
                except queue.Empty:
                    # A request cancelled while it waits leaves the queue now, not when its turn comes.
                    if not (job.cancel.is_set() and self._withdraw(job)):
                        continue
                    event = Finished(_cancelled_result(job))
                done = isinstance(event, Finished | Failed)
                yield event
                if done:
                    return
        finally:
            if not done:
                job.cancel.set()

    def _withdraw(self, job: Job) -> bool:
        """Take a waiting job out of the queue (False when it already runs or ran); the rest move up."""
        with self._cv:
            if job not in self._pending:
                return False
            self._pending.remove(job)
            waiting = list(self._pending)
        for position, other in enumerate(waiting, start=1):
            other.events.put(Queued(position))
        return True

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="generation-worker", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed and not self._pending:
                    return
                job = self._pending.popleft()
                self._running = job
                waiting = list(self._pending)
            for position, other in enumerate(waiting, start=1):
                other.events.put(Queued(position))
            try:
                self._serve(job)
            finally:
                with self._cv:
                    self._running = None

    def _serve(self, job: Job) -> None:
        queue_seconds = time.perf_counter() - job.submitted
        if job.cancel.is_set():
            job.events.put(Finished(_cancelled_result(job)))
            return
        try:
            loaded = self.load()
            generator = Generator(
                loaded.model, loaded.tokenizer, loaded.eos_token_ids, loaded.device, self.prefix_cache
            )
            if job.batch is not None:
                job.events.put(BatchFinished(generator.run_batch(job.batch, job.options, job.cancel)))
                return
            result = generator.run(
                job.prompt_ids, job.options, job.cancel, lambda text: job.events.put(TextDelta(text)), queue_seconds
            )
        except ChatbotError as exc:
            job.events.put(Failed(exc))
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            log.exception("Generation failed")
            job.events.put(
                Failed(
                    GenerationError(
                        f"Generation failed: {exc}",
                        fix="Try again; if it keeps failing, run `python -m chatbot doctor`.",
                    )
                )
            )
        else:
            if result.finish_reason == "cancelled":
                log.info(
                    "request %d cancelled after %d of at most %d new tokens",
                    job.id,
                    result.stats.new_tokens,
                    job.options.max_new_tokens,
                )
            job.events.put(Finished(result))

    def close(self, timeout: float = 10.0) -> None:
        """Cancel the running and waiting requests and wait (up to ``timeout``) for the worker to end.

        Waiting matters at exit: a worker thread still inside torch when the interpreter shuts down
        can abort the process.
        """
        with self._cv:
            self._closed = True
            for job in [*self._pending, *([self._running] if self._running else [])]:
                job.cancel.set()
            self._cv.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
