"""What the engine's callers and its worker exchange: a queued ``Job`` and the events it receives."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from ..errors import ChatbotError
from .generation import GenerationResult, GenerationStats
from .sampling import SamplingOptions

LOCAL_CLIENT = "local"  # the client key of requests that do not name one (a script using the engine)


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


def cancelled_result(job: Job) -> GenerationResult:
    queue_seconds = time.perf_counter() - job.submitted
    return GenerationResult("", (), "cancelled", GenerationStats(len(job.prompt_ids), queue_seconds=queue_seconds))
