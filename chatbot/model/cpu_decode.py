"""A compiled decode step for Qwen3 on the CPU: the same arithmetic as transformers', without its overhead.

Decoding one token reads every weight once, so on a CPU it should take about the time the memory
needs to deliver the weights. transformers' eager decoder adds several hundred small operations per
token around the matrix products (RMSNorm's pow/mean/rsqrt/mul, rotary embeddings, reshapes, the
attention call's checks, output dataclasses), each a few microseconds of Python and dispatch:
measured on a 2-core AVX512 CPU with Qwen3-0.6B, 10-15 ms of a 50 ms token. This step does the
same computation in three pieces per token, each compiled by ``torch.compile`` (Inductor's CPU code
generation fuses every elementwise operation and reduction around the matmuls into a few C++ loops):

* ``pre`` (per layer): input RMSNorm, one matmul for q, k and v together (their weights stacked
  into one matrix at load; the layers' own weights become views of it, so no memory is added),
  q/k RMSNorm, rotary embedding;
* attention (eager, per request): the new key and value go into the request's own growing cache
  (the one the prefill and the conversation cache use, 16-bit on the CPU), then softmax(q k^T) v over
  the grouped heads, read from the cache as stored (``kv_attention.attend``);
* ``post`` (per layer): output projection, residual, RMSNorm, gate and up in one matmul (stacked
  too), SiLU-and-multiply, down projection, residual; and ``head``: final norm and output matmul.

The matmuls are those of the loaded layers: FP16/BF16 weights through PyTorch's ``F.linear`` (as
``CpuLinear`` does), or the int8 weights through the kernel the layers use (``cpu_int8``): the
int8 dot-product operator of ``cpu_int8_dot``, called from the compiled graph; the int8
matrix-vector product written inside the graph, so Inductor fuses it with the code around it; or
PyTorch's own ``_weight_int8pack_mm``. Used for decode
steps of a lone request (one new token); prompts keep transformers' forward, which is bound by its
matmuls, and so do batched steps, which decode from the prefill copies (``cpu_layers``): measured
with several rows, this step was no faster there (the matmuls dominate). Its logits differ from
transformers' step in the last bits only (the fused code rounds at other points).

With AVX2 code (CPUs without AVX-512) the fused code is compiled unvectorized (``vectorize_ok``):
torch 2.13's AVX2 conversion to FP16 writes wrong values there, and the fused code is tiny beside the
matmuls, which stay PyTorch's own.

At load it is compiled and checked against transformers' own decode step on the loaded model; a
model it does not fit (not Qwen3's layout, biases, sliding-window layers), a missing C++ compiler or
a mismatch leave transformers' step in place, with the reason in the precision details.
``QWEN_CPU_DECODE_STEP=compiled|eager|off`` forces it on (also for small models), runs the same
step uncompiled, or turns it off; by default it is used for models larger than the CPU's caches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from ..settings import tuning
from .cpu_int8 import CpuInt8Linear, _aten_matvec, _int8_matvec
from .cpu_layers import CpuLinear, vector_isa
from .kv_attention import attend

log = logging.getLogger(__name__)
MIN_MODEL_BYTES = 256 * 2**20  # below this the weights sit in the CPU caches and the compile is not worth it
CHECK_TOLERANCE = 5e-3  # largest logit difference from transformers' step, relative to the largest logit
# With the int8 dot-product kernel both steps round each matmul's input to 8 bits per block: inputs that
# differ in their last bit (the fused code rounds elsewhere) can land on neighbouring steps.
DOT_CHECK_TOLERANCE = 2e-2
MODES = ("auto", "compiled", "eager", "off")


class DecodeStepUnavailable(RuntimeError):
    """The model cannot use the compiled decode step; the message says why."""


def requested_mode(environ: dict[str, str] | None = None) -> str:
    """The ``cpu_decode_step`` setting (``QWEN_CPU_DECODE_STEP``): auto, compiled, eager or off.

    Raises:
        ValueError: an unknown value.
    """
    return tuning(environ).cpu_decode_step


# --- the arithmetic (compiled) ---------------------------------------------------------------------------------


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _linear_16bit(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x.to(weight.dtype), weight).float()


def _linear_int8(x: torch.Tensor, weight: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return _int8_matvec(x, *weight)


def _linear_int8_aten(x: torch.Tensor, weight: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    # The scales come in BF16 already (the conversion is then a no-op): Inductor cannot lower
    # _weight_int8pack_mm with a scale converted inside the graph.
    return _aten_matvec(x, *weight)


def _int8_dot(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def linear(x: torch.Tensor, weight: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return fn(x, *weight)

    return linear


def vectorize_ok() -> bool:
    """Whether Inductor may vectorize the step's fused code on this CPU.

    Not with AVX2 code in torch 2.13: its vectorized float -> FP16 conversion feeding the matmuls
    writes wrong values (NaN logits; ``ATEN_CPU_CAPABILITY=avx2`` reproduces it on any x86 CPU), as its
    int8 -> FP32 one does for ``cpu_int8``. Scalar C++ is exact, and the fused code around the matmuls
    is a few thousand numbers per token, so it costs little.
    """
    return vector_isa().upper().startswith("AVX512")


def _step_functions(linear: Callable[..., torch.Tensor], heads: int, kv_heads: int, head_dim: int, eps: float) -> Any:
    q_end, k_end = heads * head_dim, (heads + kv_heads) * head_dim

    def pre(x, norm, qkv, q_norm, k_norm, cos, sin):
        rows = x.shape[0]
        projected = linear(_rms_norm(x, norm, eps), qkv)
        q = _rms_norm(projected[:, :q_end].reshape(rows, heads, head_dim), q_norm, eps)
        k = _rms_norm(projected[:, q_end:k_end].reshape(rows, kv_heads, head_dim), k_norm, eps)
        v = projected[:, k_end:].reshape(rows, kv_heads, head_dim)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v

    def post(x, attended, o_proj, norm, gate_up, down):
        x = x + linear(attended, o_proj)
        gated = linear(_rms_norm(x, norm, eps), gate_up)
        inter = gated.shape[-1] // 2
        return x + linear(F.silu(gated[:, :inter]) * gated[:, inter:], down)

    def head(x, norm, weight):
        return linear(_rms_norm(x, norm, eps), weight)

    return pre, post, head


# --- the step --------------------------------------------------------------------------------------------------


def _fit_reason(model: nn.Module) -> str:
    """Why the step cannot run this model ("" when it can)."""
    config = model.config
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if config.model_type != "qwen3" or layers is None or not hasattr(inner, "rotary_emb"):
        return f"written for Qwen3's layout, not {config.model_type!r}"
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return "sliding-window layers"
    kinds = {type(m) for m in model.modules() if isinstance(m, CpuLinear | CpuInt8Linear)}
    if len(kinds) != 1:
        return "needs the CPU linear layers (FP16/BF16 or INT8)"
    if any(getattr(m, "bias", None) is not None for m in model.modules() if isinstance(m, CpuLinear | CpuInt8Linear)):
        return "layers with biases"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    return ""


class CompiledDecodeStep:
    """Decodes the next token of one request (see the module docstring)."""

    def __init__(self, model: nn.Module, compiled: bool = True) -> None:
        reason = _fit_reason(model)
        if reason:
            raise DecodeStepUnavailable(reason)
        config, inner = model.config, model.model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.head_dim**-0.5
        self.int8 = isinstance(inner.layers[0].self_attn.q_proj, CpuInt8Linear)
        kernel = inner.layers[0].self_attn.q_proj.kernel if self.int8 else None
        # The kernel the layers passed their self-check with (see cpu_int8): ours, the compiled one, or PyTorch's.
        self.int8_kernel = (kernel.name if kernel is not None else "aten") if self.int8 else ""
        self.int8_aten = self.int8_kernel == "aten"
        self.tolerance = DOT_CHECK_TOLERANCE if self.int8_kernel == "dot" else CHECK_TOLERANCE
        self.compiled = compiled
        self.enabled = True
        self.embed, self.rotary = inner.embed_tokens, inner.rotary_emb
        self.norm = inner.norm.weight
        self.layers = [self._layer(layer) for layer in inner.layers]
        self.head_weight = self._weight(model.lm_head)
        linear = _linear_16bit
        if self.int8_kernel == "dot":
            linear = _int8_dot(kernel.fn)
        elif self.int8:
            linear = _linear_int8 if self.int8_kernel == "inductor" else _linear_int8_aten
        functions = _step_functions(linear, self.heads, self.kv_heads, self.head_dim, config.rms_norm_eps)
        if compiled:
            options = None if vectorize_ok() else {"cpp.vec_isa_ok": False}
            functions = tuple(torch.compile(f, fullgraph=True, dynamic=False, options=options) for f in functions)
        self.pre, self.post, self.head = functions

    def _layer(self, layer: nn.Module) -> tuple[Any, ...]:
        attention, mlp = layer.self_attn, layer.mlp
        return (
            layer.input_layernorm.weight,
            self._stack([attention.q_proj, attention.k_proj, attention.v_proj]),
            attention.q_norm.weight,
            attention.k_norm.weight,
            self._weight(attention.o_proj),
            layer.post_attention_layernorm.weight,
            self._stack([mlp.gate_proj, mlp.up_proj]),
            self._weight(mlp.down_proj),
        )

    def _weight(self, module: nn.Module) -> Any:
        return (module.weight, self._scales(module.weight_scale)) if self.int8 else module.weight

    def _scales(self, scales: torch.Tensor) -> torch.Tensor:
        return scales.to(torch.bfloat16) if self.int8_aten else scales

    def _stack(self, modules: list[nn.Module]) -> Any:
        """One matrix for several projections of the same input; the layers' weights become views of it."""
        stacked = torch.cat([m.weight for m in modules])
        scales = torch.cat([m.weight_scale for m in modules]) if self.int8 else None
        start = 0
        for module in modules:
            end = start + module.out_features
            if self.int8:
                module._buffers["weight"] = stacked[start:end]
                module._buffers["weight_scale"] = scales[start:end]
            else:
                module.weight = nn.Parameter(stacked[start:end], requires_grad=False)
            start = end
        return (stacked, self._scales(scales)) if self.int8 else stacked

    def handles(self, rows: int) -> bool:
        """Single rows only: batches decode from the prefill copies (``cpu_layers``) or, in INT8, a
        kernel that reads the weights once per row anyway; transformers' forward does both as well."""
        return self.enabled and rows == 1

    @torch.inference_mode()
    def __call__(self, tokens: list[int], caches: list[Any]) -> torch.Tensor:
        """Feed ``tokens[0]`` to the request whose cache is ``caches[0]``; returns logits [1, vocab]."""
        (token,), (cache,) = tokens, caches
        x = self.embed(torch.tensor([token])).float()
        cos, sin = self.rotary(x, torch.tensor([[cache.get_seq_length()]]))
        cos, sin = cos[:, 0], sin[:, 0]
        for index, (norm, qkv, q_norm, k_norm, o_proj, norm2, gate_up, down) in enumerate(self.layers):
            q, k, v = self.pre(x, norm, qkv, q_norm, k_norm, cos, sin)
            keys, values = cache.layers[index].update(k[:, :, None], v[:, :, None])
            attended = attend(q[0], keys[0], values[0], self.scaling)
            x = self.post(x, attended[None], o_proj, norm2, gate_up, down)
        return self.head(x, self.norm, self.head_weight)

    def describe(self) -> str:
        how = "compiled" if self.compiled else "eager"
        matmuls = f"int8 matmuls, {self.int8_kernel} kernel" if self.int8 else "16-bit matmuls"
        return f"{how} decode step ({matmuls}, q/k/v and gate/up stacked)"


def check_against_transformers(model: nn.Module, step: CompiledDecodeStep) -> float:
    """Compile (by running) the step and compare its logits with transformers' step on the same cache.

    Returns the largest difference relative to the largest logit. Raises ``DecodeStepUnavailable``
    when it exceeds the step's tolerance (``CHECK_TOLERANCE``, or ``DOT_CHECK_TOLERANCE`` with int8 activations).
    """
    prompt = torch.tensor([[9707, 11, 1879, 0, 358, 1079]]) % model.config.vocab_size
    with torch.inference_mode():
        ours, theirs = DynamicCache(config=model.config), DynamicCache(config=model.config)
        for cache in (ours, theirs):
            model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
        token = prompt[:, -1:]
        reference = model(input_ids=token, cache=theirs, use_cache=True, logits_to_keep=1).logits[0, -1]
        logits = step([int(token)], [ours])[0]
    error = float((logits - reference).abs().max() / reference.abs().max().clamp(min=1e-6))
    if not error <= step.tolerance:
        raise DecodeStepUnavailable(f"its logits are {error:.1e} off transformers' step (bound {step.tolerance})")
    return error


def attach_decode_step(model: nn.Module, weight_bytes: int) -> str:
    """Give a CPU model its compiled decode step where it fits and pays; returns what was done, for the details.

    Never raises: a step that cannot be built or checked leaves transformers' step in place.
    """
    mode = requested_mode()
    if mode == "off":
        return "transformers' decode step (QWEN_CPU_DECODE_STEP=off)"
    if mode == "auto" and weight_bytes < MIN_MODEL_BYTES:
        return "transformers' decode step (the model fits in the CPU caches)"
    started = time.perf_counter()
    try:
        step = CompiledDecodeStep(model, compiled=mode != "eager")
        error = check_against_transformers(model, step)
    except Exception as exc:  # a compiler missing or failing surfaces as many exception types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        log.warning("Compiled decode step not used: %s", reason)
        return f"transformers' decode step (the compiled one was not used: {reason})"
    model.qwen_decode_step = step
    log.info(
        "CPU decode: %s, ready in %.1f s, within %.0e of transformers' step",
        step.describe(),
        time.perf_counter() - started,
        error,
    )
    return step.describe()


def decode_step_of(model: Any, rows: int) -> CompiledDecodeStep | None:
    """The model's compiled decode step if it takes ``rows`` rows now, else None."""
    step = getattr(model, "qwen_decode_step", None)
    return step if step is not None and step.handles(rows) else None
