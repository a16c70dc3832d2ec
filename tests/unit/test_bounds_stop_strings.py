"""The stop-string matcher does work linear in the text streamed, and says what the plain matcher says.

Sixteen long stop strings over a 100k-character reply re-searched the held-back text on every token
(seconds of engine time for one token). The test counts the matcher's steps, not time. Pure; run:
``.venv/bin/python -m pytest tests/test_bounds_stop_strings.py -q``.
"""

from __future__ import annotations

import random

from chatbot.engine.generation import StopStringMatcher


class PlainMatcher:
    """The obvious matcher (search the whole held-back text for every stop string each time): the reference."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops, self.pending = tuple(s for s in stops if s), ""

    def push(self, text: str) -> tuple[str, bool]:
        buffer = self.pending + text
        hits = [i for i in (buffer.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buffer[: min(hits)], True
        keep = max((self.partial(buffer, stop) for stop in self.stops), default=0)
        self.pending = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    @staticmethod
    def partial(text: str, stop: str) -> int:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if stop.startswith(text[-size:]):
                return size
        return 0


def test_the_matcher_says_what_the_plain_matcher_says() -> None:
    rng = random.Random(7)
    for _ in range(400):
        stops = tuple("".join(rng.choice("ab") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 4)))
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 60)))
        fast, plain = StopStringMatcher(stops), PlainMatcher(stops)
        position = 0
        while position < len(text):
            piece = text[position : position + rng.randint(1, 5)]
            position += len(piece)
            assert fast.push(piece) == plain.push(piece), (stops, text)
        assert fast.pending == plain.pending


def test_sixteen_long_stop_strings_over_a_long_reply_take_linear_work() -> None:
    # Stop strings the reply keeps almost matching: "aaa...ac", "abab...abc", ...
    stops = ("a" * 1999 + "c", *(("ab" * 1000)[: 2000 - i] + "c" for i in range(15)))
    reply = ("a" * 3000 + "ab" * 2000) * 10  # 70,000 characters, a few a token
    matcher = StopStringMatcher(stops)
    emitted = []
    for start in range(0, len(reply), 4):
        text, hit = matcher.push(reply[start : start + 4])
        assert not hit
        emitted.append(text)
    emitted.append(matcher.flush())
    assert "".join(emitted) == reply
    # Knuth-Morris-Pratt: at most two steps per character and stop string.
    assert matcher.steps <= 2 * len(stops) * len(reply), matcher.steps
