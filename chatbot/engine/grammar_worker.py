"""The grammar compiler's own process: builds and compiles one grammar at a time, under a memory bound.

xgrammar compiles a JSON schema against the whole vocabulary synchronously, with no time or memory
bound of its own: a schema with a few thousand optional properties or an enum of 20,000 strings takes
minutes and gigabytes, and a thread running it cannot be stopped. This process can: the server
(``grammar_compile.py``) sends it one job at a time and kills it when the job runs past its time limit
or the client goes away. It imports xgrammar and the standard library only (it runs as a script, by
path, so that the server's package is not imported a second time), and ``constraints.py`` builds its
grammars with the same ``build_grammar``.

Protocol: length-prefixed JSON frames (``multiprocessing.connection``) on two inherited pipe ends.
Job: ``{"vocab": KEY, "info": TOKENIZER_INFO_JSON or null, "grammar": GRAMMAR_FIELDS or null}``; the info is
sent once per vocabulary, in a job of its own (answered ``{"loaded": KEY}``). Answer:
``{"compiled": COMPILED_GRAMMAR_JSON}`` or ``{"error": MESSAGE}``.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import threading
import time
from typing import Any

import xgrammar as xgr

# What may precede the constrained answer: the blank line Qwen3 writes after </think>.
LEADING_NEWLINES = '"\\n"{0,2}'
ENGINE_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def engine_message(exc: BaseException) -> str:
    """xgrammar's error without the C++ time stamp and source location it starts with."""
    return ENGINE_PREFIX.sub("", str(exc)).strip()


def literal(text: str) -> xgr.Grammar:
    """A grammar that matches exactly ``text``."""
    return xgr.Grammar.from_ebnf(f"root ::= {json.dumps(text)}")


def build_grammar(
    kind: str, schema: str = "", wrap: tuple[str, str] = ("", ""), separator: str = "\n", max_count: int = 1
) -> xgr.Grammar:
    """The grammar of an answer (see ``constraints.Constraint`` for the fields), with the optional blank
    line in front. Raises what xgrammar raises for an unusable schema (RuntimeError, ValueError, TypeError)."""
    schema = schema if kind == "json_schema" else '{"type": "object"}'
    # Compact separators (", " and ": ") as Qwen3 writes JSON: no unbounded whitespace runs.
    value = xgr.Grammar.from_json_schema(schema, any_whitespace=False)
    before, after = wrap
    one = [literal(before), value, literal(after)] if before or after else [value]
    options = []
    for count in range(1, max_count + 1):
        parts = list(one)
        for _ in range(count - 1):
            parts += [literal(separator), *one]
        options.append(xgr.Grammar.concat(*parts))
    answer = options[0] if len(options) == 1 else xgr.Grammar.union(*options)
    return xgr.Grammar.concat(xgr.Grammar.from_ebnf(f"root ::= {LEADING_NEWLINES}"), answer)


def bound_memory(extra_bytes: int) -> None:
    """Let this process map at most ``extra_bytes`` more than it has now: past that, xgrammar's allocations
    fail (an error, or the process ends), and the server refuses the schema instead of swapping."""
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra_bytes, mapped + extra_bytes))


def answer(job: dict[str, Any], compilers: dict[str, xgr.GrammarCompiler]) -> dict[str, Any]:
    key = job["vocab"]
    if job.get("info") is not None:
        info = xgr.TokenizerInfo.deserialize_json(job["info"])
        compilers[key] = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    if job.get("grammar") is None:  # the vocabulary alone, before its first grammar
        return {"loaded": key}
    compiler = compilers.get(key)
    if compiler is None:
        return {"error": "no vocabulary was sent for this grammar"}
    try:
        compiled = compiler.compile_grammar(build_grammar(**job["grammar"]))
        return {"compiled": compiled.serialize_json()}
    except (RuntimeError, ValueError, TypeError) as exc:
        return {"error": engine_message(exc)}
    except MemoryError:
        return {"error": "the grammar needs more memory than a grammar may take", "memory": True}


def exit_with_parent() -> None:
    """End this process when the server does, even in the middle of a compilation."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="watch-server", daemon=True).start()


def main(read_fd: int, write_fd: int, memory_bytes: int) -> None:
    from multiprocessing.connection import Connection

    exit_with_parent()
    os.nice(19)  # the engine's decode loop goes first where cores are short
    jobs, answers = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    if memory_bytes > 0:
        bound_memory(memory_bytes)
    compilers: dict[str, xgr.GrammarCompiler] = {}
    answers.send_bytes(b'{"ready": true}')
    while True:
        try:
            job = json.loads(jobs.recv_bytes())
        except EOFError:  # the server closed the pipe: it has stopped or let this worker go
            return
        answers.send_bytes(json.dumps(answer(job, compilers)).encode())


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
