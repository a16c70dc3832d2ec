"""The int8 dot-product kernel of the CPU INT8 mode: llama.cpp's Q8_0 arithmetic over our per-row int8 weights.

A decoded token multiplies one activation row by every weight matrix. ``cpu_int8_dot.cpp`` (beside this
file) does it as llama.cpp does for Q8_0: the activations are quantized per block of 32 to int8 with
one scale each, multiplied by the int8 weights with integer dot-product instructions (``vpdpbusd`` on
AVX512-VNNI or AVX-VNNI, ``vpmaddubsw`` + ``vpmaddwd`` on AVX2), each block's integer sum scaled by its
activation scale and the row's total by the weight row's scale. Output rows are split across torch's
threads (``at::parallel_for``), and up to 16 activation rows (a batched decode step) share each weight
row read from memory.

The library is compiled at first use with the C++ compiler Inductor uses (``$CXX`` or g++), against the
running torch's headers, into ``$QWEN_KERNEL_CACHE`` (default ``~/.cache/qwen3-chat/kernels``; about 20 s
once, then loaded in milliseconds); the file name carries a hash of the source, torch's version and the
compiler. One library holds every instruction set's code (function target attributes) and the fastest
one this CPU has is used. ``QWEN_INT8_ISA=avx512-vnni|avx-vnni|avx2`` forces one (tests run each);
``ATEN_CPU_CAPABILITY=avx2`` (how the bench measures an AVX2-only CPU) limits it to plain AVX2, as
llama.cpp's AVX2 build has. Where the build fails (no compiler, not x86-64), ``cpu_int8`` falls back to
its other kernels with this module's reason in the precision details.

Rounding the activations to 8 bits per block adds an error of about 0.2% of a product's size on
Gaussian inputs (each block's largest value sets its step, so an outlier channel only coarsens its own
block of 32); ``cpu_int8``'s self-check bounds it against an FP32 reference at load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

import torch

from ..settings import cache_dir as app_cache_dir
from ..settings import tuning

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_suffix(".cpp")
# Instruction sets, fastest first, with the bit the library uses for each.
ISAS = {"avx512-vnni": 4, "avx-vnni": 2, "avx2": 1}
BUILD_TIMEOUT_SECONDS = 600
BLOCK = 32  # activations are quantized per this many columns; K must be a multiple of it

KernelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class KernelBuildError(RuntimeError):
    """The library could not be built or loaded here; the message says why and what to do."""


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    """``$QWEN_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/qwen3-chat/kernels`` (``~/.cache`` by default)."""
    explicit = tuning(environ).kernel_cache
    return explicit if explicit is not None else app_cache_dir(environ) / "kernels"


def compiler(environ: dict[str, str] | None = None) -> str:
    """The C++ compiler: ``$CXX``, else the one torch.compile (Inductor) uses."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("CXX", "").strip()
    if explicit:
        return explicit
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except (ImportError, RuntimeError, OSError):  # Inductor missing or found no compiler: try the usual name
        return "g++"


# -fopenmp: torch is built with OpenMP, and ``at::parallel_for`` is an inline "#pragma omp parallel" that a
# library compiled without it runs on one thread. The library then needs libgomp.so.1, which resolves to the
# copy torch has already loaded (the same soname), so torch.set_num_threads sets its threads too, as it does
# for Inductor's generated code. Part of the cached library's name (a change of flags builds it again).
FLAGS = ("-O3", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-w")


def _build_command(cxx: str, output: Path, source: Path = SOURCE) -> list[str]:
    from torch.utils.cpp_extension import include_paths, library_paths

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [cxx, *FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    command += [f"-I{path}" for path in include_paths()]
    command += [str(source), "-o", str(output)]
    for path in library_paths():
        command += [f"-L{path}", f"-Wl,-rpath,{path}"]
    return [*command, "-lc10", "-ltorch_cpu"]


def build_library(folder: Path, cxx: str, source: Path = SOURCE, what: str = "the int8 dot-product kernel") -> Path:
    """Compile ``source`` (a C++ file of torch operators; this module's kernel by default) into a library in
    ``folder`` unless a build of that source, torch and compiler is there. ``what`` names it in the log.

    Returns the library's path. Raises ``KernelBuildError`` (no compiler, a failed compile, not x86-64).
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise KernelBuildError(f"written for x86-64 CPUs, not {platform.machine()}")
    resolved = shutil.which(cxx)
    if resolved is None:
        raise KernelBuildError(f"no C++ compiler {cxx!r} found: install g++ (Debian/Ubuntu: apt-get install g++)")
    key = hashlib.sha256(
        source.read_bytes() + f"{torch.__version__}|{resolved}|{sys.version_info[:2]}|{FLAGS}".encode()
    ).hexdigest()[:16]
    library = folder / f"{source.stem}-{key}.so"
    if library.exists():
        return library
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KernelBuildError(f"cannot create the kernel cache {folder}: {exc} (set QWEN_KERNEL_CACHE)") from exc
    partial = folder / f".{library.name}.{os.getpid()}.tmp"  # renamed when done: another process may build too
    started = time.perf_counter()
    log.info("Building %s with %s (once; cached in %s)", what, resolved, folder)
    try:
        result = subprocess.run(
            _build_command(resolved, partial, source), capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelBuildError(f"{resolved} could not compile the kernel: {exc}") from exc
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        errors = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()
        raise KernelBuildError(f"{resolved} failed to compile the kernel: {(errors or ['no output'])[0][:300]}")
    os.replace(partial, library)
    log.info("Built %s in %.0f s", what, time.perf_counter() - started)
    return library


@cache
def load_library() -> None:
    """Build (first time) and load the library; its operators become ``torch.ops.qwen_int8.*``.

    Raises ``KernelBuildError``.
    """
    path = build_library(cache_dir(), compiler())
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as exc:
        raise KernelBuildError(f"the built kernel {path} does not load: {exc}") from exc

    @torch.library.register_fake("qwen_int8::matvec")
    def _(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, isa: int) -> torch.Tensor:
        return x.new_empty((x.shape[0], q.shape[0]), dtype=torch.float32)


def held_to_avx2(environ: Mapping[str, str]) -> bool:
    """Whether ``ATEN_CPU_CAPABILITY`` holds torch to AVX2 or less (as ``bench --peer-isa avx2`` does): our
    kernels then keep to AVX2 too, as llama.cpp's AVX2 build does."""
    return environ.get("ATEN_CPU_CAPABILITY", "").strip().lower() in ("avx2", "default")


def supported_isas(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The instruction sets this CPU runs, fastest first, limited by ``ATEN_CPU_CAPABILITY=avx2``.

    Raises ``KernelBuildError`` where the library cannot be built.
    """
    environ = os.environ if environ is None else environ
    load_library()
    mask = int(torch.ops.qwen_int8.supported_isas())
    names = tuple(name for name, bit in ISAS.items() if mask & bit)
    if held_to_avx2(environ):
        names = tuple(name for name in names if name == "avx2")
    return names


def chosen_isa(environ: dict[str, str] | None = None) -> str:
    """``QWEN_INT8_ISA`` if set, else the fastest supported instruction set.

    Raises:
        KernelBuildError: the library cannot be built, or this CPU lacks every path (or the one asked for).
        ValueError: ``QWEN_INT8_ISA`` names no instruction set.
    """
    forced = tuning(environ).int8_isa
    available = supported_isas(environ)
    if forced != "auto":
        if forced not in available:
            raise KernelBuildError(f"QWEN_INT8_ISA={forced}, but this CPU runs only {', '.join(available) or 'none'}")
        return forced
    if not available:
        raise KernelBuildError("this CPU has neither AVX2 nor VNNI")
    return available[0]


def dot_kernel(isa: str) -> KernelFn:
    """The matrix product on ``isa``: (x [M, K] float, q int8 [N, K], scale [N]) -> FP32 [M, N].

    Traceable by ``torch.compile`` (an operator with a fake implementation), so the compiled decode
    step calls it from its graph.
    """
    load_library()
    bit = ISAS[isa]

    def matvec(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.ops.qwen_int8.matvec(x, q, scale, bit)

    matvec.__name__ = f"int8_dot_{isa.replace('-', '_')}"
    matvec.isa = isa  # type: ignore[attr-defined]
    return matvec
