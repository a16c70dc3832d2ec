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
            # Started while the switch waits for it: not drawn, not even its first output (the question), which
            # the page could otherwise apply after the switch's own outputs.
            with signal.drawing() as shown_here:
                assert not shown_here, "the reply's first output would be drawn over the chat switched to"
            for _ in arriving(iter(["question saved"]), stops.asked, "tab"):
                registered.set()
                time.sleep(0.1)
            assert signal.discarded == "detached", "the reply must go on in its own chat, not drawn"

    thread = threading.Thread(target=reply)
    thread.start()
    stops.detach("tab", timeout=10)
    assert registered.is_set(), "the switch did not wait for the reply asked for before it"
    assert not stops.running("tab")
    thread.join()
    with stops.reply("tab", "new chat") as signal:  # once the switch is done, the next reply is drawn as usual
        assert signal is not None and not signal.discarded


def test_a_reply_asked_for_that_never_comes_is_waited_for_at_most_its_limit() -> None:
    asked = AskedReplies(limit=0.2)
    asked.expect("tab")  # the page closed between the reply's two steps
    started = time.monotonic()
    assert asked.wait("tab", timeout=10) is True  # forgotten after its limit
    assert time.monotonic() - started < 5
    asked.expect("tab")
    assert asked.wait("tab", timeout=0.05) is False
    assert asked.wait("other tab", timeout=10) is True  # another tab's asks are not this one's


def test_a_reply_that_ended_in_a_chat_left_is_what_opens_while_the_page_has_an_older_save() -> None:
    """A busy page may not have written a left chat's last save when the chat is opened again: the chat opens
    as the reply ended, not as it was mid-reply; a newer copy on the page, or a chat deleted, stays as it is."""
    stops = StopSignals()
    page_copy = {"id": "left", "updated": 100.0, "messages": ["question", "2 tokens, interrupted"]}
    final = '{"id": "left", "updated": 101.0, "messages": ["question", "the whole reply"]}'
    with stops.reply("tab", "left") as signal:
        assert signal is not None
        signal.saving('{"id": "left", "updated": 100.0, "messages": ["question", "2 tokens, interrupted"]}')
        stops.detach("tab", timeout=1)  # the tab opens another chat; the reply goes on
        signal.saving(final)
    assert stops.newer_than_page("tab", "left", page_copy)["messages"][-1] == "the whole reply"
    newer_on_page = page_copy | {"updated": 102.0, "messages": ["question", "the whole reply", "more"]}
    assert stops.newer_than_page("tab", "left", newer_on_page) is newer_on_page
    assert stops.newer_than_page("tab", "left", None) is None  # deleted meanwhile: not brought back
    assert stops.newer_than_page("another tab", "left", page_copy) is page_copy
    assert stops.newer_than_page("tab", "another chat", page_copy) is page_copy

    with stops.reply("tab", "shown") as signal:  # a reply that ended on the screen: the page has it in order
        assert signal is not None
        signal.saving('{"id": "shown", "updated": 101.0, "messages": []}')
    shown_copy = {"id": "shown", "updated": 100.0, "messages": ["as drawn"]}
    assert stops.newer_than_page("tab", "shown", shown_copy) is shown_copy

    stops.ENDED_KEPT_SECONDS = 0.0  # and what a tab that never comes back left is dropped at the next reply's end
    with stops.reply("another tab", "x"):
        pass
    assert stops.newer_than_page("tab", "left", page_copy) is page_copy
    assert not stops._ended
