"""Run Python scripts many times each, every run a process of its own that ends the way a script ends.

``python tests/exit_runs.py SPEC.json`` prints one JSON line: {name: [{"status", "stdout", "stderr"}, ...]}.
SPEC is {"runs": N, "parallel": P, "folder": DIR, "scripts": [{"name", "path", "args", "interrupt_on"}]}.

The expensive imports (torch, transformers, chatbot) happen once, here; each run is a fork of this process
that runs its script as ``__main__`` and then leaves through the normal interpreter exit (thread shutdown,
atexit hooks, finalization), as ``python script.py`` does. The script's globals stay alive until then, as a
real ``__main__``'s do (a generator it keeps is still suspended when the interpreter exits). Only imports
run before the fork (no torch op, no thread of ours), so every run starts its engine, threads and thread
pools itself. With ``interrupt_on``, the run gets SIGINT (Ctrl+C) once its stdout holds that text.
"""

from __future__ import annotations

import builtins
import json
import os
import signal
import sys
import time
from pathlib import Path

import chatbot  # noqa: F401  (imported once for every run)

RUN_LIMIT_SECONDS = 300.0  # a bound that turns a hung run into a failure, not a measurement
SCRIPT_GLOBALS: list[dict] = []  # a run's script globals, kept (as __main__'s are) until the interpreter exits


def start_run(script: dict, folder: Path, index: int) -> tuple[int, Path, Path]:
    out, err = folder / f"{script['name']}-{index}.out", folder / f"{script['name']}-{index}.err"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid, out, err
    # The child: its own stdout and stderr (C++ runtimes write to fd 2), then the script as __main__.
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = [script["path"], *script.get("args", [])]
    namespace = {"__name__": "__main__", "__file__": script["path"], "__builtins__": builtins}
    SCRIPT_GLOBALS.append(namespace)
    code = compile(Path(script["path"]).read_text(encoding="utf-8"), script["path"], "exec")
    exec(code, namespace)
    raise SystemExit(0)  # the script ended: the interpreter exits as after `python script.py`


def main(spec_path: str) -> None:
    # Ctrl+C raises KeyboardInterrupt in every run, as in `python script.py` typed at a terminal. Python
    # installs that handler only where SIGINT was not ignored when it started, and an ignored SIGINT is
    # inherited (a test run started in the background, `cmd &` in a script, ignores it): the runs would
    # then ignore the test's SIGINT and finish their replies.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    spec = json.loads(Path(spec_path).read_text())
    folder = Path(spec["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    pending = [(script, i) for i in range(spec["runs"]) for script in spec["scripts"]]
    running: dict[int, tuple[dict, Path, Path, float, bool]] = {}
    results: dict[str, list[dict]] = {script["name"]: [] for script in spec["scripts"]}
    while pending or running:
        while pending and len(running) < spec["parallel"]:
            script, index = pending.pop(0)
            pid, out, err = start_run(script, folder, index)
            running[pid] = (script, out, err, time.monotonic(), False)
        time.sleep(0.05)
        for pid, (script, out, err, started, interrupted) in list(running.items()):
            wanted = script.get("interrupt_on")
            if wanted and not interrupted and out.exists() and wanted in out.read_text(errors="replace"):
                os.kill(pid, signal.SIGINT)
                interrupted = True
                running[pid] = (script, out, err, started, interrupted)
            if time.monotonic() - started > RUN_LIMIT_SECONDS:
                os.kill(pid, signal.SIGKILL)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del running[pid]
                results[script["name"]].append(
                    {
                        "status": os.waitstatus_to_exitcode(status),
                        "stdout": out.read_text(errors="replace"),
                        "stderr": err.read_text(errors="replace"),
                        "interrupted": interrupted,
                    }
                )
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
