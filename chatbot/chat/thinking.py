"""Splitting Qwen3 output into thinking and answer at ``</think>``.

Qwen3 writes ``<think>\\n...\\n</think>\\n\\n`` before its answer in thinking mode. The tags are
ordinary added tokens (not special), so they survive ``skip_special_tokens``. The parser holds on
real output: a missing opening tag, output cut off inside the thinking (answer empty, thinking
kept), and streaming where a tag arrives split across chunks. With thinking off the whole reply
is the answer: a ``</think>`` the model writes then is text, not a split.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class ThoughtSplit:
    thinking: str
    answer: str
    closed: bool  # whether "</think>" was seen


def split_thinking(text: str, *, expect_thinking: bool = True, cut: bool = False) -> ThoughtSplit:
    """Split a complete reply.

    - Thinking off (``expect_thinking=False``): everything is the answer, tags included as text.
    - With ``</think>``: thinking is what precedes it (without ``<think>``), the answer what follows.
    - Without it: text opening with ``<think>`` was cut off while thinking (all thinking, no
      answer), and so is any reply ``cut`` short (max tokens, Stop) in thinking mode, whose
      opening tag may be in the prompt; otherwise the model answered without thinking.
    """
    if not expect_thinking:
        return ThoughtSplit("", text.strip(), False)
    head, sep, tail = text.partition(THINK_CLOSE)
    if sep:
        return ThoughtSplit(_strip_open(head).strip(), tail.strip(), True)
    if text.lstrip().startswith(THINK_OPEN) or cut:
        return ThoughtSplit(_strip_open(text).strip(), "", False)
    return ThoughtSplit("", text.strip(), False)


def _strip_open(text: str) -> str:
    stripped = text.lstrip()
    return stripped[len(THINK_OPEN) :] if stripped.startswith(THINK_OPEN) else text


class TrimmedChannel:
    """Emits a channel's text with leading and trailing whitespace removed, as the final split has it."""

    def __init__(self) -> None:
        self.started = False
        self.pending = ""

    def push(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        text = self.pending + text
        body = text.rstrip()
        self.pending = text[len(body) :]
        return body


class ThinkingStreamSplitter:
    """Turns streamed text deltas into ("thinking" | "answer", text) pieces.

    The joined pieces of each kind equal ``split_thinking(full_text)`` of the same text, except
    that text streamed as thinking before a missing ``</think>`` is reclassified only by the final
    split (``finish``).
    """

    def __init__(self, expect_thinking: bool, continues: str = "") -> None:
        """``continues``: "thinking" or "answer" when the reply writes on from a message cut there (the
        prompt ends inside it): the stream starts in that part, and its leading spaces are kept, since
        they join it to the text already written."""
        self.expect_thinking = expect_thinking
        self.continues = continues
        self.text = ""
        self._state = continues or "start"  # start -> thinking -> answer
        self._buffer = ""
        self._thinking = TrimmedChannel()
        self._answer = TrimmedChannel()
        if continues:
            (self._thinking if continues == "thinking" else self._answer).started = True

    def feed(self, delta: str) -> list[tuple[str, str]]:
        self.text += delta
        self._buffer += delta
        out: list[tuple[str, str]] = []
        while True:
            if self._state == "start":
                if not self.expect_thinking:
                    self._state = "answer"
                    continue
                head = self._buffer.lstrip()
                if THINK_OPEN.startswith(head) and len(head) < len(THINK_OPEN):
                    break  # could still become "<think>"
                if head.startswith(THINK_OPEN):
                    self._buffer = head[len(THINK_OPEN) :]
                self._state = "thinking"  # with or without the opening tag: thinking until "</think>"
                continue
            if self._state == "thinking":
                head, sep, tail = self._buffer.partition(THINK_CLOSE)
                if sep:
                    self._emit(out, "thinking", head)
                    self._buffer = tail
                    self._state = "answer"
                    continue
                keep = _partial_suffix(self._buffer, THINK_CLOSE)
                self._emit(out, "thinking", self._buffer[: len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep :]
                break
            self._emit(out, "answer", self._buffer)
            self._buffer = ""
            break
        return out

    def _emit(self, out: list[tuple[str, str]], kind: str, text: str) -> None:
        piece = (self._thinking if kind == "thinking" else self._answer).push(text)
        if piece:
            out.append((kind, piece))

    def finish(self, cut: bool = False) -> ThoughtSplit:
        """The final split; ``cut``: the reply ended early (max tokens, Stop), not at its end of turn."""
        if self.continues:
            return continuation_split(self.text, self.continues)
        return split_thinking(self.text, expect_thinking=self.expect_thinking, cut=cut)


def continuation_split(text: str, continues: str) -> ThoughtSplit:
    """Split what a reply wrote on from a message cut in its thinking (``continues`` "thinking") or in its
    answer ("answer"). Leading spaces of the continued part stay: they join it to the text before."""
    if continues == "answer":
        return ThoughtSplit("", text.rstrip(), False)
    head, sep, tail = text.partition(THINK_CLOSE)
    return ThoughtSplit(head.rstrip(), tail.strip(), bool(sep))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a beginning of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
