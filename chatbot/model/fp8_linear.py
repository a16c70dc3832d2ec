"""Native FP8 linear layers for CUDA GPUs with FP8 tensor cores (compute capability >= 8.9).

The weights stay FP8 in GPU memory (about half of FP16) with their 128x128 block scales. Three
matmul kernels are tried, each only after it passes a numerical self-check on this GPU against a
dequantized reference, so nothing is fetched from the network at run time:

1. ``torch-scaled-mm``: ``torch.nn.functional.scaled_mm`` with block-wise scales (activations
   quantized per 1x128 group on the fly, weights per 128x128 block); cuBLAS, Hopper (9.x).
2. ``triton``: this package's Triton kernel: FP8 weights dequantized per tile inside the matmul
   (16-bit activations); Ada and Hopper.
3. ``transformers``: transformers' own fine-grained FP8 kernels, used only where its ``kernels``
   package can provide them (it downloads them from the hub, so never offline).

If none passes, the loader steps down to FP16 and says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .fp8 import FP8_DTYPE, FP8_MAX, dequantize_block_fp8, quantize_block_fp8

log = logging.getLogger(__name__)
KernelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]
SELF_CHECK_MIN_COSINE = 0.999


class Fp8KernelUnavailable(RuntimeError):
    """No FP8 matmul kernel works on this device; the message lists each kernel's reason."""


@dataclass(frozen=True)
class Fp8Kernel:
    name: str
    fn: KernelFn


class Fp8Linear(nn.Module):
    """Linear layer with FP8 weights and block scales; activations and output in BF16."""

    def __init__(self, in_features: int, out_features: int, block: tuple[int, int], kernel: Fp8Kernel) -> None:
        super().__init__()
        self.in_features, self.out_features, self.block, self.kernel = in_features, out_features, block, kernel
        rows, cols = -(-out_features // block[0]), -(-in_features // block[1])
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=FP8_DTYPE, device="meta"), requires_grad=False
        )
        self.weight_scale_inv = nn.Parameter(
            torch.empty(rows, cols, dtype=torch.float32, device="meta"), requires_grad=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = self.kernel.fn(x.reshape(-1, shape[-1]), self.weight, self.weight_scale_inv, self.block)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel.name}"


# --- kernel 1: torch scaled_mm with block-wise scales -----------------------------------------------------


def quantize_activations_1x128(x: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token, per-128-column quantization: (fp8 [M, K], float32 scales [M, K/group])."""
    rows, cols = x.shape
    grouped = x.float().view(rows, cols // group, group)
    scale = (grouped.abs().amax(dim=-1) / FP8_MAX).clamp(min=1e-12)
    quantized = (grouped / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).view(rows, cols)
    return quantized, scale


def scaled_mm_arguments(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]):
    """Arguments for ``F.scaled_mm`` in the layouts cuBLAS requires for 1x128 x 128x128 scaling.

    - A = activations [M, K] FP8 with scales [M, K/128], outer-dim-major (stride (1, M));
    - B = weight.T [K, N] with scales padded to a multiple of 4 along K and given as [L4, N/128].
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
    k_blocks = scale_inv.shape[1]
    w_scale = F.pad(scale_inv.float(), (0, (-k_blocks) % 4)).t()
    return (x_fp8, weight.t(), x_scale, w_scale), rows


def _scaled_mm_kernel(
    x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]
) -> torch.Tensor:
    (a, b, scale_a, scale_b), rows = scaled_mm_arguments(x, weight, scale_inv, block)
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


# --- kernel 2: Triton, FP8 weights dequantized per tile ----------------------------------------------------


def _triton_kernel() -> KernelFn:
    import triton  # noqa: F401  (ImportError -> kernel unavailable)

    from .fp8_triton import w8a16_block_matmul

    return w8a16_block_matmul


# --- kernel 3: transformers' fine-grained FP8 (hub-fetched kernels) ---------------------------------------


def _transformers_kernel() -> KernelFn:
    from transformers.utils.import_utils import is_kernels_available

    if not is_kernels_available():
        raise ImportError("the `kernels` package is not installed (and it would download kernels from the hub)")
    from transformers.integrations.finegrained_fp8 import fp8_linear

    def run(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
        return fp8_linear(x.to(torch.bfloat16), weight, scale_inv, list(block)).to(x.dtype)

    return run


KERNEL_FACTORIES: dict[str, Callable[[], KernelFn]] = {
    "torch-scaled-mm": lambda: _scaled_mm_kernel,
    "triton": _triton_kernel,
    "transformers": _transformers_kernel,
}


def self_check(fn: KernelFn, device: torch.device, block: tuple[int, int] = (128, 128)) -> str | None:
    """Run ``fn`` on random data against the dequantized reference; None if it agrees, else why not."""
    generator = torch.Generator().manual_seed(0)
    for rows in (1, 37):
        weight = torch.randn(384, 256, generator=generator) * 0.05
        x = torch.randn(rows, 256, generator=generator)
        q_weight, scale_inv = quantize_block_fp8(weight, block, scale_dtype=torch.float32)
        reference = x @ dequantize_block_fp8(q_weight, scale_inv, block, torch.float32).t()
        try:
            out = fn(x.to(device, torch.bfloat16), q_weight.to(device), scale_inv.to(device), block)
        except (RuntimeError, ValueError, NotImplementedError, TypeError, AttributeError) as exc:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        out = out.float().cpu()
        if out.shape != reference.shape:
            return f"wrong output shape {tuple(out.shape)}"
        cosine = F.cosine_similarity(out.flatten(), reference.flatten(), dim=0).item()
        if not cosine >= SELF_CHECK_MIN_COSINE:
            return f"wrong results (cosine similarity {cosine:.4f} with the reference)"
    return None


def select_fp8_kernel(
    device: torch.device, block: tuple[int, int] | None, factories: dict[str, Callable[[], KernelFn]] | None = None
) -> tuple[Fp8Kernel, list[str]]:
    """First kernel that loads and passes the self-check, with the reasons the others were skipped.

    Raises:
        Fp8KernelUnavailable: none works; the message names each kernel and why.
    """
    if block is None:
        raise Fp8KernelUnavailable("per-tensor FP8 scales are served by dequantizing, not by an FP8 kernel")
    notes = []
    for name, factory in (factories or KERNEL_FACTORIES).items():
        try:
            fn = factory()
        except ImportError as exc:
            notes.append(f"{name}: {exc}")
            continue
        problem = self_check(fn, device, block)
        if problem is None:
            return Fp8Kernel(name, fn), notes
        notes.append(f"{name}: {problem}")
    raise Fp8KernelUnavailable("no working FP8 matmul kernel (" + "; ".join(notes) + ")")
