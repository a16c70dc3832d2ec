"""Replies asked for but not started (``chatbot.serve.ui_asked``): what a chat switch waits for, and for how long."""

from __future__ import annotations

import threading
import time

from chatbot.serve.ui_asked import AskedReplies, arriving
from chatbot.serve.ui_session import StopSignals


def test_a_reply_arrives_at_its_first_output_or_its_end() -> None:
    asked = AskedReplies()
    asked.expect("tab")
    asked.expect("tab")
    outputs = arriving(iter(["first", "second"]), asked, "tab")
    assert next(outputs) == "first"
    assert asked.pending("tab") == 1  # the first output: this one has started
    assert list(outputs) == ["second"]
    refused = arriving(iter([]), asked, "tab")  # a reply with no output at all (refused) arrives too
    assert list(refused) == []
    assert asked.pending("tab") == 0
    asked.arrived("tab")  # a program calling /chat asked for nothing: nothing to count
    assert asked.pending("tab") == 0


def test_a_switch_waits_for_a_reply_asked_for_before_it_and_detaches_it() -> None:
    stops = StopSignals()
    stops.asked.expect("tab")
    registered = threading.Event()

    def reply() -> None:
        time.sleep(0.2)  # its request is still on its way when the switch comes
        with stops.reply("tab", "old chat") as signal:
            assert signal is not None
            for _ in arriving(iter(["question drawn"]), stops.asked, "tab"):
                registered.set()
                time.sleep(0.1)
            assert signal.discarded == "detached", "the reply must go on in its own chat, not drawn"

    thread = threading.Thread(target=reply)
    thread.start()
    stops.detach("tab", timeout=10)
    assert registered.is_set(), "the switch did not wait for the reply asked for before it"
    assert not stops.running("tab")
    thread.join()


def test_a_reply_asked_for_that_never_comes_is_waited_for_at_most_its_limit() -> None:
    asked = AskedReplies(limit=0.2)
    asked.expect("tab")  # the page closed between the reply's two steps
    started = time.monotonic()
    assert asked.wait("tab", timeout=10) is True  # forgotten after its limit
    assert time.monotonic() - started < 5
    asked.expect("tab")
    assert asked.wait("tab", timeout=0.05) is False
    assert asked.wait("other tab", timeout=10) is True  # another tab's asks are not this one's
