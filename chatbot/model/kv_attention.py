"""16-bit key/value caches on the CPU, and the attention that reads them as they are stored.

Decoding one token reads every weight once and every cached key and value once. At a few thousand
tokens of context the cache is no longer small beside the weights (Qwen3-0.6B: 112 KiB per token in
FP32, 229 MB at 2,048 tokens against 1.2 GB of FP16 weights), and with FP32 keys and values decode
slowed about 2.2x between an empty context and 1,500 tokens. Stored in 16 bits the cache halves, and
so do the bytes read per token.

Which 16-bit type (``choose_kv_cache_dtype``): BF16 on CPUs with native BF16 instructions (FP32's range,
so nothing can overflow), FP16 elsewhere (more precise, and converted by F16C on every x86-64 CPU of
the last decade; a value beyond FP16's range moves that layer's cache to FP32, see ``kv_cache``).
``--precision fp32`` keeps FP32, as ``--kv-cache-dtype fp32`` (``QWEN_KV_CACHE_DTYPE``) does in any
mode; ``bf16`` or ``fp16`` forces one.

The attention never converts the cache. A single decode row (the compiled decode step, and a lone
row in transformers' forward) runs our decode attention kernel (``cpu_attention``: the FP32 query
against the keys and values as stored, a few times faster than PyTorch's kernel for one row) where it
built and checked out at load. Prompt chunks and batched rows (transformers' forward, registered as the
attention implementation ``ATTENTION_NAME``), and single rows where the kernel is off, round the query
to the cache's dtype and run PyTorch's ``scaled_dot_product_attention`` CPU flash-attention kernel,
which reads 16-bit keys and values block by block and accumulates in FP32. The grouped query heads go
in as a few query rows per key/value head (no copies of the keys for each head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..settings import tuning
from .cpu_layers import NATIVE_BF16_FLAGS, vector_isa
from .device import cpu_flags

KV_DTYPE_VAR = "QWEN_KV_CACHE_DTYPE"
# The decode attention kernel chosen at the last load (``use_kv16_attention``); None: SDPA for every row.
_decode_kernel: Any = None
KV_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ATTENTION_NAME = "cpu_kv16"  # transformers' attention implementation that reads a 16-bit cache


@dataclass(frozen=True)
class KvCacheChoice:
    """The dtype requests' key/value caches are stored in, and why."""

    dtype: torch.dtype
    why: str

    @property
    def name(self) -> str:
        return {v: k for k, v in KV_DTYPES.items()}[self.dtype]

    def describe(self) -> str:
        return f"key/value cache in {self.name.upper()} ({self.why})"


def choose_kv_cache_dtype(
    mode: str,
    flags: frozenset[str] | None = None,
    environ: dict[str, str] | None = None,
    isa: str | None = None,
) -> KvCacheChoice:
    """The key/value cache dtype of a CPU model loaded in ``mode`` (see the module docstring).

    Raises:
        ValueError: QWEN_KV_CACHE_DTYPE (``--kv-cache-dtype``) names no dtype.
    """
    forced = tuning(environ).kv_cache_dtype
    if forced != "auto":
        return KvCacheChoice(KV_DTYPES[forced], KV_DTYPE_VAR)
    if mode == "fp32":
        return KvCacheChoice(torch.float32, "FP32 as the precision asks")
    flags = cpu_flags() if flags is None else flags
    isa = vector_isa() if isa is None else isa
    if any(flag in flags for flag in NATIVE_BF16_FLAGS) and isa != "AVX2":
        return KvCacheChoice(torch.bfloat16, "half the bytes of FP32; this CPU has native BF16 instructions")
    return KvCacheChoice(torch.float16, "half the bytes of FP32; FP16, as this CPU has no native BF16")


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
    """One query position against one request's cache: q [heads, d], keys/values [kv_heads, length, d]
    (FP32 or 16-bit) -> [heads * d] in q's dtype."""
    kv_heads, _, dim = keys.shape
    if keys.dtype == torch.float32 and q.dtype == torch.float32:
        # FP32 caches keep the two small matmuls they always used (the same numbers as before).
        grouped = q.view(kv_heads, -1, dim)
        scores = torch.bmm(grouped, keys.transpose(1, 2)).mul_(scaling)
        return torch.bmm(torch.softmax(scores, dim=-1), values).view(-1)
    if _decode_kernel is not None and keys.stride(-1) == 1 and values.stride(-1) == 1:
        return _decode_kernel(q, keys, values, scaling).view(-1).to(q.dtype)
    # The query heads that share a key/value head are that head's query rows; one position sees
    # every cached token, so no mask is needed.
    grouped = q.to(keys.dtype).view(1, kv_heads, -1, dim)
    out = F.scaled_dot_product_attention(grouped, keys[None], values[None], scale=scaling)
    return out.reshape(-1).to(q.dtype)


def kv16_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface over a 16-bit cache: query [batch, heads, q_len, d] (FP32),
    key/value [batch, kv_heads, kv_len, d] -> [batch, q_len, heads, d] in the query's dtype.

    With keys in the query's dtype (an FP32 cache, a forward without a cache) it is transformers' SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if key.dtype == query.dtype:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, length, dim = query.shape
    if batch == 1 and length == 1 and attention_mask is None:  # a decode row: the compiled step's own function
        out = attend(query[0, :, 0], key[0], value[0], scaling if scaling is not None else dim**-0.5)
        return out.view(1, 1, heads, dim), None
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        attention_mask = attention_mask.to(key.dtype)
    causal = length > 1 and attention_mask is None and getattr(module, "is_causal", True)
    if causal and key.shape[2] > length:  # as transformers' SDPA does: is_causal aligns top-left
        key, value = key[:, :, :length], value[:, :, :length]
    out = F.scaled_dot_product_attention(
        query.to(key.dtype),
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=causal,
        enable_gqa=heads != key.shape[1],
    )
    return out.transpose(1, 2).contiguous().to(query.dtype), None


def use_kv16_attention(model: Any, choice: KvCacheChoice) -> str:
    """Record ``choice`` on ``model`` (``kv_cache_dtype``) and let its attention read such a cache;
    returns the sentence for the precision details.

    A model whose attention implementation is not SDPA keeps an FP32 cache (said in the sentence).
    """
    if choice.dtype == torch.float32:
        model.qwen_kv_cache_dtype = torch.float32
        return choice.describe()
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    config = model.config
    if config._attn_implementation not in ("sdpa", ATTENTION_NAME):
        model.qwen_kv_cache_dtype = torch.float32
        return f"key/value cache in FP32 (the {config._attn_implementation!r} attention reads FP32 only)"
    from .cpu_attention import choose

    global _decode_kernel
    AttentionInterface.register(ATTENTION_NAME, kv16_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    config._attn_implementation = ATTENTION_NAME
    model.qwen_kv_cache_dtype = choice.dtype
    _decode_kernel, why = choose()
    if _decode_kernel is None:
        return f"{choice.describe()}, read by PyTorch's flash-attention kernel ({why})"
    return f"{choice.describe()}, read by our {why} when decoding one row, else PyTorch's flash attention"


def kv_cache_dtype(model: Any) -> torch.dtype | None:
    """The dtype the loader chose for ``model``'s key/value caches (None: the dtype attention hands them)."""
    return getattr(model, "qwen_kv_cache_dtype", None)
