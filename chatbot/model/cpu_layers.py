"""CPU inference layers: 16-bit weights for decode, the fastest dtype for prefill.

Decoding one token is bound by memory bandwidth, so weights stored in 16 bits (half the bytes of
FP32) decode about twice as fast. Prompt processing (prefill) is bound by matmul throughput: on CPUs
without native 16-bit matmul units (AVX2) an FP32 GEMM is 3-4x faster than an FP16/BF16 one, while
CPUs with AVX512-BF16 or AMX run BF16 fastest. So the residual stream stays FP32, the linear layers
keep 16-bit weights, and each matmul picks its path by the number of rows it multiplies: few rows
(decode) use the 16-bit weights as stored; many rows (prefill) use a copy in the prefill dtype,
made once at load (``QWEN_CPU_PREFILL_COPY=0`` converts on the fly instead, saving that memory).
``QWEN_CPU_PREFILL_DTYPE=fp32|bf16|fp16`` forces the prefill dtype.

Batched decode (several requests, one row each) sits in between. Measured on a 2-core AVX512-BF16
CPU over half of Qwen3-0.6B's matrices (torch 2.13): an FP16 matmul costs about as many times one
row's time as it has rows (16 ms for 1 row, 32 for 2, 53 for 4, 126 for 8), while the BF16 prefill
copy takes nearly the same time for 2 to 16 rows (27-42 ms). So with a prefill copy, matmuls of more
than ``BATCHED_DECODE_ROWS`` (one) row use it (``QWEN_CPU_DECODE_ROWS=N`` moves that limit, at most
16), and the output head gets a copy too. A request's reply is then the same token for token in any
batch of two or more as in any other, and alone up to ``QWEN_CPU_DECODE_ROWS`` rows; a batch decoding
in the prefill dtype can change the last bits of the logits against the request alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..settings import tuning
from .device import cpu_flags

DECODE_MAX_ROWS = 16  # up to this many rows a matmul reads weights more than it computes
BATCHED_DECODE_ROWS = 1  # beyond this many rows the prefill copy is faster (measured; module docstring)
DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class PrefillChoice:
    dtype: torch.dtype
    why: str
    copy: bool  # keep a converted copy of the weights for prefill

    def describe(self) -> str:
        how = "a copy made at load" if self.copy else "weights converted on the fly"
        return f"prefill in {short_name(self.dtype)} ({self.why}; {how})"


def short_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPE_NAMES.items()}[dtype].upper()


def vector_isa() -> str:
    """The instruction set torch's CPU kernels use ("AVX512", "AVX2"...; ATEN_CPU_CAPABILITY can lower it)."""
    return torch.backends.cpu.get_cpu_capability()


def choose_prefill_dtype(
    storage_dtype: torch.dtype,
    flags: frozenset[str] | None = None,
    environ: dict[str, str] | None = None,
    isa: str | None = None,
) -> PrefillChoice:
    """The prefill dtype for this CPU (measured by ``python -m chatbot bench``; see the README).

    Raises:
        ValueError: QWEN_CPU_PREFILL_DTYPE names no dtype.
    """
    switches = tuning(environ)
    flags = cpu_flags() if flags is None else flags
    isa = vector_isa() if isa is None else isa
    copy = switches.cpu_prefill_copy
    forced = switches.cpu_prefill_dtype
    if forced != "auto":
        dtype, why = DTYPE_NAMES[forced], "QWEN_CPU_PREFILL_DTYPE"
    elif any(flag in flags for flag in NATIVE_BF16_FLAGS) and isa != "AVX2":
        dtype, why = torch.bfloat16, "this CPU has native BF16 matmul instructions"
    else:
        dtype, why = torch.float32, "FP32 matmuls beat 16-bit ones on CPUs without native BF16"
    return PrefillChoice(dtype, why, copy and dtype != storage_dtype)


class CpuLinear(nn.Module):
    """``nn.Linear`` with 16-bit stored weights and FP32 inputs/outputs (see the module docstring)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, storage_dtype: torch.dtype, prefill_dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.prefill_dtype = prefill_dtype
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=storage_dtype, device="meta"), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=storage_dtype, device="meta"), requires_grad=False)
            if bias
            else None
        )
        # Plain attribute, not a buffer: it is a cache of ``weight`` and must not be saved with the model.
        self.prefill_weight: torch.Tensor | None = None
        self.prefill_packed = False  # prefill_weight is in oneDNN's blocked layout
        self.decode_rows = DECODE_MAX_ROWS  # most rows that use the stored 16-bit weights
        self.fp32_decode = False  # set after an FP16 overflow (see use_fp32_decode)

    def keep_prefill_copy(self, decode_rows: int = BATCHED_DECODE_ROWS, pack: bool = False) -> None:
        """Convert the weight to the prefill dtype once, instead of at every prefill; with that copy,
        matmuls of more than ``decode_rows`` rows use it. ``pack``: a BF16 copy in oneDNN's blocked
        layout (see ``packing_works``)."""
        if self.prefill_dtype != self.weight.dtype:
            copy = self.weight.detach().to(self.prefill_dtype)
            self.prefill_packed = pack and self.prefill_dtype == torch.bfloat16
            self.prefill_weight = _pack(copy) if self.prefill_packed else copy
            self.decode_rows = min(decode_rows, DECODE_MAX_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        rows = x.numel() // x.shape[-1]
        if rows <= self.decode_rows:
            if self.fp32_decode:
                return F.linear(x.float(), weight.float(), _cast(self.bias, torch.float32)).to(x.dtype)
            return F.linear(x.to(weight.dtype), weight, _cast(self.bias, weight.dtype)).to(x.dtype)
        dtype = self.prefill_dtype
        if self.prefill_packed:
            return _packed_linear(x.to(dtype), self.prefill_weight, _cast(self.bias, dtype)).to(x.dtype)
        prefill_weight = self.prefill_weight if self.prefill_weight is not None else weight.to(dtype)
        return F.linear(x.to(dtype), prefill_weight, _cast(self.bias, dtype)).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"weights={self.weight.dtype}, prefill={self.prefill_dtype}"
        )


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, 1)


def _packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def packing_works(environ: dict[str, str] | None = None) -> bool:
    """Whether BF16 prefill copies can be kept pre-packed for oneDNN (``QWEN_CPU_PREFILL_PACK=0``: never).

    A plain BF16 weight is re-laid-out by oneDNN inside every matmul; packed once at load, the BF16
    matmuls of batched decode ran 1.3-1.7x faster (2 to 8 rows, measured on a 2-core AVX512-BF16
    CPU over half of Qwen3-0.6B's matrices), with the same results bit for bit, which is checked here
    on a small layer (and any error from a PyTorch built without oneDNN means no packing).
    """
    if not tuning(environ).cpu_prefill_pack:
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(48, 64, generator=generator).bfloat16()
        x = torch.randn(2, 5, 64, generator=generator).bfloat16()
        with torch.inference_mode():
            return torch.equal(_packed_linear(x, _pack(weight), None), F.linear(x, weight))
    except Exception:  # no oneDNN, or an operator this build lacks: plain copies
        return False


def _cast(bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if bias is None else bias.to(dtype)


class CpuEmbedding(nn.Embedding):
    """Embedding table kept in 16 bits; looked-up rows are returned in the compute dtype."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None,
        storage_dtype: torch.dtype,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx, device="meta", dtype=storage_dtype)
        self.weight.requires_grad_(False)
        self.compute_dtype = compute_dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids).to(self.compute_dtype)


def use_fp32_decode(model: nn.Module) -> bool:
    """After an FP16 overflow (a known Qwen3 risk with large activations): decode FP16 layers in FP32.

    Returns whether the model has such layers (the caller then recomputes the step).
    """
    layers = [m for m in model.modules() if isinstance(m, CpuLinear) and m.weight.dtype == torch.float16]
    switched = [m for m in layers if not m.fp32_decode]
    for module in switched:
        module.fp32_decode = True
    step = getattr(model, "qwen_decode_step", None)  # the compiled step (cpu_decode) decodes from the FP16 weights
    if step is not None and step.enabled and layers:
        step.enabled = False
        return True
    return bool(switched)


def batched_decode_rows(environ: dict[str, str] | None = None) -> int:
    """Most rows a matmul takes from the 16-bit weights when a prefill copy exists (QWEN_CPU_DECODE_ROWS).

    Raises:
        ValueError: QWEN_CPU_DECODE_ROWS is not a whole number from 1 to 16.
    """
    rows = tuning(environ).cpu_decode_rows
    return BATCHED_DECODE_ROWS if rows is None else rows


def keep_prefill_copies(model: nn.Module) -> int:
    """Give every CPU linear layer its prefill copy; returns the bytes added.

    The output head sees one row per request (``logits_to_keep=1``): its copy serves batched decode.
    """
    decode_rows = batched_decode_rows()
    pack = packing_works()
    added = 0
    for module in model.modules():
        if isinstance(module, CpuLinear):
            module.keep_prefill_copy(decode_rows, pack)
            if module.prefill_weight is not None:
                added += module.prefill_weight.numel() * module.prefill_weight.element_size()
    return added


def convert_to_cpu_layers(model: nn.Module, storage_dtype: torch.dtype, prefill_dtype: torch.dtype) -> None:
    """Swap every ``nn.Linear`` and the input embedding of a (meta) model for the CPU layers above."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            model.set_submodule(
                name,
                CpuLinear(
                    module.in_features, module.out_features, module.bias is not None, storage_dtype, prefill_dtype
                ),
            )
    embeddings = model.get_input_embeddings()
    replacement = CpuEmbedding(
        embeddings.num_embeddings, embeddings.embedding_dim, embeddings.padding_idx, storage_dtype
    )
    model.set_input_embeddings(replacement)
