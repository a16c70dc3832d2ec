"""The chat engine: one model shared by every caller (UI sessions, API requests, ``Qwen3ChatBot``).

* Lazy loading: constructing an engine is cheap; the model loads on first use, or in the
  background after ``start_loading()``, reporting progress.
* Continuous batching: one worker thread owns the model and runs up to ``max_batch`` requests at
  once, each advancing by one token per model step (``scheduler.Batch``); a new request joins at
  the next step, a finished or cancelled one leaves at once. Behind the running requests waits a
  bounded queue, served in fair turns by client (``fair_queue.FairQueue``); a full queue raises
  ``QueueFullError`` at once instead of piling up.
* Every request has its own stop signal; a cancelled request stops within one model step. An error
  inside one generation ends that request only.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import ChatbotError, DeviceFaultError, GenerationError, QueueFullError
from ..model.device import is_sticky_cuda_fault
from ..model.loader import LoadedModel, load_model
from ..settings import Settings
from .batching import install_row_attention
from .cpu_threads import release_openmp_team
from .fair_queue import FairQueue
from .generation import GenerationResult, PrefixCache
from .jobs import LOCAL_CLIENT, EngineEvent, Failed, Finished, Job, Queued, TextDelta, cancelled_result
from .limits import ReplyLimits
from .request import ActiveRequest
from .sampling import SamplingOptions
from .scheduler import CPU_PREFILL_CHUNK, GPU_PREFILL_CHUNK, STEP_ERRORS, Batch, as_generation_error, device_fault
from .shutdown import LoadStopped, StoppableProgress, close_at_exit

__all__ = ["ChatEngine", "EngineEvent", "Failed", "Finished", "Job", "Queued", "TextDelta"]
log = logging.getLogger(__name__)
CANCEL_POLL_SECONDS = 0.2  # how often a waiting request checks its stop signal
CPU_MAX_BATCH = 8  # chosen from `python -m chatbot bench --concurrency` (README: Serving several people)
GPU_MAX_BATCH = 32
QUEUE_FULL_RETRY_SECONDS = 1.0  # run_batch waits this long for a place when other clients fill the queue


def default_max_batch(device_type: str) -> int:
    return CPU_MAX_BATCH if device_type == "cpu" else GPU_MAX_BATCH


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
        max_batch: int | None = None,
        client_limit: int = 0,
        prefill_chunk: int | None = None,
        max_new_tokens_cap: int | None = None,
        max_generation_seconds: float | None = None,
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
        self.requested_max_batch = max_batch
        self.requested_prefill_chunk = prefill_chunk
        # Server-side bounds on one reply, whatever it asks for (None: none; the context still bounds tokens).
        self.limits = ReplyLimits(max_new_tokens_cap, max_generation_seconds)
        self._max_batch: int | None = None
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self.progress = StoppableProgress()  # close() stops a load in progress at its next step
        self._loaded: LoadedModel | None = None
        self._load_error: BaseException | None = None
        self._fault: DeviceFaultError | None = None  # the GPU faulted: nothing more runs in this process
        self._load_lock = threading.Lock()
        self._load_thread: threading.Thread | None = None
        self._queue = FairQueue(queue_size, client_limit)
        self._running: list[Job] = []  # in the batch now (paused ones wait in the queue, state kept)
        self._states: dict[int, ActiveRequest] = {}
        self._batch: Batch | None = None
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
            max_batch=settings.max_batch,
            client_limit=settings.client_limit,
            prefill_chunk=settings.prefill_chunk,
            max_new_tokens_cap=settings.max_new_tokens_cap,
            max_generation_seconds=settings.max_generation_seconds,
        )

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, **kwargs: Any) -> ChatEngine:
        """An engine over a model already loaded (several engines may share it, one running at a time)."""
        engine = cls(str(loaded.checkpoint.path), **kwargs)
        release_openmp_team()  # the caller loaded it: its thread's team goes (see cpu_threads)
        engine._loaded = loaded
        engine._max_batch = engine.requested_max_batch or default_max_batch(loaded.device.type)
        return engine

    # --- loading ------------------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """ "not loaded", "loading", "ready" or "failed" (the load failed, or the GPU faulted while serving)."""
        if self._fault is not None:
            return "failed"
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
        """Why the engine cannot serve: the load's error, or the GPU fault that ended serving."""
        return self._fault or self._load_error

    def start_loading(self) -> None:
        """Load the model in a background thread (no-op if loading or loaded)."""
        with self._cv:
            if self._loaded is not None:
                return
            if self._closed:  # callers waiting for the model (wait_for_model) learn why it never comes
                self._load_error = self._load_error or ChatbotError("The engine is shut down.")
                return
            if self._load_thread is not None and self._load_thread.is_alive():
                return
            close_at_exit(self)
            self._load_thread = threading.Thread(target=self._load_quietly, name="model-loader", daemon=True)
            self._load_thread.start()

    def _load_quietly(self) -> None:
        try:
            self.load()
        except (ChatbotError, RuntimeError, OSError) as exc:
            if self._closed:  # a script that ended, or Ctrl+C, before the model was needed
                log.info("Loading %s stopped: the engine was closed", self.source)
            else:
                log.error("Loading %s failed: %s", self.source, exc)

    def load(self) -> LoadedModel:
        """Load the model now (or wait for the load in progress); raises the load error if it failed."""
        if self._loaded is not None:
            return self._loaded
        with self._load_lock:
            if self._loaded is None:
                self._load_error = None
                try:
                    loaded = load_model(self.source, progress=self.progress, **self._load_kwargs)
                except LoadStopped:
                    self._load_error = ChatbotError("The engine was closed before the model finished loading.")
                    raise self._load_error from None
                except BaseException as exc:
                    self._load_error = exc
                    raise
                finally:
                    release_openmp_team()  # the worker's team is then the only one (see cpu_threads)
                self._max_batch = self._max_batch or self.requested_max_batch or default_max_batch(loaded.device.type)
                self._loaded = loaded
        return self._loaded

    # --- requests -----------------------------------------------------------------------------------------

    @property
    def max_batch(self) -> int:
        """Requests that run at once (before the model is loaded: the flag's value, else 1)."""
        return self._max_batch or self.requested_max_batch or 1

    def queue_depth(self) -> int:
        """Requests waiting for a running slot (not counting running or paused ones)."""
        with self._cv:
            return len(self._queue)

    def occupancy(self) -> dict[str, int]:
        """Running, waiting and paused requests now, and the most that run at once."""
        with self._cv:
            return {
                "running": len(self._running),
                "waiting": len(self._queue),
                "paused": self._queue.paused,
                "max_batch": self.max_batch,
            }

    @property
    def busy(self) -> bool:
        """Something runs, or is paused mid-reply."""
        return bool(self._running) or bool(self._queue.paused)

    def submit(
        self,
        prompt_ids: list[int],
        options: SamplingOptions,
        cancel: threading.Event | None = None,
        client: str = LOCAL_CLIENT,
    ) -> Job:
        """Queue a generation; its events arrive on ``job.events``.

        ``client`` groups requests for fair turns (see ``fair_queue``).

        Raises:
            QueueFullError: ``queue_size`` requests are already waiting, or ``client`` has its limit waiting.
            InvalidRequestError: ``options.max_new_tokens`` is over ``max_new_tokens_cap``.
        """
        self.limits.check_max_new_tokens(options.max_new_tokens, "max_new_tokens")
        job = Job(list(prompt_ids), options, cancel or threading.Event(), next(self._ids), client)
        with self._cv:
            if self._fault is not None:
                raise DeviceFaultError(self._fault.message, fix=self._fault.fix)
            if self._closed:
                raise ChatbotError("The engine is shut down.")
            self._queue.add(job)
            self._ensure_worker()
            self._send_positions()
            self._cv.notify_all()
        return job

    def run_batch(
        self,
        prompts: list[list[int]],
        options: SamplingOptions,
        cancel: threading.Event | None = None,
        client: str = LOCAL_CLIENT,
    ) -> list[GenerationResult]:
        """Replies to ``prompts``, in order: each is its own request in the continuous batch.

        At most ``max_batch`` (and the client's queue limit) are submitted at a time, the next one as
        soon as one ends, so a long list neither fills the queue nor holds the model while others wait:
        it takes fair turns like any client. A full queue (other clients) is waited out. ``cancel``
        stops them all (their results say "cancelled"). Raises the first error a request met.
        """
        cancel = cancel or threading.Event()
        window = max(1, min(len(prompts), self.max_batch, self._queue.client_limit))
        with ThreadPoolExecutor(max_workers=window, thread_name_prefix="batch-request") as pool:
            try:
                return list(pool.map(lambda prompt: self._reply(list(prompt), options, cancel, client), prompts))
            except BaseException:  # Ctrl+C or an error: the rest stop now (leaving the pool waits for them)
                cancel.set()
                raise

    def _reply(
        self, prompt: list[int], options: SamplingOptions, cancel: threading.Event, client: str
    ) -> GenerationResult:
        while True:
            try:
                for event in self.stream(prompt, options, cancel, client):
                    if isinstance(event, Finished):
                        return event.result
                    if isinstance(event, Failed):
                        raise event.error
            except QueueFullError:
                if cancel.wait(QUEUE_FULL_RETRY_SECONDS):
                    return cancelled_result(Job(prompt, options, cancel))
                continue
            raise GenerationError("the request ended without a result")

    def stream(
        self,
        prompt_ids: list[int],
        options: SamplingOptions,
        cancel: threading.Event | None = None,
        client: str = LOCAL_CLIENT,
    ) -> Iterator[EngineEvent]:
        """Submit and yield events until the request ends; leaving early cancels it."""
        job = self.submit(prompt_ids, options, cancel, client=client)
        done = False
        try:
            while True:
                try:
                    event = job.events.get(timeout=CANCEL_POLL_SECONDS)
                except queue.Empty:
                    # A request cancelled while it waits leaves the queue now, not when its turn comes.
                    if not (job.cancel.is_set() and self._withdraw(job)):
                        continue
                    event = Finished(cancelled_result(job))
                done = isinstance(event, Finished | Failed)
                yield event
                if done:
                    return
        finally:
            if not done:
                job.cancel.set()

    def _withdraw(self, job: Job) -> bool:
        """Take a waiting job out of the queue (False when it runs, is paused mid-reply, or ran)."""
        with self._cv:
            if job not in self._queue or self._queue.is_paused(job):
                return False
            self._queue.remove(job)
            self._send_positions()
        return True

    def _send_positions(self) -> None:
        """Tell each waiting job its place when it changed (call with the lock held); 1 = next to run."""
        free = max(0, self.max_batch - len(self._running))
        for place, job in enumerate(self._queue.order(job.client for job in self._running), start=1):
            position = place - free
            if position >= 1 and position != job.position and not self._queue.is_paused(job):
                job.position = position
                job.events.put(Queued(position))

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            close_at_exit(self)  # a daemon thread, so an idle one never keeps a script alive; see shutdown.py
            self._worker = threading.Thread(target=self._work, name="generation-worker", daemon=True)
            self._worker.start()

    # --- the worker -------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cv:
                idle = not self._queue.jobs() and not self._running and not self._closed
            if idle:  # nothing to run: this thread's OpenMP team goes back (see cpu_threads)
                release_openmp_team()
            with self._cv:
                while not self._queue.jobs() and not self._running and not self._closed:
                    self._cv.wait()
                if self._closed and not self._queue.jobs() and not self._running:
                    return
            batch = self._ready_batch()
            if batch is None:
                continue
            try:
                for job in self._admit():
                    self._start(job, batch)
                batch.round()
            except Exception as exc:  # a bug here must not leave every caller waiting forever
                if isinstance(exc, DeviceFaultError) or is_sticky_cuda_fault(exc):
                    self._stop_serving(batch, device_fault(exc))
                    return
                log.exception("The generation worker failed; ending the running requests")
                self._fail_running(batch, exc)

    def _stop_serving(self, batch: Batch, fault: DeviceFaultError) -> None:
        """After a sticky GPU fault: every running and waiting request fails with the restart advice, new
        ones are refused with it, and ``status`` says "failed" (``/health`` with it)."""
        log.error("%s", fault)
        with self._cv:
            self._fault = fault
            waiting = [job for job in self._queue.jobs() if not self._queue.is_paused(job)]
            for job in waiting:
                self._queue.remove(job)
        self._fail_running(batch, fault)
        for job in waiting:
            job.events.put(Failed(fault))

    def _fail_running(self, batch: Batch, exc: Exception) -> None:
        with self._cv:
            jobs = list(self._running)
            for job in self._queue.jobs():
                if self._queue.is_paused(job):
                    self._queue.remove(job)
                    jobs.append(job)
            self._running.clear()
            self._states.clear()
            batch.requests.clear()
            self._send_positions()
        for job in jobs:
            job.events.put(Failed(as_generation_error(exc)))

    def _ready_batch(self) -> Batch | None:
        """The batch of the loaded model; loads it first (a load error fails the next waiting request)."""
        if self._batch is not None:
            return self._batch
        if self._closed:  # shut down before the model was needed: the waiting requests end, nothing loads
            with self._cv:
                jobs = self._queue.jobs()
                for job in jobs:
                    self._queue.remove(job)
            for job in jobs:
                job.events.put(Finished(cancelled_result(job)))
            return None
        try:
            loaded = self.load()
        except (ChatbotError, RuntimeError, OSError, ValueError) as exc:
            with self._cv:
                job = self._queue.pop(Counter())
            if job is not None:
                job.events.put(Failed(as_generation_error(exc)))
            return None
        self._batch = self._make_batch(loaded)
        return self._batch

    def _make_batch(self, loaded: LoadedModel) -> Batch:
        batched = install_row_attention(loaded.model)
        size = self._max_batch or self.requested_max_batch or default_max_batch(loaded.device.type)
        if not batched and size > 1:
            log.warning(
                "The attention implementation %r cannot be batched row by row: requests run one at a time",
                loaded.model.config._attn_implementation,
            )
            size = 1
        chunk = self._prefill_chunk(loaded)
        with self._cv:
            self._max_batch = size
        log.info("Continuous batching: up to %d requests at once, prompts read %d tokens per step", size, chunk)
        return Batch(loaded.model, loaded.device, chunk, self._release)

    def _prefill_chunk(self, loaded: LoadedModel) -> int:
        cpu = loaded.device.type == "cpu"
        return self.requested_prefill_chunk or (CPU_PREFILL_CHUNK if cpu else GPU_PREFILL_CHUNK)

    def run_on_this_thread(self, prompt_ids: list[int], options: SamplingOptions) -> GenerationResult:
        """Run one request to its end on the calling thread, through the worker's own code (a ``Batch``
        of one request, round after round), and return its result.

        For measurements only: ``bench`` times it beside the same request served by the worker thread,
        to show what decoding on that thread costs. The engine must be idle meanwhile.

        Raises:
            ChatbotError: the engine is running or queueing requests; or the request's own error.
        """
        loaded = self.load()
        with self._cv:
            if self._running or self._queue.jobs():
                raise ChatbotError("The engine is serving requests; measure on the calling thread while it is idle.")
        job = Job(list(prompt_ids), options, threading.Event(), next(self._ids))
        batch = Batch(loaded.model, loaded.device, self._prefill_chunk(loaded), lambda request: None)
        batch.add(self._active_request(job, loaded))
        try:
            while batch.requests:
                batch.round()
        finally:
            release_openmp_team()  # as the worker does when idle: one team in the process (cpu_threads)
        while True:
            event = job.events.get_nowait()
            if isinstance(event, Finished):
                return event.result
            if isinstance(event, Failed):
                raise event.error

    def _active_request(self, job: Job, loaded: LoadedModel) -> ActiveRequest:
        """``job``'s state in a batch: its prompt to prefill (after the cached prefix), sampler and stops."""
        return ActiveRequest(
            job,
            loaded.model.config,
            loaded.tokenizer,
            loaded.eos_token_ids,
            loaded.device,
            self.prefix_cache,
            time_limit=self.limits.max_generation_seconds,
        )

    def _admit(self) -> list[Job]:
        """Move waiting jobs into free slots, pausing a request of a client above its share (see fair_queue)."""
        with self._cv:
            starting = []
            for job in self._queue.jobs():  # a paused request that was cancelled ends now, in a slot or not
                if self._queue.is_paused(job) and job.cancel.is_set():
                    self._queue.remove(job)
                    self._running.append(job)
                    starting.append(job)
            limit = self.max_batch
            counts = Counter(job.client for job in self._running)
            while len(self._running) < limit and (job := self._queue.pop(counts)) is not None:
                self._running.append(job)
                counts[job.client] += 1
                starting.append(job)
            while self._queue.paused < limit and (greedy := self._queue.over_share(counts, limit)) is not None:
                started = [j for j in self._running if j.client == greedy and j.id in self._states]
                if not started:
                    break
                victim = started[-1]
                self._running.remove(victim)
                self._queue.pause(victim)
                victim.events.put(Queued(1, paused=True))
                self._batch.remove(self._states[victim.id])
                counts[greedy] -= 1
                job = self._queue.pop(counts)
                self._running.append(job)
                counts[job.client] += 1
                starting.append(job)
            if starting:
                self._send_positions()
            return starting

    def _start(self, job: Job, batch: Batch) -> None:
        if job.id in self._states:  # resumes after a pause
            batch.add(self._states[job.id])
            return
        if job.cancel.is_set():
            job.events.put(Finished(cancelled_result(job)))
            self._release_job(job)
            return
        try:
            state = self._active_request(job, self.load())
        except (ChatbotError, *STEP_ERRORS) as exc:
            if not isinstance(exc, ChatbotError):
                log.exception("Generation failed")
            job.events.put(Failed(as_generation_error(exc)))
            self._release_job(job)
            return
        self._states[job.id] = state
        batch.add(state)

    def _release(self, request: ActiveRequest) -> None:
        self._release_job(request.job)

    def _release_job(self, job: Job) -> None:
        with self._cv:
            self._states.pop(job.id, None)
            if job in self._running:
                self._running.remove(job)
            self._send_positions()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel the running and waiting requests, stop a load in progress, and wait (up to ``timeout``)
        for the worker and loader threads to end. Later requests raise ``ChatbotError``; closing twice is fine.

        Waiting matters at exit: a thread still inside torch when the interpreter shuts down aborts the
        process (see ``shutdown.py``, which calls this for every engine at exit).
        """
        with self._cv:
            self._closed = True
            for job in [*self._queue.jobs(), *self._running]:
                job.cancel.set()
            self._cv.notify_all()
            threads = [t for t in (self._worker, self._load_thread) if t is not None]
        self.progress.stop()
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning(
                    "The engine's %s thread is still busy after %.0f s; leaving it running", thread.name, timeout
                )
