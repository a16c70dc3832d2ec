"""Fair turns: waiting requests grouped by client and served round-robin.

A client is whoever the front door says it is (an API key or remote address, a browser session).
Three rules keep one client from crowding out the others:

* queue places: one client may have at most ``client_limit`` requests waiting (``--client-limit``;
  by default half the queue), so a flood leaves room for everyone else;
* turns: the next free running slot goes to the waiting client with the fewest running requests,
  ties broken round-robin (the client served longest ago first);
* running slots: while another client waits with fewer than its share (``max_batch`` divided
  among the clients present), a client holding more than its share has its newest request paused
  (``over_share``); the paused request keeps its cache and resumes at the head of its client's line.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable

from ..errors import QueueFullError
from .jobs import Job

RETRY_AFTER_SECONDS = 5


class FairQueue:
    """Waiting jobs by client (see the module docstring); not thread-safe, the engine holds its lock."""

    def __init__(self, size: int, client_limit: int = 0) -> None:
        self.size = size
        self.client_limit = client_limit or max(1, size // 2)
        self._lines: dict[str, deque[Job]] = {}  # in turn order: the first client is served first
        self._paused: set[int] = set()  # ids of jobs paused mid-reply (they hold no queue place)

    def __len__(self) -> int:
        """Waiting requests that hold a queue place (paused ones do not)."""
        return sum(1 for line in self._lines.values() for job in line if job.id not in self._paused)

    def __contains__(self, job: Job) -> bool:
        return job in self._lines.get(job.client, ())

    def jobs(self) -> list[Job]:
        return [job for line in self._lines.values() for job in line]

    @property
    def paused(self) -> int:
        return len(self._paused)

    def add(self, job: Job) -> None:
        """Queue ``job`` at the end of its client's line.

        Raises:
            QueueFullError: the queue is full, or this client already has ``client_limit`` waiting.
        """
        if len(self) >= self.size:
            raise QueueFullError(f"The queue is full ({self.size} requests waiting).", retry_after=RETRY_AFTER_SECONDS)
        line = self._lines.setdefault(job.client, deque())
        if sum(1 for other in line if other.id not in self._paused) >= self.client_limit:
            raise QueueFullError(
                f"The queue is full for this client ({self.client_limit} of its requests already waiting; "
                "other clients keep their places). Wait for a reply before sending more.",
                retry_after=RETRY_AFTER_SECONDS,
            )
        line.append(job)

    def remove(self, job: Job) -> bool:
        line = self._lines.get(job.client)
        if line is None or job not in line:
            return False
        line.remove(job)
        self._paused.discard(job.id)
        if not line:
            del self._lines[job.client]
        return True

    def pause(self, job: Job) -> None:
        """Put a running ``job`` back at the head of its client's line (it keeps its state)."""
        self._lines.setdefault(job.client, deque()).appendleft(job)
        self._paused.add(job.id)

    def is_paused(self, job: Job) -> bool:
        return job.id in self._paused

    def _pick(self, running: Counter[str]) -> str | None:
        """The client whose turn it is: fewest running requests, then longest since its last turn."""
        if not self._lines:
            return None
        return min(self._lines, key=lambda client: running[client])  # min keeps the first of equals

    def pop(self, running: Counter[str]) -> Job | None:
        """The next job to run, given how many each client runs now; its client goes to the back of the turns."""
        client = self._pick(running)
        if client is None:
            return None
        line = self._lines.pop(client)
        job = line.popleft()
        self._paused.discard(job.id)
        if line:
            self._lines[client] = line  # re-inserted: now last in turn order
        return job

    def order(self, running: Iterable[str]) -> list[Job]:
        """Every waiting job in the order it would be served if nothing else changed."""
        counts = Counter(running)
        lines = {client: deque(line) for client, line in self._lines.items()}
        order = []
        while lines:
            client = min(lines, key=lambda c: counts[c])
            line = lines.pop(client)
            order.append(line.popleft())
            counts[client] += 1
            if line:
                lines[client] = line
        return order

    def over_share(self, running: dict[str, int], max_batch: int) -> str | None:
        """A client to pause a request of, so that a waiting client gets its share now; None if fair already."""
        if not self._lines:
            return None
        clients = set(running) | set(self._lines)
        share = max(1, max_batch // len(clients))
        if not any(running.get(client, 0) < share for client in self._lines):
            return None
        greedy = max(running, key=lambda client: running[client], default=None)
        if greedy is None or running[greedy] <= share:
            return None
        return greedy
