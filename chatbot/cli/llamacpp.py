"""llama.cpp, the CPU peer: built once from source, and GGUF copies of generated checkpoints.

llama.cpp is what Ollama and LM Studio run on CPUs, so it is the yardstick for our CPU figures
(``bench --peer llama.cpp``) and its ``llama-server`` is a real third-party OpenAI-compatible
server for the remote-backend tests. PyPI's ``llama-cpp-python`` source distribution vendors
llama.cpp (``tools/server`` and ``tools/llama-bench`` included), so it is built from there: no
network beyond the package registry. The build is cached; later calls cost nothing.

    python -m chatbot.cli.llamacpp build                 # once: about 10-15 minutes on 2 cores
    python -m chatbot.cli.llamacpp convert MODEL OUTDIR  # GGUF F16 and Q8_0 of a checkpoint folder
    python -m chatbot.cli.llamacpp build --isa avx2      # a second build limited to AVX2 (see ISAS)

A checkpoint for llama.cpp's converter needs Qwen3's real tokenizer (the converter recognises the
pre-tokenizer by hashing its output): ``python -m chatbot make-model OUT --tokenizer qwen3``.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ChatbotError
from ..settings import cache_dir

VERSION = "0.3.36"  # llama-cpp-python release whose vendored llama.cpp is built
TARGETS = ("llama-bench", "llama-server", "llama-quantize")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",  # self-contained binaries: the cache folder can move
)
GGUF_TYPES = ("f16", "q8_0")
BUILT_MARK = f"llama-cpp-python {VERSION}, built without AMX\n"  # a cached build by another recipe is redone
# Instruction sets a build can target: this CPU's own ("native"), or AVX2 without AVX-512 ("avx2"),
# the instruction set of the slower machines users run us on, so that a machine with AVX-512 can
# measure both sides as such a CPU runs them (``bench --peer llama.cpp --peer-isa avx2``).
# AMX stays off even where the CPU lists it: on virtual machines that list AMX without giving guests its
# tile state (seen on a 2-core Xeon VM), llama.cpp's AMX kernels for quantized types die on their first
# `tileloadd` (SIGILL) as soon as a batch of rows reaches them; GCC honours an explicit -mno-amx-* over
# -march=native, so the rest of the native instruction set is kept.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
ISAS = {
    # this CPU's instruction set, as a user building it for their machine gets (AMX aside, see above)
    "native": ("-DGGML_NATIVE=ON", f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"),
    "avx2": (
        "-DGGML_NATIVE=OFF",
        "-DGGML_AVX=ON",
        "-DGGML_AVX2=ON",
        "-DGGML_FMA=ON",
        "-DGGML_F16C=ON",
        "-DGGML_BMI2=ON",
        "-DGGML_AVX512=OFF",
    ),
}


class LlamaCppError(ChatbotError):
    """llama.cpp could not be fetched, built or run."""


def cache_root(isa: str = "native") -> Path:
    """Where the build lives: ``$QWEN_LLAMACPP_CACHE`` or ``~/.cache/qwen3-chat/llama.cpp-VERSION``
    (with ``-ISA`` appended for a build other than the native one)."""
    if isa not in ISAS:
        raise LlamaCppError(f"unknown instruction set {isa!r} for llama.cpp", fix=f"use one of {', '.join(ISAS)}")
    suffix = "" if isa == "native" else f"-{isa}"
    explicit = os.environ.get("QWEN_LLAMACPP_CACHE")
    if explicit:
        return Path(explicit + suffix)
    return cache_dir() / f"llama.cpp-{VERSION}{suffix}"


@dataclass(frozen=True)
class LlamaCpp:
    """A finished build: the vendored llama.cpp source tree and its binaries."""

    source: Path

    @property
    def bin_dir(self) -> Path:
        return self.source / "build" / "bin"

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    def convert(self, checkpoint: Path, out_dir: Path, types: tuple[str, ...] = GGUF_TYPES) -> dict[str, Path]:
        """GGUF files of ``checkpoint`` in ``out_dir``, one per type (``f16``, ``q8_0``); made once.

        F16 comes from llama.cpp's own ``convert_hf_to_gguf.py`` (it reads block-FP8 checkpoints
        too), Q8_0 from ``llama-quantize`` on the F16 file, as llama.cpp's docs do it.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        f16 = out_dir / "model-f16.gguf"
        made: dict[str, Path] = {}
        if not _newer_than_checkpoint(f16, checkpoint):
            partial = f16.with_suffix(".partial")
            env = {**os.environ, "PYTHONPATH": str(self.source / "gguf-py"), "NO_LOCAL_GGUF": ""}
            command = [sys.executable, str(self.source / "convert_hf_to_gguf.py"), str(checkpoint)]
            _run([*command, "--outtype", "f16", "--outfile", str(partial)], "convert_hf_to_gguf.py", env=env)
            partial.replace(f16)
        made["f16"] = f16
        for kind in types:
            if kind == "f16":
                continue
            target = out_dir / f"model-{kind}.gguf"
            if not _newer_than_checkpoint(target, checkpoint) or target.stat().st_mtime < f16.stat().st_mtime:
                partial = target.with_suffix(".partial")
                _run([str(self.binary("llama-quantize")), str(f16), str(partial), kind.upper()], "llama-quantize")
                partial.replace(target)
            made[kind] = target
        return made


def find(root: Path | None = None) -> LlamaCpp | None:
    """The cached build, or None when it has not been built (or not completely)."""
    root = root or cache_root()
    source = root / "src" / "vendor" / "llama.cpp"
    marker = root / "built"
    if not marker.exists() or marker.read_text(encoding="utf-8") != BUILT_MARK:
        return None  # not built, not completely, or by an earlier recipe (e.g. with AMX): build again
    build = LlamaCpp(source)
    return build if all(build.binary(t).exists() for t in TARGETS) else None


def ensure_built(
    log: Callable[[str], None] = print, root: Path | None = None, verbose: bool = False, isa: str = "native"
) -> LlamaCpp:
    """The cached build for ``isa`` (see ISAS), building it first when needed (one process at a time builds).

    ``verbose``: show the compiler's progress on stderr (otherwise only its error output, on failure).

    Raises LlamaCppError naming what is missing (cmake, a C++ compiler, the registry) and how to fix it.
    """
    root = root or cache_root(isa)
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / ".lock"):
        found = find(root)
        if found is not None:
            return found
        for tool, package in (("cmake", "cmake"), ("c++", "g++")):
            if shutil.which(tool) is None:
                raise LlamaCppError(
                    f"building llama.cpp needs {tool}, which is not installed",
                    fix=f"apt-get install {package} (or pip install cmake for cmake)",
                )
        source_root = root / "src"
        if not (source_root / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
            _fetch_source(root, log)
        source = source_root / "vendor" / "llama.cpp"
        jobs = str(len(os.sched_getaffinity(0)))
        log(f"Building llama.cpp ({', '.join(TARGETS)}, {isa}) in {source}: about 10-15 minutes on 2 cores, once")
        configure = ["cmake", "-S", str(source), "-B", str(source / "build"), *CMAKE_FLAGS, *ISAS[isa]]
        _run(configure, "cmake configure", verbose=verbose)
        compile_ = ["cmake", "--build", str(source / "build"), "-j", jobs, "--target", *TARGETS]
        _run(compile_, "cmake build", verbose=verbose)
        (root / "built").write_text(BUILT_MARK, encoding="utf-8")
        built = find(root)
        if built is None:
            raise LlamaCppError(f"the llama.cpp build in {source} finished without {', '.join(TARGETS)}")
        log(f"llama.cpp built: {built.bin_dir}")
        return built


def _fetch_source(root: Path, log: Callable[[str], None]) -> None:
    download = root / "download"
    download.mkdir(exist_ok=True)
    log(f"Fetching the llama-cpp-python {VERSION} source distribution (vendors llama.cpp) from PyPI")
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    _run([*pip, "--dest", str(download), f"llama-cpp-python=={VERSION}"], "pip download")
    archives = sorted(download.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
    if not archives:
        raise LlamaCppError(f"pip download left no llama_cpp_python-{VERSION}.tar.gz in {download}")
    staging = root / "src.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    with tarfile.open(archives[0]) as archive:
        # The "data" filter refuses links and paths outside the folder (Pythons without it predate the need).
        if hasattr(tarfile, "data_filter"):
            archive.extractall(staging, filter="data")
        else:
            archive.extractall(staging)
    shutil.rmtree(root / "src", ignore_errors=True)
    (staging / f"llama_cpp_python-{VERSION}").rename(root / "src")
    staging.rmdir()


def _newer_than_checkpoint(path: Path, checkpoint: Path) -> bool:
    if not path.exists():
        return False
    sources = [p for p in checkpoint.iterdir() if p.suffix in (".safetensors", ".json")]
    return all(path.stat().st_mtime >= p.stat().st_mtime for p in sources)


def _run(command: list[str], what: str, env: dict[str, str] | None = None, verbose: bool = False) -> None:
    if verbose:
        result = subprocess.run(command, stdout=sys.stderr, env=env, check=False)
        if result.returncode != 0:
            raise LlamaCppError(f"{what} failed (exit {result.returncode}); its output is above")
        return
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise LlamaCppError(f"{what} failed (exit {result.returncode}):\n{tail}")


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first build instead of racing it
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatbot.cli.llamacpp", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_command = commands.add_parser("build", help="build llama.cpp once (cached)")
    build_command.add_argument(
        "--isa", choices=tuple(ISAS), default="native", help="instruction set (default: this CPU's)"
    )
    convert = commands.add_parser("convert", help="GGUF F16 and Q8_0 files of a checkpoint folder")
    convert.add_argument("checkpoint", type=Path)
    convert.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        isa = getattr(args, "isa", "native")
        build = ensure_built(log=lambda line: print(line, file=sys.stderr, flush=True), verbose=True, isa=isa)
        if args.command == "convert":
            for kind, path in build.convert(args.checkpoint, args.out_dir).items():
                print(f"{kind}: {path}")
        else:
            print(build.bin_dir)
    except LlamaCppError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
