"""One OpenMP team in the process, the engine worker's: why decode on the worker thread was slower.

PyTorch's CPU kernels and the code Inductor compiles run their parallel loops on OpenMP; on Linux
that is GNU OpenMP (``libgomp``, shipped inside PyTorch's wheels). libgomp gives every thread that
starts a parallel loop a team of its own, which lives as long as that thread. Once the process
holds more OpenMP threads than it has CPUs, libgomp throttles every team: a thread that waits at a
barrier spins 100 times before it sleeps on a futex instead of 300,000 (``GOMP_SPINCOUNT``'s
default; the throttled count cannot be set). A decoded token runs a few hundred parallel loops, and
each then pays a sleep and a wake-up.

On 2 cores a second team is enough to trigger that. The thread that loaded the model (the main
thread, or whichever called ``ChatEngine.load``) kept its team, so the engine's worker thread
decoded about a third slower than the same loop on the main thread, where the bench measured it
(2-core EPYC: 17-20 against 27-31 tok/s). So a thread that is done with the model hands its team
back (``omp_pause_resource_all``, OpenMP 5.0): the loading thread after the load, the worker
whenever it has nothing to run. The next parallel loop on that thread makes a new team, in tens of
microseconds.

Where PyTorch does not use libgomp (macOS, Windows, an Intel OpenMP build), nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)
OMP_PAUSE_SOFT = 1  # omp_pause_soft: free the threads, keep what is cheap to keep


@functools.cache
def _pause_all() -> Callable[[int], int] | None:
    """libgomp's ``omp_pause_resource_all`` when PyTorch loaded libgomp (never loads it itself)."""
    import torch  # noqa: F401  (PyTorch loads its libgomp; RTLD_NOLOAD below only finds a loaded one)

    try:
        library = ctypes.CDLL("libgomp.so.1", mode=getattr(os, "RTLD_NOLOAD", 0) | os.RTLD_LAZY)
        function = library.omp_pause_resource_all
    except (OSError, AttributeError) as exc:  # not libgomp, or one older than OpenMP 5.0 (GCC 9)
        log.debug("OpenMP teams are left as they are: %s", exc)
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def release_openmp_team() -> bool:
    """Hand the calling thread's OpenMP team back to the system; True when one was handed back (or none
    existed), False where this cannot be done here. Call it outside any parallel work of this thread."""
    pause = _pause_all()
    return pause is not None and pause(OMP_PAUSE_SOFT) == 0
