"""What the engine's callers and its worker exchange: a queued ``Job`` and the events it receives."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ChatbotError
from .generation import GenerationResult, GenerationStats
from .sampling import SamplingOptions, TokenLogprob

if TYPE_CHECKING:
    from .shared_prefill import SharedPrefill

LOCAL_CLIENT = "local"  # the client key of requests that do not name one (a script using the engine)


@dataclass(frozen=True)
class Queued:
    position: int  # 1 = next to run
    paused: bool = False  # a reply stopped mid-way to give another client a turn; it resumes where it stopped


@dataclass(frozen=True)
class TextDelta:
    text: str
    # With options.logprobs: the records of the tokens whose text this piece completes (a token held back
    # as part of a character arrives with the piece that finishes it).
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    result: GenerationResult


@dataclass(frozen=True)
class Failed:
    error: ChatbotError


EngineEvent = Queued | TextDelta | Finished | Failed


@dataclass(eq=False)
class Job:
    prompt_ids: list[int]
    options: SamplingOptions
    cancel: threading.Event
    id: int = 0
    client: str = LOCAL_CLIENT  # fairness key: API key or address, browser session, ...
    submitted: float = field(default_factory=time.perf_counter)
    events: queue.Queue[EngineEvent] = field(default_factory=queue.Queue)
    position: int = 0  # the last queue position sent
    token_times: list[float] | None = None  # when a list (the bench sets one): when each new token came
    shared: SharedPrefill | None = None  # the choices of one request (n > 1) read their prompt once


def cancelled_result(job: Job) -> GenerationResult:
    queue_seconds = time.perf_counter() - job.submitted
    return GenerationResult("", (), "cancelled", GenerationStats(len(job.prompt_ids), queue_seconds=queue_seconds))
