"""Grammar compilation with a time and memory bound, off every thread that serves other requests.

A request's grammar (``constraints.Constraint``: a JSON schema, tool calls) is compiled before the
request is admitted to the engine, by ``GrammarCompiler.compile`` on the request's own thread: the
engine's worker then only reads the compiled grammar the request carries, and never waits for one.
The compilation itself runs in a worker process (``grammar_worker.py``), one job at a time; past
``COMPILE_SECONDS`` of the worker's CPU time, or when the client goes away, the process is killed (a thread
cannot be stopped, and xgrammar has no bound of its own) and a fresh one is started for the next job. The
bound is CPU time, not wall time: the worker runs niced, so on a busy core a small schema may wait seconds
for its turn, and that must not refuse it. Loading a vocabulary (once per worker) is not counted. A schema that
needs more than ``WORKER_MEMORY_MB`` fails inside the worker. Both are refused with a 400 that says
what to send instead; ``constraints.Vocabulary`` caches what compiled and what was refused, so a
repeated schema costs nothing.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from ..errors import InvalidRequestError, QueueFullError

log = logging.getLogger(__name__)

# Most CPU time one grammar may take to compile. Schemas clients really use (a tool's arguments, a response
# format) compile in well under a second against Qwen3's 151k-token vocabulary, also on one slow core.
COMPILE_SECONDS = 10.0
# Wall-clock bound on the same job, however starved the niced worker is: a multiple of the CPU bound.
COMPILE_WALL_FACTOR = 12
# Memory the worker may map beyond what it holds once started (xgrammar and torch imported).
WORKER_MEMORY_MB = 2048
# Starting a worker imports xgrammar (and torch with it): seconds on a busy machine, not counted as compiling.
START_SECONDS = 120.0
POLL_SECONDS = 0.05
WORKER_SCRIPT = Path(__file__).with_name("grammar_worker.py")
# Runs the worker by path: importing it as part of this package would import the whole app again.
BOOT = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
FIX = (
    "Send a smaller schema: fewer optional properties, shorter enums, less nesting; with tool_choice "
    "required, offer only the tools this turn needs."
)


class Cancelled(Exception):
    """The request was cancelled (its client went away) while its grammar waited or compiled."""


class _Worker:
    """One worker process, its two pipe ends, and the vocabularies it has been sent."""

    def __init__(self, memory_mb: int) -> None:
        job_read, job_write = os.pipe()
        answer_read, answer_write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-c", BOOT, str(WORKER_SCRIPT), str(job_read), str(answer_write), str(memory_mb * 2**20)],
            pass_fds=(job_read, answer_write),
            stdin=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        os.close(job_read)
        os.close(answer_write)
        self.jobs = Connection(job_write, readable=False)
        self.answers = Connection(answer_read, writable=False)
        self.vocabularies: set[str] = set()
        self.ready = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        """CPU time the worker has used (user and system); 0 once it has ended."""
        try:
            times = psutil.Process(self.process.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return times.user + times.system

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.jobs.close()
        self.answers.close()


class GrammarCompiler:
    """Compiles grammars in a worker process, one at a time, each within ``seconds``. Thread-safe."""

    def __init__(self, seconds: float = COMPILE_SECONDS, memory_mb: int = WORKER_MEMORY_MB) -> None:
        self.seconds = seconds
        self.memory_mb = memory_mb
        self._turn = threading.Lock()  # one job at a time: the worker compiles one grammar
        self._worker: _Worker | None = None

    def compile(
        self,
        vocabulary: str,
        info_json: Callable[[], str],
        grammar: dict[str, Any],
        param: str,
        cancel: threading.Event | None = None,
    ) -> str:
        """The compiled grammar (xgrammar's JSON) of ``grammar`` (``build_grammar``'s arguments).

        Args:
            vocabulary: a key naming the vocabulary; ``info_json()`` gives its xgrammar tokenizer info,
                sent to a worker the first time it compiles for it.
            param: the request field the grammar came from, for the error.
            cancel: set when the client goes away: the wait or the compilation stops.
        Raises:
            InvalidRequestError: the schema is unusable, or took longer than ``seconds`` or more memory
                than the bound (param ``param``).
            QueueFullError: other requests' grammars kept the worker busy past the wait bound.
            Cancelled: ``cancel`` was set.
        """
        waited = time.monotonic() + START_SECONDS + self.seconds
        while not self._turn.acquire(timeout=POLL_SECONDS):
            check_cancel(cancel)
            if time.monotonic() > waited:
                raise QueueFullError(
                    "Other requests' grammars (JSON schemas, tool calls) are being compiled; this one waited "
                    f"{START_SECONDS + self.seconds:.0f} s.",
                    retry_after=int(self.seconds),
                )
        try:
            worker = self._ready_worker(cancel)
            if vocabulary not in worker.vocabularies:
                self._load_vocabulary(worker, vocabulary, info_json(), cancel)
            worker.jobs.send_bytes(json.dumps({"vocab": vocabulary, "info": None, "grammar": grammar}).encode())
            answer = self._answer(worker, cancel, param)
        finally:
            self._turn.release()
        if "error" in answer:
            memory = answer.get("memory") or "bad_alloc" in answer["error"]
            raise InvalidRequestError(
                self._memory_message(param)
                if memory
                else f"The grammar for {param} cannot be compiled: {answer['error']}",
                param=param,
                fix=FIX if memory else None,
            )
        return str(answer["compiled"])

    def _ready_worker(self, cancel: threading.Event | None) -> _Worker:
        worker = self._worker
        if worker is not None and worker.alive() and worker.ready:
            return worker
        if worker is not None:
            worker.kill()
        worker = self._worker = _Worker(self.memory_mb)
        self._await_answer(worker, cancel, "could not be started")
        worker.ready = True
        return worker

    def _load_vocabulary(self, worker: _Worker, vocabulary: str, info: str, cancel: threading.Event | None) -> None:
        """Send ``vocabulary`` to ``worker`` and wait until it is loaded (bounded as a start, not as a compile)."""
        worker.jobs.send_bytes(json.dumps({"vocab": vocabulary, "info": info, "grammar": None}).encode())
        self._await_answer(worker, cancel, "could not load the vocabulary")
        worker.vocabularies.add(vocabulary)

    def _await_answer(self, worker: _Worker, cancel: threading.Event | None, failure: str) -> None:
        """Wait (bounded as a start, ``START_SECONDS``) for the worker's next answer and read it; a worker that
        ends or takes too long is let go and the request refused, saying the compiler ``failure``."""
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                if worker.answers.poll(POLL_SECONDS):
                    worker.answers.recv_bytes()
                    return
            except EOFError:
                pass
            if cancel is not None and cancel.is_set():
                self._let_go(worker)
                raise Cancelled
            if not worker.alive() or time.monotonic() > deadline:
                self._let_go(worker)
                raise InvalidRequestError(
                    f"The grammar compiler {failure}, so constrained output (response_format, "
                    "tool_choice required or a named function) is not available now.",
                    param="response_format",
                    fix="See the server's log; send the request without response_format or tool_choice.",
                )

    def _answer(self, worker: _Worker, cancel: threading.Event | None, param: str) -> dict[str, Any]:
        started_cpu = worker.cpu_seconds()
        wall_deadline = time.monotonic() + COMPILE_WALL_FACTOR * self.seconds
        while True:
            try:
                if worker.answers.poll(POLL_SECONDS):
                    answer: dict[str, Any] = json.loads(worker.answers.recv_bytes())
                    return answer
            except EOFError:  # the worker died: its memory bound, or killed from outside
                self._let_go(worker)
                return {"error": "the worker stopped", "memory": True}
            if cancel is not None and cancel.is_set():
                self._let_go(worker)
                raise Cancelled
            if worker.cpu_seconds() - started_cpu > self.seconds or time.monotonic() > wall_deadline:
                self._let_go(worker)
                log.warning("A grammar for %s ran past %g s; its compilation was stopped", param, self.seconds)
                raise InvalidRequestError(
                    f"The grammar for {param} did not compile within {self.seconds:g} s of CPU time, this "
                    "server's bound.",
                    param=param,
                    fix=FIX,
                )

    def _let_go(self, worker: _Worker) -> None:
        worker.kill()
        if self._worker is worker:
            self._worker = None

    def _memory_message(self, param: str) -> str:
        return f"The grammar for {param} needs more than {self.memory_mb} MB to compile, this server's bound."

    def close(self) -> None:
        """Stop the worker (a later ``compile`` starts a new one)."""
        with self._turn:
            if self._worker is not None:
                self._let_go(self._worker)


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled


# One compiler for the process: its worker serves every loaded vocabulary.
COMPILER = GrammarCompiler()
