"""8-bit CPU weights (``--precision int8``): one byte per weight in memory, decoded inside the matmul.

Generating a token on a CPU reads every weight once, so its speed is set by how many bytes the
weights take (see ``cpu_layers``). Here each linear layer (and the embedding table, which Qwen3-0.6B
shares with its output head) is re-quantized at load, per output channel, to int8 with one FP32
scale per row: ``W ~= q * scale[:, None]``, ``scale = max|row| / 127``, from the checkpoint's own
values (FP8 blocks dequantized first). That is half the bytes of FP16 (about 0.6 GB instead of 1.2 GB
for Qwen3-0.6B) and the scheme torchao's int8 weight-only and llama.cpp's Q8_0 use (Q8_0 with blocks
of 32 columns); its error against the checkpoint is measured for every tensor at load
(``Int8Quality``) and bounded when ``auto`` chooses this mode.

Decode kernels (the first that builds and passes its self-check is used):

* ``dot``: integer dot products over activations quantized to int8 per block of 32, as llama.cpp's
  Q8_0 computes (``cpu_int8_dot``: C++ with AVX512-VNNI, AVX-VNNI or AVX2 code, built at first use with
  the C++ compiler and cached; all decode rows, 1 to 16, in one pass over the weights). Its extra
  error, from rounding the activations, is bounded by ``activation_error_bound``.
* ``inductor``: the matrix-vector product written as a multiply-and-sum over the int8 rows and
  compiled by ``torch.compile`` (Inductor's CPU code generation: C++ vectorized for this CPU's
  instruction set, OpenMP over output rows, int8 -> FP32 conversion in registers). The result is laid
  out ``[out_features, rows]`` so one weight row, read once from memory, serves every row of a
  batched decode step. Needs a C++ compiler (gcc/clang) at run time; compiled code is cached on disk
  by torch (``TORCHINDUCTOR_CACHE_DIR``), so later starts take seconds.
* ``aten``: PyTorch's own ``_weight_int8pack_mm`` (BF16 activations) where nothing can be compiled,
  or where the compiled code fails its self-check. It does with AVX2 code in torch 2.13: Inductor's
  vectorized int8 -> FP32 conversion there gives wrong sums (84% off, caught by the self-check;
  reproduce with ``ATEN_CPU_CAPABILITY=avx2``).

Prompts (more rows than ``decode_rows``) dequantize each layer's weights to the prefill dtype right
before its matmul; no copy is kept, so the mode's memory stays at one byte per weight.
"""

from __future__ import annotations

import ctypes
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_int8_dot
from .cpu_layers import DECODE_MAX_ROWS

log = logging.getLogger(__name__)
QMAX = 127
QUANT_CHUNK_ROWS = 8192  # quantize large tables (the 151,936-row embedding) in slices of this many rows
MAX_RMS_ERROR = 0.02  # auto keeps INT8 only when every tensor is this close to the checkpoint's values
SELF_CHECK_MAX_ERROR = 0.01  # kernel vs FP32 reference, relative to the largest output (BF16 inputs: ~0.4%)
OUTLIER_GAIN = 50.0  # the self-check's outlier channels: this many times the others (trained models have such)
SELF_CHECK_MAX_ROWS = 1000  # output rows of each self-check layer (a 151,936-row head would cost 1 GB)
SPEED_SAMPLE_BYTES = 192 * 2**20  # FP16 bytes timed when measuring: beyond the caches of common CPUs
MIN_SPEEDUP = 1.1  # auto picks INT8 only when its decode matmuls are at least this much faster

KernelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x [M, K], q, scale) -> [M, N]


class Int8KernelUnavailable(RuntimeError):
    """No int8 matmul kernel works here; the message gives each kernel's reason."""


# --- quantization ----------------------------------------------------------------------------------------------


@dataclass
class Int8Quality:
    """The worst relative RMS error of the int8 weights against the values they were made from."""

    worst: float = 0.0
    worst_name: str = ""

    def add(self, name: str, error: float) -> None:
        if error > self.worst:
            self.worst, self.worst_name = error, name

    def describe(self) -> str:
        return f"int8 weights within {self.worst:.2%} RMS of the checkpoint's (worst: {self.worst_name})"


def quantize_per_channel(
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Symmetric int8 per output row, in slices so a large table never exists in FP32 at once.

    Args:
        weight: [N, K] in any float dtype.
    Returns:
        (int8 weights [N, K], FP32 scales [N], relative RMS error of the result against ``weight``)
    """
    rows = weight.shape[0]
    quantized = torch.empty(weight.shape, dtype=torch.int8)
    scales = torch.empty(rows, dtype=torch.float32)
    error_sq = total_sq = 0.0
    for start in range(0, rows, QUANT_CHUNK_ROWS):
        dense = weight[start : start + QUANT_CHUNK_ROWS].float()
        scale = dense.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / QMAX
        q = torch.round(dense / scale[:, None]).clamp_(-QMAX, QMAX)
        error_sq += float((q * scale[:, None] - dense).square().sum())
        total_sq += float(dense.square().sum())
        quantized[start : start + QUANT_CHUNK_ROWS] = q.to(torch.int8)
        scales[start : start + QUANT_CHUNK_ROWS] = scale
    return quantized, scales, (error_sq / total_sq) ** 0.5 if total_sq else 0.0


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``; elsewhere nothing).

    Quantizing hundreds of layers allocates and frees FP32 temporaries of 1-12 MB; measured on
    Qwen3-0.6B, glibc kept about 1 GB of them resident after they were freed (peak memory 2.5 GB for
    0.6 GB of weights). Trimming after each tensor keeps the load's peak near the final size.
    """
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator returns memory on its own terms
        return
    trim(0)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale[:, None]).to(dtype)


# --- kernels ---------------------------------------------------------------------------------------------------


def _int8_matvec(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[M, K] x int8 [N, K] -> [M, N]; computed as [N, M] so each weight row is read once for all M rows."""
    products = q.unsqueeze(1).to(torch.float32) * x.unsqueeze(0)  # never materialized: Inductor fuses the sum
    return (products.sum(-1) * scale.unsqueeze(1)).t()


def _aten_matvec(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), q, scale.to(torch.bfloat16)).float()


def activation_error_bound(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The most that rounding x to int8 per block of 32 (the ``dot`` kernel) can move each output: [M, N].

    Each activation moves by at most half its block's step (``max|block| / 127``), so an output moves by
    at most the sum of |weight| times that half step. Exact kernels stay far below it.
    """
    rows, columns = x.shape
    padded = F.pad(x.float(), (0, -columns % cpu_int8_dot.BLOCK))  # a last partial block, for other widths
    blocks = padded.reshape(rows, -1, cpu_int8_dot.BLOCK)
    half_step = (blocks.abs().amax(-1, keepdim=True) / (2 * QMAX)).expand_as(blocks).reshape(rows, -1)
    return half_step[:, :columns] @ (q.float().abs() * scale.float()[:, None]).t()


def _dot_kernel() -> KernelFn:
    return cpu_int8_dot.dot_kernel(cpu_int8_dot.chosen_isa())


def _inductor_kernel() -> KernelFn:
    return torch.compile(_int8_matvec, dynamic=True, fullgraph=True)


def _aten_kernel() -> KernelFn:
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        raise RuntimeError("this PyTorch has no _weight_int8pack_mm")
    return _aten_matvec


KERNELS: dict[str, Callable[[], KernelFn]] = {"dot": _dot_kernel, "inductor": _inductor_kernel, "aten": _aten_kernel}


@dataclass(frozen=True)
class Int8Kernel:
    name: str
    fn: KernelFn
    skipped: tuple[str, ...] = ()  # "name: why" for kernels tried before this one
    error: float = 0.0  # the self-check's largest error on Gaussian inputs, relative to the largest output

    @property
    def isa(self) -> str:
        """The instruction set of the ``dot`` kernel ("" for the others)."""
        return getattr(self.fn, "isa", "")

    def describe(self) -> str:
        name = f"{self.name} ({self.isa})" if self.isa else self.name
        return name + (f" ({'; '.join(self.skipped)})" if self.skipped else "")


def _self_check(fn: KernelFn, shapes: Sequence[tuple[int, int]]) -> float:
    """The kernel on the model's layer shapes with 1, 2 and 3 rows, against an FP32 reference.

    Gaussian inputs must come within ``SELF_CHECK_MAX_ERROR`` of the largest output; inputs with
    outlier channels within ``activation_error_bound`` plus that much. Weights made outside inference
    mode and inputs inside it, as in generation: the compiled code then matches the model's calls and is
    ready before the first token. Returns the largest relative error on the Gaussian inputs.
    """
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for out_features, in_features in shapes:
        # The kernel is compiled for any number of output rows: a slice of a large layer checks it as well.
        out_features = min(out_features, SELF_CHECK_MAX_ROWS)
        weight = torch.randn(out_features, in_features, generator=generator)
        weight[:, : in_features // 3] *= 64  # rows whose columns differ in magnitude
        q, scale, _ = quantize_per_channel(weight)
        dense = dequantize(q, scale, torch.float32)
        with torch.inference_mode():
            for rows in (1, 2, 3):
                x = torch.randn(rows, in_features, generator=generator)
                reference = F.linear(x, dense)
                out = fn(x, q, scale)
                error = float((out - reference).abs().max() / reference.abs().max())
                if tuple(out.shape) != (rows, out_features) or not error <= SELF_CHECK_MAX_ERROR:
                    raise RuntimeError(f"{error:.1e} off an FP32 reference on a {out_features}x{in_features} layer")
                worst = max(worst, error)
                x[:, 1::37] *= OUTLIER_GAIN
                reference = F.linear(x, dense)
                allowed = activation_error_bound(x, q, scale) + SELF_CHECK_MAX_ERROR * reference.abs().max()
                excess = float(((fn(x, q, scale) - reference).abs() - allowed).max())
                if not excess <= 0:
                    raise RuntimeError(
                        f"beyond its error bound on inputs with outlier channels ({out_features}x{in_features} layer)"
                    )
    return worst


@cache
def select_int8_kernel(shapes: tuple[tuple[int, int], ...] = ((96, 64),)) -> Int8Kernel:
    """The first kernel that builds and passes its self-check on these (out, in) shapes.

    Raises:
        Int8KernelUnavailable: no kernel works; the message lists why for each.
    """
    skipped: list[str] = []
    for name, factory in KERNELS.items():
        try:
            fn = factory()
            error = _self_check(fn, shapes)
        except Exception as exc:  # a compiler missing or failing surfaces as many exception types
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log.warning("int8 kernel %s unavailable: %s", name, reason)
            skipped.append(f"{name}: {reason}")
            continue
        return Int8Kernel(name, fn, tuple(skipped), error)
    raise Int8KernelUnavailable("no int8 CPU kernel works here: " + "; ".join(skipped))


# --- layers ----------------------------------------------------------------------------------------------------


class CpuInt8Linear(nn.Module):
    """A linear layer with int8 weights and per-row FP32 scales; FP32 inputs and outputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool, prefill_dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.prefill_dtype = prefill_dtype
        # Buffers, not parameters: the compiled kernel then takes them as plain tensors of any shape.
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device="meta"))
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=torch.float32, device="meta"), requires_grad=False)
            if bias
            else None
        )
        # Filled with the weight by the loader; not saved (a checkpoint holds the original values).
        self.register_buffer("weight_scale", torch.ones(out_features), persistent=False)
        self.kernel: Int8Kernel | None = None
        self.decode_rows = DECODE_MAX_ROWS
        # Up to this many rows use ``kernel``; more (up to decode_rows) use ``batch_kernel`` when set.
        self.single_rows = DECODE_MAX_ROWS
        self.batch_kernel: KernelFn | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        rows = flat.shape[0]
        if rows <= self.decode_rows and self.batch_kernel is not None and rows > self.single_rows:
            out = self.batch_kernel(flat, self.weight, self.weight_scale)
            if self.bias is not None:
                out = out + self.bias
        elif rows <= self.decode_rows and self.kernel is not None:
            if flat.storage_offset() or not flat.is_contiguous() or flat.dtype != torch.float32:
                flat = flat.float().clone()  # one layout for the compiled kernel (a view would recompile it)
            out = self.kernel.fn(flat, self.weight, self.weight_scale)
            if self.bias is not None:
                out = out + self.bias
        else:
            dtype = self.prefill_dtype
            weight = dequantize(self.weight, self.weight_scale, dtype)
            out = F.linear(flat.to(dtype), weight, None if self.bias is None else self.bias.to(dtype))
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        kernel = self.kernel.name if self.kernel else "none"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, kernel={kernel}"


class CpuInt8Embedding(nn.Module):
    """Embedding table in int8 with per-row scales (shared with the output head when tied)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device="meta"))
        self.register_buffer("weight_scale", torch.ones(num_embeddings), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.weight[input_ids].float() * self.weight_scale[input_ids].unsqueeze(-1)


def convert_to_int8_layers(model: nn.Module, prefill_dtype: torch.dtype) -> None:
    """Swap every ``nn.Linear`` and the input embedding of a (meta) model for the int8 layers above."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            replacement = CpuInt8Linear(module.in_features, module.out_features, module.bias is not None, prefill_dtype)
            model.set_submodule(name, replacement)
    embeddings = model.get_input_embeddings()
    model.set_input_embeddings(
        CpuInt8Embedding(embeddings.num_embeddings, embeddings.embedding_dim, embeddings.padding_idx)
    )


def attach_kernel(model: nn.Module, kernel: Int8Kernel, single_rows: int = DECODE_MAX_ROWS) -> None:
    """Give the int8 layers their decode kernel; with the ``inductor`` kernel and ``single_rows`` < 16,
    batched decode steps of more rows use PyTorch's ``_weight_int8pack_mm`` (see ``batch_kernel``). The
    ``dot`` kernel reads each weight row once for all rows, so it takes every decode step itself."""
    batch = batch_kernel() if single_rows < DECODE_MAX_ROWS and kernel.name == "inductor" else None
    for module in model.modules():
        if isinstance(module, CpuInt8Linear):
            module.kernel = kernel
            module.single_rows = single_rows if batch is not None else DECODE_MAX_ROWS
            module.batch_kernel = batch


@cache
def batch_kernel() -> KernelFn | None:
    """The kernel for batched decode rows, or None where it fails its self-check.

    The compiled kernel converts each int8 weight to FP32 once per row, so its time grows with the
    rows (measured on a 2-core AVX512-BF16 CPU over half of Qwen3-0.6B's matrices: 13, 27, 52 ms at
    1, 2, 4 rows); PyTorch's ``_weight_int8pack_mm`` (BF16 activations) took 17, 16, 20, 38 ms at 1, 2,
    4, 8 rows. A row's result then differs in its last bits from the same row alone.
    """
    try:
        fn = _aten_kernel()
        _self_check(fn, ((96, 64),))
    except Exception as exc:  # an operator this build lacks, or a wrong result
        log.warning("batched int8 decode keeps the single-row kernel: %s", exc)
        return None
    return fn


def set_int8_tensor(module: nn.Module, q: torch.Tensor, scale: torch.Tensor) -> None:
    module._buffers["weight"] = q
    module._buffers["weight_scale"] = scale


# --- the measurement behind the automatic choice ---------------------------------------------------------------


def linear_shapes(config: dict) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(one decoder layer's (out, in) projection shapes, the output head's) from a Qwen3 config.json."""
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // int(config["num_attention_heads"]))
    heads, kv_heads = int(config["num_attention_heads"]), int(config.get("num_key_value_heads") or 0)
    kv_heads = kv_heads or heads
    inter = int(config["intermediate_size"])
    layer = [
        (heads * head_dim, hidden),
        (kv_heads * head_dim, hidden),
        (kv_heads * head_dim, hidden),
        (hidden, heads * head_dim),
        (inter, hidden),
        (inter, hidden),
        (hidden, inter),
    ]
    return layer, (int(config["vocab_size"]), hidden)


def fp16_weight_bytes(config: dict) -> int:
    """Bytes the matmul weights take in 16 bits (what a decoded token reads in FP16 mode)."""
    layer, head = linear_shapes(config)
    per_layer = sum(n * k for n, k in layer)
    return 2 * (per_layer * int(config["num_hidden_layers"]) + head[0] * head[1])


@dataclass(frozen=True)
class Int8Speed:
    """Decode matmuls over the same layer shapes, int8 kernel against FP16 ``F.linear`` (medians, ms)."""

    int8_ms: float
    fp16_ms: float
    sample_mib: int
    kernel: str

    @property
    def speedup(self) -> float:
        return self.fp16_ms / self.int8_ms

    @property
    def faster(self) -> bool:
        return self.speedup >= MIN_SPEEDUP

    def describe(self) -> str:
        return (
            f"decode matmuls measured {self.speedup:.2f}x FP16's speed on this CPU "
            f"({self.int8_ms:.1f} vs {self.fp16_ms:.1f} ms over {self.sample_mib} MiB of FP16 weights, "
            f"{self.kernel} kernel)"
        )


@cache
def measure_int8_speed(layer_shapes: tuple[tuple[int, int], ...], pairs: int = 5) -> Int8Speed:
    """Time the int8 kernel against FP16 ``F.linear`` on random weights of the model's layer shapes.

    Speed does not depend on the values; enough layers are stacked (``SPEED_SAMPLE_BYTES`` of FP16)
    that the weights come from memory, not from a cache, as they do when a token is generated.
    Interleaved pairs, median of each. Raises ``Int8KernelUnavailable`` when no kernel works.
    """
    kernel = select_int8_kernel(tuple(sorted(set(layer_shapes))))
    per_layer = sum(2 * n * k for n, k in layer_shapes)
    layers = max(1, SPEED_SAMPLE_BYTES // per_layer)
    generator = torch.Generator().manual_seed(0)
    fp16, int8 = [], []
    for _ in range(layers):  # made in their final dtype: no FP32 copy of 192 MiB of weights at load
        for n, k in layer_shapes:
            fp16.append(torch.randn(n, k, generator=generator, dtype=torch.float16))
            q = torch.randint(-QMAX, QMAX + 1, (n, k), generator=generator, dtype=torch.int8)
            int8.append((q, torch.rand(n, generator=generator) / QMAX))
    inputs = {k: torch.randn(1, k, generator=generator) for _, k in layer_shapes}

    def run_fp16() -> None:
        for weight in fp16:
            F.linear(inputs[weight.shape[1]].half(), weight)

    def run_int8() -> None:
        for q, scale in int8:
            kernel.fn(inputs[q.shape[1]], q, scale)

    times: dict[str, list[float]] = {"fp16": [], "int8": []}
    with torch.inference_mode():
        run_fp16(), run_int8()  # warm-up
        for _ in range(pairs):
            for name, fn in (("fp16", run_fp16), ("int8", run_int8)):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000)
    return Int8Speed(
        statistics.median(times["int8"]),
        statistics.median(times["fp16"]),
        layers * per_layer // 2**20,
        kernel.name,
    )
