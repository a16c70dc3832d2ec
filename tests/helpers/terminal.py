"""A program on a pseudo-terminal, as a person at a terminal runs it: what it printed, and keys typed to it.

``Terminal([sys.executable, "-m", "chatbot", "chat", ...])`` starts it in a session of its own with the
pty as its controlling terminal (so Ctrl+C, ``"\\x03"``, is a real SIGINT and ``isatty()`` is true);
``expect(text, start)`` waits (bounded) for output, ``type(keys)`` sends keys (``"\\x1b[A"`` is the up
arrow, ``"\\r"`` Enter), ``close()`` waits for the exit and returns the status.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from helpers.app import ROOT, WAIT_LIMIT_SECONDS

UP_ARROW = "\x1b[A"


class Terminal:
    """A program on a pseudo-terminal: what it printed, and keys typed to it (Ctrl+C included)."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        import pty

        self.master, slave = pty.openpty()
        # A session of its own with this terminal as its controlling one, so that Ctrl+C is a real SIGINT.
        # SIGINT back to its default first, as a shell at a terminal starts a program: an ignored SIGINT
        # is inherited through exec (a test run started in the background, `cmd &` in a script, ignores
        # it), and Python then leaves it ignored, so Ctrl+C would do nothing.
        launcher = (
            "import fcntl, os, signal, sys, termios; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", launcher, *command],
            cwd=ROOT,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "xterm", **(env or {})},
        )
        os.close(slave)
        self.output = ""

    def read(self, timeout: float = 0.1) -> None:
        while select.select([self.master], [], [], timeout)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the program ended and closed the terminal
                return
            if not chunk:
                return
            self.output += chunk.decode(errors="replace")
            timeout = 0

    def expect(self, text: str, start: int) -> int:
        """Wait until ``text`` appears after position ``start``; returns where it ends."""
        deadline = time.monotonic() + WAIT_LIMIT_SECONDS
        while (found := self.output.find(text, start)) < 0:
            assert self.process.poll() is None or found >= 0, f"the program ended:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"never printed {text!r}:\n{self.output[-3000:]}"
            self.read()
        return found + len(text)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> int:
        deadline = time.monotonic() + WAIT_LIMIT_SECONDS
        while self.process.poll() is None and time.monotonic() < deadline:
            self.read()
        self.read(0)
        os.close(self.master)
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait()
