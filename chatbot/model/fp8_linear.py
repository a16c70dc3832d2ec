"""FP8 linear layers for CUDA GPUs: the weights stay FP8 in GPU memory with their 128x128 block scales.

Kernels, each used only after it passes a numerical self-check on this GPU (``select_fp8_kernels``); all
of them ship with this package or torch, so nothing is fetched from the network (transformers' own
fine-grained FP8 kernel is not used: it downloads its code from the Hugging Face hub at load):

* ``triton`` (W8A16): this package's Triton kernel, FP8 weights decoded per tile inside the matmul
  with the hardware FP8 conversion, 16-bit activations; compute capability >= 8.9.
* ``triton-bits`` (W8A16): the same kernel decoding the e4m3 byte with bit arithmetic, so GPUs without
  FP8 support (Turing, Ampere) keep 1-byte weights too ("FP8 weight-only").
* ``torch-scaled-mm`` (W8A8): ``torch.nn.functional.scaled_mm`` with block-wise scales (cuBLAS). Its
  per-call work (padding, activation quantization) costs more than the matmul for a few rows, so it is
  used for long prompts only (``PREFILL_MIN_ROWS``), beside a W8A16 kernel for decoding.

The self-check can fail: per-block weight magnitudes spread over 2^-6..2^6 (a kernel that ignores or
misplaces block scales is far off), the model's own layer shapes, 1, 16 and 37 rows, and each kernel
compared with a reference of its own class at a tight tolerance. Any exception while building or
running a kernel makes it unavailable, with the reason; a GPU fault that poisons the CUDA context
raises ``Fp8DeviceFault`` instead, because nothing else can run on that GPU in this process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .device import is_sticky_cuda_fault
from .fp8 import FP8_DTYPE, FP8_MAX, dequantize_block_fp8, quantize_block_fp8

log = logging.getLogger(__name__)
KernelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]
SELF_CHECK_ROWS = (1, 16, 37)
SELF_CHECK_MAX_ERROR = 0.02  # largest |error| over the largest |reference output|
SELF_CHECK_SHAPES = ((384, 256),)  # (out, in) used when the caller names no layer shapes
PREFILL_MIN_ROWS = 512  # prompt rows from which the W8A8 prefill kernel (if any) replaces the W8A16 one


class Fp8KernelUnavailable(RuntimeError):
    """No FP8 matmul kernel works on this device; the message lists each kernel's reason."""


class Fp8DeviceFault(RuntimeError):
    """A kernel faulted the GPU (illegal address, launch failure): CUDA is unusable in this process."""


@dataclass(frozen=True)
class Fp8Kernel:
    """A matmul ``x @ dequant(weight).T``; ``prepare`` turns the block scales into the layout ``fn`` wants."""

    name: str
    fn: KernelFn
    kind: str = "w8a16"  # "w8a16": 16-bit activations; "w8a8": activations quantized to FP8 per 1x128 too
    prepare: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None = None
    compiled: bool = False  # compiled per row-count variant (Triton): every variant is compiled at load

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]):
        scales = self.prepare(scale_inv, block) if self.prepare else scale_inv
        return self.fn(x, weight, scales, block)


@dataclass(frozen=True)
class KernelSpec:
    name: str
    kind: str
    needs_fp8_hardware: bool  # compute capability >= 8.9
    factory: Callable[[], KernelFn]
    prepare: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None = None
    compiled: bool = False

    def build(self) -> Fp8Kernel:
        return Fp8Kernel(self.name, self.factory(), self.kind, self.prepare, self.compiled)


@dataclass(frozen=True)
class Fp8Kernels:
    """What an ``Fp8Linear`` runs: ``decode`` always, ``prefill`` from ``prefill_min_rows`` rows on."""

    decode: Fp8Kernel
    prefill: Fp8Kernel | None = None
    prefill_min_rows: int = PREFILL_MIN_ROWS

    @property
    def weight_only(self) -> bool:
        """FP8 weights decoded by bit arithmetic: no FP8 hardware involved."""
        return self.decode.name == "triton-bits"

    def describe(self) -> str:
        if self.prefill is None:
            return self.decode.name
        return f"{self.decode.name}, {self.prefill.name} for prompts of {self.prefill_min_rows}+ tokens"


class Fp8Linear(nn.Module):
    """Linear layer with FP8 weights and block scales; activations and output in 16 bits."""

    def __init__(self, in_features: int, out_features: int, block: tuple[int, int], kernels: Fp8Kernels) -> None:
        super().__init__()
        self.in_features, self.out_features, self.block, self.kernels = in_features, out_features, block, kernels
        rows, cols = -(-out_features // block[0]), -(-in_features // block[1])
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=FP8_DTYPE, device="meta"), requires_grad=False
        )
        self.weight_scale_inv = nn.Parameter(
            torch.empty(rows, cols, dtype=torch.float32, device="meta"), requires_grad=False
        )
        self._prepared: dict[str, torch.Tensor] = {}  # each kernel's scale layout, by kernel name

    def prepare_scales(self) -> None:
        """Turn the block scales into each kernel's layout now (the loader calls it once the weights are in).

        Call it again after changing ``weight_scale_inv``; until then forward uses the layouts made here.
        """
        self._prepared = {}
        for kernel in (self.kernels.decode, self.kernels.prefill):
            if kernel is not None and kernel.prepare is not None:
                self._prepared[kernel.name] = kernel.prepare(self.weight_scale_inv, self.block)

    def scales_for(self, kernel: Fp8Kernel) -> torch.Tensor:
        """The block scales in ``kernel``'s layout (prepared on first use when ``prepare_scales`` was not called)."""
        if kernel.prepare is None:
            return self.weight_scale_inv
        prepared = self._prepared.get(kernel.name)
        if prepared is None:
            prepared = self._prepared[kernel.name] = kernel.prepare(self.weight_scale_inv, self.block)
        return prepared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        kernel = self.kernels.decode
        if self.kernels.prefill is not None and flat.shape[0] >= self.kernels.prefill_min_rows:
            kernel = self.kernels.prefill
        out = kernel.fn(flat, self.weight, self.scales_for(kernel), self.block)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernels={self.kernels.describe()}"


# --- W8A8: torch scaled_mm with block-wise scales -----------------------------------------------------------


def quantize_activations_1x128(x: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token, per-128-column quantization: (fp8 [M, K], float32 scales [M, K/group])."""
    rows, cols = x.shape
    grouped = x.float().view(rows, cols // group, group)
    scale = (grouped.abs().amax(dim=-1) / FP8_MAX).clamp(min=1e-12)
    quantized = (grouped / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).view(rows, cols)
    return quantized, scale


def scaled_mm_weight_scales(scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """The 128x128 weight scales as cuBLAS wants them: padded to a multiple of 4 along K, as [L4, N/128]."""
    if block != (128, 128):
        raise ValueError(f"scaled_mm block-wise scaling needs 128x128 blocks, not {block}")
    return F.pad(scale_inv.float(), (0, (-scale_inv.shape[1]) % 4)).t()


def scaled_mm_arguments(x: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, block: tuple[int, int]):
    """Arguments for ``F.scaled_mm`` in the layouts cuBLAS requires for 1x128 x 128x128 scaling.

    - A = activations [M, K] FP8 with scales [M, K/128], outer-dim-major (stride (1, M));
    - B = weight.T [K, N] with ``w_scale`` from ``scaled_mm_weight_scales``.
    """
    if block != (128, 128):
        raise ValueError(f"scaled_mm block-wise scaling needs 128x128 blocks, not {block}")
    rows, cols = x.shape
    if cols % 128 or weight.shape[0] % 128:
        raise ValueError("scaled_mm block-wise scaling needs dimensions that are multiples of 128")
    padded_rows = -(-rows // 16) * 16  # cuBLAS wants aligned leading dimensions
    if padded_rows != rows:
        x = F.pad(x, (0, 0, 0, padded_rows - rows))
    x_fp8, x_scale = quantize_activations_1x128(x)
    x_scale = x_scale.t().contiguous().t()
    return (x_fp8, weight.t(), x_scale, w_scale), rows


def _scaled_mm_kernel(x: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, block: tuple[int, int]):
    (a, b, scale_a, scale_b), rows = scaled_mm_arguments(x, weight, w_scale, block)
    out = F.scaled_mm(
        a,
        b,
        scale_a,
        F.ScalingType.BlockWise1x128,
        scale_b,
        F.ScalingType.BlockWise128x128,
        output_dtype=torch.bfloat16,
    )
    return out[:rows].to(x.dtype)


# --- W8A16: Triton, FP8 weights decoded per tile -------------------------------------------------------------


def _triton_kernel(decode: str) -> KernelFn:
    import triton  # noqa: F401  (ImportError -> kernel unavailable)

    from .fp8_triton import w8a16_block_matmul

    def run(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
        if not x.is_cuda:  # the operator would compute in PyTorch: not the kernel this name promises
            raise RuntimeError("the Triton FP8 kernels run on CUDA tensors only")
        return w8a16_block_matmul(x, weight, scale_inv, block, decode=decode)

    return run


KERNELS: list[KernelSpec] = [
    KernelSpec("triton", "w8a16", True, lambda: _triton_kernel("cast"), compiled=True),
    KernelSpec("triton-bits", "w8a16", False, lambda: _triton_kernel("bits"), compiled=True),
    KernelSpec("torch-scaled-mm", "w8a8", True, lambda: _scaled_mm_kernel, scaled_mm_weight_scales),
]


# --- compiling every variant at load ------------------------------------------------------------------------

WARM_MAX_ROWS = 4096  # beyond a prompt chunk; row counts past 32 run no variant that fewer rows do not


def warm_fp8_layers(model: nn.Module, dtype: torch.dtype) -> int:
    """Run each FP8 layer shape once per compiled variant its kernels can reach, so that no request waits
    for a compilation (about a second each) and a kernel that fails to compile fails the load, not serving.

    Returns the number of calls made. Raises whatever the kernels raise (the loader steps down or stops).
    """
    from .fp8_tiles import warm_rows

    calls = 0
    seen: set[tuple[int, int, str]] = set()
    for layer in (m for m in model.modules() if isinstance(m, Fp8Linear)):
        kernels = layer.kernels
        key = (layer.out_features, layer.in_features, kernels.describe())
        if key in seen or not kernels.decode.compiled:
            continue
        seen.add(key)
        max_rows = kernels.prefill_min_rows - 1 if kernels.prefill is not None else WARM_MAX_ROWS
        for rows in warm_rows(layer.out_features, layer.in_features, layer.block, max_rows):
            with torch.inference_mode():
                layer(torch.zeros(rows, layer.in_features, dtype=dtype, device=layer.weight.device))
            calls += 1
    if calls and layer.weight.is_cuda:
        torch.cuda.synchronize(layer.weight.device)  # a fault surfaces here, during the load
    return calls


# --- self-check and choice ---------------------------------------------------------------------------------


def spread_block_weight(out_features: int, in_features: int, block: tuple[int, int], generator) -> torch.Tensor:
    """A random weight whose 128x128 blocks differ in magnitude by up to 2^12 (2^-6..2^6)."""
    rows, cols = -(-out_features // block[0]), -(-in_features // block[1])
    exponents = torch.randint(-6, 7, (rows, cols), generator=generator).float()
    magnitudes = (2.0**exponents).repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    return torch.randn(out_features, in_features, generator=generator) * 0.05 * magnitudes[:out_features, :in_features]


def reference_output(kind: str, x: torch.Tensor, q_weight, scale_inv, block: tuple[int, int]) -> torch.Tensor:
    """What a correct kernel of ``kind`` computes, in FP32 on the CPU."""
    dense = dequantize_block_fp8(q_weight, scale_inv, block, torch.float32)
    x = x.float()
    if kind == "w8a8":  # activations quantized per token and 128 columns, as the kernel does
        group = 128 if x.shape[1] % 128 == 0 else x.shape[1]
        xq, xs = quantize_activations_1x128(x, group)
        x = (xq.float().view(x.shape[0], -1, group) * xs.unsqueeze(-1)).view_as(x)
    return x @ dense.t()


def self_check(
    kernel: Fp8Kernel,
    device: torch.device,
    block: tuple[int, int] = (128, 128),
    shapes: Sequence[tuple[int, int]] = SELF_CHECK_SHAPES,
    dtype: torch.dtype = torch.bfloat16,
) -> str | None:
    """Run ``kernel`` on each layer shape and row count against its class's reference; None if it agrees.

    Raises:
        Fp8DeviceFault: the kernel faulted the GPU; CUDA cannot be used again in this process.
    """
    generator = torch.Generator().manual_seed(0)
    for out_features, in_features in shapes:
        q_weight, scale_inv = quantize_block_fp8(
            spread_block_weight(out_features, in_features, block, generator), block, scale_dtype=torch.float32
        )
        on_device = q_weight.to(device), scale_inv.to(device)
        for rows in SELF_CHECK_ROWS:
            x = torch.randn(rows, in_features, generator=generator).to(dtype)
            reference = reference_output(kernel.kind, x, q_weight, scale_inv, block)
            try:
                out = kernel(x.to(device), *on_device, block).float().cpu()  # .cpu() waits: faults surface here
            except Exception as exc:  # any failure of a kernel means "unavailable", with its reason
                if is_sticky_cuda_fault(exc):
                    raise Fp8DeviceFault(f"the {kernel.name} FP8 kernel faulted the GPU: {_first_line(exc)}") from exc
                return f"{type(exc).__name__}: {_first_line(exc)}"
            if out.shape != reference.shape:
                return f"wrong output shape {tuple(out.shape)} for {rows}x{in_features} @ {in_features}x{out_features}"
            error = ((out - reference).abs().max() / reference.abs().max().clamp(min=1e-30)).item()
            if not error <= SELF_CHECK_MAX_ERROR:
                return (
                    f"wrong results (error {error:.1%} of the largest output) for "
                    f"{rows}x{in_features} @ {in_features}x{out_features}"
                )
    return None


def select_fp8_kernels(
    device: torch.device,
    block: tuple[int, int] | None,
    *,
    shapes: Sequence[tuple[int, int]] = SELF_CHECK_SHAPES,
    fp8_hardware: bool = True,
    dtype: torch.dtype = torch.bfloat16,
    kernels: Sequence[KernelSpec] | None = None,
) -> tuple[Fp8Kernels, list[str]]:
    """The kernels that pass the self-check (a W8A16 one preferred for decoding), with why others were not used.

    Args:
        device: where the model runs.
        block: the checkpoint's quantization block (None for per-tensor scales, which are not served in FP8).
        shapes: the model's distinct (out_features, in_features) of its FP8 layers.
        fp8_hardware: the GPU converts FP8 in hardware (compute capability >= 8.9).
        dtype: the activations' dtype (BF16, or FP16 where BF16 is not native).
        kernels: replaces ``KERNELS`` (tests).
    Raises:
        Fp8KernelUnavailable: none works; the message names each kernel and why.
        Fp8DeviceFault: a kernel faulted the GPU.
    """
    if block is None:
        raise Fp8KernelUnavailable("per-tensor FP8 scales are served by dequantizing, not by an FP8 kernel")
    notes: list[str] = []
    passed: list[Fp8Kernel] = []
    for spec in KERNELS if kernels is None else kernels:
        if spec.needs_fp8_hardware and not fp8_hardware:
            continue
        try:
            kernel = spec.build()
        except Exception as exc:  # ImportError, or anything else a kernel's set-up raises
            notes.append(f"{spec.name}: {_first_line(exc)}")
            continue
        problem = self_check(kernel, device, block, shapes, dtype)
        if problem is None:
            passed.append(kernel)
        else:
            notes.append(f"{spec.name}: {problem}")
    if not passed:
        raise Fp8KernelUnavailable("no working FP8 matmul kernel (" + "; ".join(notes) + ")")
    w8a16 = [k for k in passed if k.kind == "w8a16"]
    decode = (w8a16 or passed)[0]
    prefill = next((k for k in passed if k.kind == "w8a8" and k.name == "torch-scaled-mm" and k is not decode), None)
    return Fp8Kernels(decode, prefill), notes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
