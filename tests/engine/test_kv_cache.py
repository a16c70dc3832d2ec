"""The in-place growing key/value cache gives the same logits as transformers' own."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from chatbot.engine.kv_cache import GROWTH_STEP, GrowingLayer, new_cache
from chatbot.model.loader import load_model


def test_growing_cache_matches_dynamic_cache_token_by_token(random_fp8) -> None:
    model = load_model(str(random_fp8), device="cpu", precision="fp32").model
    ids = torch.randint(0, 400, (1, 40), generator=torch.Generator().manual_seed(0))
    ours, theirs = new_cache(model.config), DynamicCache(config=model.config)
    assert all(isinstance(layer, GrowingLayer) for layer in ours.layers)
    with torch.inference_mode():
        a = model(ids[:, :30], past_key_values=ours, use_cache=True).logits
        b = model(ids[:, :30], past_key_values=theirs, use_cache=True).logits
        torch.testing.assert_close(a, b)
        for i in range(30, 40):  # decode steps append in place
            a = model(ids[:, i : i + 1], past_key_values=ours, use_cache=True).logits
            b = model(ids[:, i : i + 1], past_key_values=theirs, use_cache=True).logits
            torch.testing.assert_close(a, b)
        ours.crop(-5)
        theirs.crop(-5)
        assert ours.get_seq_length() == theirs.get_seq_length() == 35
        a = model(ids[:, 35:37], past_key_values=ours, use_cache=True).logits
        b = model(ids[:, 35:37], past_key_values=theirs, use_cache=True).logits
        torch.testing.assert_close(a, b)


def test_capacity_grows_in_steps_and_keeps_the_contents() -> None:
    layer = GrowingLayer()
    first = torch.randn(1, 2, 300, 4)
    layer.update(first, first * 2)
    assert layer._keys_buffer.shape[-2] == 2 * GROWTH_STEP
    second = torch.randn(1, 2, 300, 4)
    keys, values = layer.update(second, second * 2)
    assert layer._keys_buffer.shape[-2] % GROWTH_STEP == 0 and layer._keys_buffer.shape[-2] >= 600
    torch.testing.assert_close(keys, torch.cat([first, second], dim=-2))
    torch.testing.assert_close(values, torch.cat([first, second], dim=-2) * 2)
    assert layer.get_seq_length() == 600
