"""A key/value cache that grows in place instead of being copied at every decoded token.

transformers' ``DynamicLayer`` appends each new token with ``torch.cat``, which copies the layer's
whole cache every step: at a 1000-token context that is about 230 MB of copying per token for
Qwen3-0.6B with FP32 activations, as much traffic again as reading the cache. ``GrowingLayer``
keeps a buffer with spare room (grown by half each time it fills, in 256-token steps), writes new
tokens into it and hands attention a view of the filled part.

The buffer may be kept in another dtype than the model's attention computes in: on the CPU the
loader picks a 16-bit one (``model.kv_attention``), which halves the cache's memory and the bytes
decode reads per token; new keys and values are rounded once, as they are written. An FP16 buffer
that would receive a value beyond FP16's range (about 65,504) turns into FP32 for that layer of
that request (logged once), so nothing overflows to inf.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

GROWTH_STEP = 256  # capacity is a multiple of this many tokens
GROWTH_FACTOR = 1.5
FP16_MAX = torch.finfo(torch.float16).max
log = logging.getLogger(__name__)
_warned_fp16 = False


class GrowingLayer(DynamicLayer):
    """``DynamicLayer`` with amortized in-place appends; ``crop`` just shortens the view.

    ``dtype``: what the buffer stores (None: the dtype of the first keys and values handed in).
    """

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.storage_dtype = self._chosen_dtype = dtype

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        # Without a dtype the first keys set it: a copied prefix (``copy_prefix``) keeps its source's dtype
        # when it grows, whatever dtype the model hands in later.
        self.storage_dtype = self.storage_dtype or key_states.dtype
        self._keys_buffer: torch.Tensor | None = None
        self._values_buffer: torch.Tensor | None = None
        self._length = 0

    def _reserve(self, key_states: torch.Tensor, value_states: torch.Tensor, needed: int) -> None:
        capacity = 0 if self._keys_buffer is None else self._keys_buffer.shape[-2]
        if needed <= capacity:
            return
        capacity = max(needed, int(capacity * GROWTH_FACTOR))
        capacity = -(-capacity // GROWTH_STEP) * GROWTH_STEP
        dtype = self.storage_dtype
        keys = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]), dtype=dtype)
        values = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]), dtype=dtype)
        if self._length:
            keys[..., : self._length, :] = self._keys_buffer[..., : self._length, :]
            values[..., : self._length, :] = self._values_buffer[..., : self._length, :]
        self._keys_buffer, self._values_buffer = keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.storage_dtype == torch.float16 and _beyond_fp16(key_states, value_states):
            self._widen()
        end = self._length + key_states.shape[-2]
        self._reserve(key_states, value_states, end)
        self._keys_buffer[..., self._length : end, :] = key_states
        self._values_buffer[..., self._length : end, :] = value_states
        self._length = end
        self.keys = self._keys_buffer[..., :end, :]
        self.values = self._values_buffer[..., :end, :]
        return self.keys, self.values

    def _widen(self) -> None:
        """Store this layer in FP32 from now on (a value beyond FP16's range came in)."""
        global _warned_fp16
        if not _warned_fp16:
            log.warning("A key or value beyond FP16's range: that cache layer is kept in FP32 from now on")
            _warned_fp16 = True
        self.storage_dtype = torch.float32
        if self._keys_buffer is not None:
            self._keys_buffer, self._values_buffer = self._keys_buffer.float(), self._values_buffer.float()
            self.keys = self._keys_buffer[..., : self._length, :]
            self.values = self._values_buffer[..., : self._length, :]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes the (negative) number of tokens to remove")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self._length = max(0, self._length + tokens_to_remove)
        self.keys = self._keys_buffer[..., : self._length, :]
        self.values = self._values_buffer[..., : self._length, :]

    def reset(self) -> None:
        super().reset()
        self.storage_dtype = self._chosen_dtype
        self._keys_buffer = self._values_buffer = None
        self._length = 0


def _beyond_fp16(*tensors: torch.Tensor) -> bool:
    return any(bool(t.abs().amax() > FP16_MAX) for t in tensors if t.numel())


def new_cache(config: Any, dtype: torch.dtype | None = None) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose full-attention layers grow in place, storing ``dtype``
    (None: the dtype attention computes in)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer(dtype) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes the cache's layers hold (a growing layer's whole buffer, spare room included)."""
    total = 0
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        grown = isinstance(layer, GrowingLayer) and layer._keys_buffer is not None
        for tensor in (layer._keys_buffer, layer._values_buffer) if grown else (layer.keys, layer.values):
            total += tensor.numel() * tensor.element_size()
    return total


def crop_to(cache: DynamicCache, length: int) -> None:
    """Shorten every layer of ``cache`` to ``length`` tokens (layers may differ after a failed step)."""
    for layer in cache.layers:
        excess = layer.get_seq_length() - length if layer.is_initialized else 0
        if excess > 0:
            layer.crop(-excess)


def copy_prefix(cache: DynamicCache, length: int, config: Any) -> DynamicCache | None:
    """A new cache for ``config`` holding a copy of ``cache``'s first ``length`` tokens, or None when a
    layer is not a ``GrowingLayer`` holding that many (another layer kind may not keep every token)."""
    copy = new_cache(config)
    if len(copy.layers) != len(cache.layers):
        return None
    for source, target in zip(cache.layers, copy.layers, strict=True):
        if type(source) is not GrowingLayer or type(target) is not GrowingLayer:
            return None
        if not source.is_initialized or source.get_seq_length() < length:
            return None
    for source, target in zip(cache.layers, copy.layers, strict=True):
        # update() writes into the new layer's own buffer: a copy, never a view of the source.
        target.update(source.keys[..., :length, :], source.values[..., :length, :])
    return copy
