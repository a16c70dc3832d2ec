"""The actions drawn in a message's stats line besides the version switches: Continue under a last answer
that was cut short. Pure values (no Gradio); the page's script (``assets/chat.js``) turns a click on one
into its event, as for the version arrows (Gradio's sanitizer keeps class names, not data attributes).
"""

from __future__ import annotations

from ..chat.conversation import Conversation

CONTINUABLE = ("length", "cancelled", "interrupted")  # how a reply ended when Continue is offered under it
CONTINUE_ACTION = '<span class="qc-action qc-continue" title="Write on from where this answer ended">Continue ▸</span>'


def offers_continue(conversation: Conversation, index: int) -> bool:
    """Whether turn ``index`` shows Continue: the chat's last turn, an answer cut short (not a tool call)."""
    if not conversation.turns or index != len(conversation.turns) - 1:
        return False
    turn = conversation.turns[index]
    cut = turn.stats.get("finish_reason") in CONTINUABLE
    return turn.role == "assistant" and cut and not turn.tool_calls and bool(turn.content or turn.thinking)


def turn_actions(conversation: Conversation) -> dict[int, list[str]]:
    """{turn index: the action spans its stats line shows}."""
    last = len(conversation.turns) - 1
    return {last: [CONTINUE_ACTION]} if offers_continue(conversation, last) else {}
