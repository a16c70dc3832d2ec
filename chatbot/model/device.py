"""What the machine can run: the device, its CUDA compute capability, memory and CPU features.

``DeviceInfo`` is a plain value so the precision rules can be tested with simulated devices
(``DeviceInfo.simulated_cuda((8, 6))``) on a machine without a GPU.
"""

from __future__ import annotations

import logging
import platform
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from ..errors import ChatbotError

log = logging.getLogger(__name__)

FP8_MIN_CAPABILITY = (8, 9)  # Ada (8.9) and Hopper (9.0) have FP8 tensor cores
BF16_MIN_CAPABILITY = (8, 0)  # Ampere and newer run BF16 natively


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda", "cpu" or "mps"
    name: str
    index: int = 0
    capability: tuple[int, int] | None = None
    total_memory: int | None = None
    simulated: bool = False

    @property
    def torch_device(self) -> str:
        if self.simulated:
            return "cpu"  # a simulated device decides like the real one but computes on the CPU
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    @property
    def has_fp8(self) -> bool:
        return self.kind == "cuda" and self.capability is not None and self.capability >= FP8_MIN_CAPABILITY

    @property
    def has_bf16(self) -> bool:
        if self.kind == "cuda":
            return self.capability is not None and self.capability >= BF16_MIN_CAPABILITY
        return self.kind == "cpu"

    @property
    def capability_text(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}" if self.capability else "n/a"

    def describe(self) -> str:
        parts = [self.name]
        if self.kind == "cuda":
            parts.append(f"compute capability {self.capability_text}")
        if self.total_memory:
            parts.append(f"{self.total_memory / 2**30:.0f} GiB")
        text = f"{self.kind}: " + ", ".join(parts)
        return text + " (simulated)" if self.simulated else text

    @classmethod
    def simulated_cuda(cls, capability: tuple[int, int], name: str = "Simulated GPU") -> DeviceInfo:
        """A CUDA device that exists only in tests of the precision rules."""
        return cls("cuda", name, 0, capability, 24 * 2**30, simulated=True)

    @classmethod
    def simulated_cpu(cls) -> DeviceInfo:
        return cls("cpu", "Simulated CPU", simulated=True)


def detect_device(requested: str = "auto") -> DeviceInfo:
    """Find the device to run on.

    Args:
        requested: "auto", "cpu", "cuda", "cuda:N" or "mps".
    Raises:
        ChatbotError: a device was asked for by name but this machine does not have it.
    """
    requested = (requested or "auto").strip().lower()
    if requested == "cpu":
        return cpu_device()
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ChatbotError(
                f"Device {requested!r} was requested but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}).",
                fix="Install a CUDA build of torch and a driver, or start with --device cpu.",
            )
        index = int(requested.split(":", 1)[1]) if ":" in requested else 0
        return _cuda_device(index)
    if requested == "mps":
        if not _mps_available():
            raise ChatbotError("Device 'mps' was requested but this machine has no Apple GPU.", fix="Use --device cpu.")
        return DeviceInfo("mps", "Apple GPU (MPS)")
    if requested != "auto":
        raise ChatbotError(f"Unknown device {requested!r}.", fix="Use auto, cpu, cuda, cuda:N or mps.")
    if torch.cuda.is_available():
        return _cuda_device(0)
    if _mps_available():
        return DeviceInfo("mps", "Apple GPU (MPS)")
    problem = unusable_cuda_reason()
    if problem:
        log.warning("%s Running on the CPU instead.", problem)
    return cpu_device()


def nvidia_driver_version() -> str | None:
    """The installed NVIDIA kernel driver's version (Linux), or None when there is none."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for \S+)?\s+([0-9]+(?:\.[0-9]+)+)", text)
    return match.group(1) if match else "unknown"


def unusable_cuda_reason(driver: str | None = None, cuda_available: bool | None = None) -> str | None:
    """A sentence when an NVIDIA driver is installed but torch cannot use CUDA (else None)."""
    driver = nvidia_driver_version() if driver is None else driver
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if driver is None or cuda_available:
        return None
    build = torch.version.cuda
    if build is None:
        why = f"this torch ({torch.__version__}) is a CPU-only build"
    else:
        why = f"this torch ({torch.__version__}) is built for CUDA {build}, which may need a newer driver"
    return (
        f"An NVIDIA driver ({driver}) is installed but torch cannot use the GPU: {why}. "
        "Install a torch build that matches the driver (delete .venv and run ./start.sh again, or see "
        "TORCH_INDEX_URL in the README)."
    )


STICKY_CUDA_FAULTS = (
    "illegal memory access",
    "illegal address",
    "unspecified launch failure",
    "device-side assert",
    "misaligned address",
    "illegal instruction",
)


def is_sticky_cuda_fault(exc: BaseException) -> bool:
    """A CUDA error after which the process's CUDA context is unusable (every later CUDA call fails)."""
    text = str(exc).lower()
    return any(fault in text for fault in STICKY_CUDA_FAULTS)


def _cuda_device(index: int) -> DeviceInfo:
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo("cuda", props.name, index, (props.major, props.minor), props.total_memory)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


@cache
def cpu_device() -> DeviceInfo:
    return DeviceInfo("cpu", cpu_name(), total_memory=_system_memory())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags (Linux); empty where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _system_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # psutil is in requirements; stay usable without it
        return None
