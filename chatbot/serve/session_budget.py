"""A memory budget for the chats the web chat holds: past it, the least recently used idle tabs' chats are
let go (their browsers keep their copies; such a tab is told to reload).

``--max-sessions`` bounds how many tabs' chats the server holds and ``--max-chat-mb`` each one, but not
their sum: 75 imported chats of 56,000 short messages took the server from 1.15 to 5.26 GB. A held chat
costs its text plus about a kilobyte per message of Python objects (``PER_MESSAGE_BYTES``: 56,000 short
messages took 55 MB);
What the process's memory grows by is several times that count (``HELD_FACTOR``: 24 tabs each holding a chat
at the limits, 2,000 messages and 2 MB, counted 3.8 MB each and grew RSS by 16-18 MB each; Gradio's copies of
the values and the allocator's share are not in the count), so the budget is charged the measured multiple.
``SessionBudget`` adds that up over Gradio's session states every ``SWEEP_SECONDS`` (a session's cost is
counted again only once it has been used since) and, while the sum is over ``--session-memory-mb``, lets go
of the least recently used session that is not running an event.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..chat.conversation import Conversation

log = logging.getLogger(__name__)
PER_MESSAGE_BYTES = 1024  # what one short message costs once held, beyond its text
HELD_FACTOR = 4  # RSS growth per held chat over ``held_bytes`` (measured; see the module docstring)
SWEEP_SECONDS = 2.0
RECOUNT_EVERY = 15  # sweeps between full counts (a state changed in place without a new use is seen then)
MAX_DEPTH = 64


def held_bytes(value: Any, depth: int = 0) -> int:
    """An estimate of what ``value`` (a session's state: conversations, records, lists) costs in memory."""
    if depth > MAX_DEPTH:
        return 0
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, Conversation):
        turns = value.turns
        total = len(value.system_prompt) + PER_MESSAGE_BYTES * len(turns)
        for turn in turns:
            total += len(turn.content) + len(turn.thinking)
            if turn.versions or turn.tool_calls:
                total += held_bytes(turn.versions, depth + 1) + held_bytes(turn.tool_calls, depth + 1)
        return total
    if isinstance(value, dict):
        return PER_MESSAGE_BYTES + sum(held_bytes(item, depth + 1) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(held_bytes(item, depth + 1) for item in value)
    return 0


class SessionBudget:
    """Keeps the chats Gradio holds for ``blocks`` within ``budget`` bytes (see the module docstring)."""

    def __init__(self, blocks: Any, budget: int) -> None:
        self.blocks, self.budget = blocks, budget
        self.costs: dict[str, tuple[Any, int]] = {}  # session -> (its last use when counted, bytes)
        self.stopped = threading.Event()
        self.sweeps = 0

    def start(self) -> None:
        threading.Thread(target=self._run, name="session-budget", daemon=True).start()

    def _run(self) -> None:
        while not self.stopped.wait(SWEEP_SECONDS):
            self.sweep()

    def sweep(self) -> list[str]:
        """Count the held chats and let go of the oldest idle ones while over budget; returns those let go."""
        holder = getattr(self.blocks, "state_holder", None)
        if holder is None:
            return []
        queue = getattr(self.blocks, "_queue", None)
        pending = dict(getattr(queue, "pending_event_ids_session", {}))
        busy = {session for session, events in pending.items() if events}  # Gradio keeps emptied ones
        with holder.lock:
            sessions = list(holder.session_data.items())  # least recently used first
            last_used = dict(holder.time_last_used)
        self.sweeps += 1
        recount = self.sweeps % RECOUNT_EVERY == 0
        total, costs = 0, {}
        for session, state in sessions:
            used = last_used.get(session)
            known = self.costs.get(session)
            if known is not None and known[0] is not None and known[0] == used and not recount:
                cost = known[1]
            else:
                cost = HELD_FACTOR * held_bytes(list(state.state_data.values()))
            # A session running an event may change after it was counted, under the same last use: count it again.
            costs[session] = (None if session in busy else used, cost)
            total += cost
        self.costs = costs
        released = []
        for session, _ in sessions:
            if total <= self.budget:
                break
            if session in busy:
                continue
            with holder.lock:
                if holder.time_last_used.get(session) != last_used.get(session):
                    continue  # used meanwhile: no longer the oldest
                holder.session_data.pop(session, None)
                holder.time_last_used.pop(session, None)
            total -= costs.pop(session)[1]
            released.append(session)
        if released:
            log.warning(
                "Held web chats over --session-memory-mb (%.0f MB): let go of %d least recently used tabs' chats",
                self.budget / 2**20,
                len(released),
            )
        return released
