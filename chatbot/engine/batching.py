"""The batched decode step: every running request advances by one token in one forward pass.

Each request keeps its own key/value cache (the growing cache a lone request uses, so the
conversation cache keeps working). A decode step stacks the requests' last tokens as the rows of
one batch: the linear layers, which hold almost all the weights, run once for all rows, and
attention runs row by row against each request's own cache through the same attention call a lone
request makes. No padding, no copying caches into one tensor, and a row's numbers do not depend on
which rows share its step, as far as the matmuls allow: a matmul's rounding can depend on its number
of rows, and by default CPU batches of two or more decode from the faster prefill copy (``cpu_layers``,
``cpu_int8``). With ``QWEN_BATCH_INVARIANT=1`` every row runs alone through the lone request's path,
so a seeded reply is token for token the reply the request gets alone, at the cost of batching.

transformers hands attention the keys and values its cache returns; a ``RowCaches`` object stands
in for the cache during a step and routes row i to cache i, and the attention function registered
here (``rows+<implementation>``, e.g. ``rows+sdpa``) loops over the rows. Without a ``row_caches``
argument it is the model's usual attention function, so single-request forwards are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from ..model.cpu_decode import decode_step_of

ROW_PREFIX = "rows+"


class RowCaches:
    """Stands in for a transformers ``Cache`` during one batched decode step: row i uses ``caches[i]``."""

    is_compileable = False

    def __init__(self, caches: list[Any]) -> None:
        self.caches = caches
        self.views: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.views[layer_idx] = [
            cache.update(key_states[row : row + 1], value_states[row : row + 1], layer_idx)
            for row, cache in enumerate(self.caches)
        ]
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always passed explicitly, per row


def _row_attention(inner_name: str) -> Any:
    def attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        inner = ALL_ATTENTION_FUNCTIONS[inner_name]
        rows: RowCaches | None = kwargs.pop("row_caches", None)
        if rows is None:
            return inner(module, query, key, value, attention_mask, **kwargs)
        outputs = [
            inner(module, query[row : row + 1], keys, values, None, **kwargs)[0]
            for row, (keys, values) in enumerate(rows.views[module.layer_idx])
        ]
        return torch.cat(outputs, dim=0), None

    return attention


def install_row_attention(model: Any) -> bool:
    """Let ``model`` run batched decode steps; False when its attention cannot be wrapped (then batch 1)."""
    config = model.config
    current = config._attn_implementation
    if current.startswith(ROW_PREFIX):
        return True
    if current not in ALL_ATTENTION_FUNCTIONS._global_mapping:
        return False
    name = ROW_PREFIX + current
    AttentionInterface.register(name, _row_attention(current))
    if current in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    config._attn_implementation = name
    return True


def decode_rows(model: Any, tokens: list[int], caches: list[Any], device: torch.device) -> torch.Tensor:
    """Feed ``tokens[i]`` to the request whose cache is ``caches[i]``; returns last-position logits [rows, vocab].

    On a CPU with the compiled decode step (``cpu_decode``) that step does it; else transformers' forward.
    A batch-invariant model (``QWEN_BATCH_INVARIANT=1``, set by the loader) decodes each row alone, so
    its logits are bit for bit those of the request alone, whoever shares the step.
    """
    if len(tokens) > 1 and getattr(model, "qwen_batch_invariant", False):
        rows = [decode_rows(model, [token], [cache], device) for token, cache in zip(tokens, caches, strict=True)]
        return torch.cat(rows)
    step = decode_step_of(model, len(tokens))
    if step is not None:
        return step(tokens, caches)
    positions = [cache.get_seq_length() for cache in caches]
    rows = RowCaches(caches)
    out = model(
        input_ids=torch.tensor(tokens, device=device).unsqueeze(1),
        position_ids=torch.tensor(positions, device=device).unsqueeze(1),
        attention_mask={"full_attention": None},
        cache=rows,
        use_cache=True,
        logits_to_keep=1,
        row_caches=rows,
    )
    return out.logits[:, -1]
