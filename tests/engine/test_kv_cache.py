"""The in-place growing key/value cache gives the same logits as transformers' own."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from chatbot.engine import kv_cache
from chatbot.engine.kv_cache import GROWTH_STEP, GrowingLayer, copy_prefix, new_cache
from chatbot.model.loader import load_model


def test_growing_cache_matches_dynamic_cache_token_by_token(random_fp8) -> None:
    model = load_model(str(random_fp8), device="cpu", precision="fp32").model
    ids = torch.randint(0, 400, (1, 40), generator=torch.Generator().manual_seed(0))
    ours, theirs = new_cache(model.config), DynamicCache(config=model.config)
    assert all(isinstance(layer, GrowingLayer) for layer in ours.layers)
    with torch.inference_mode():
        a = model(ids[:, :30], cache=ours, use_cache=True).logits
        b = model(ids[:, :30], cache=theirs, use_cache=True).logits
        torch.testing.assert_close(a, b)
        for i in range(30, 40):  # decode steps append in place
            a = model(ids[:, i : i + 1], cache=ours, use_cache=True).logits
            b = model(ids[:, i : i + 1], cache=theirs, use_cache=True).logits
            torch.testing.assert_close(a, b)
        ours.crop(-5)
        theirs.crop(-5)
        assert ours.get_seq_length() == theirs.get_seq_length() == 35
        a = model(ids[:, 35:37], cache=ours, use_cache=True).logits
        b = model(ids[:, 35:37], cache=theirs, use_cache=True).logits
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


def test_a_16_bit_layer_stores_16_bits_and_returns_what_it_stored() -> None:
    layer = GrowingLayer(torch.bfloat16)
    first = torch.randn(1, 2, 10, 4)
    keys, values = layer.update(first, first * 2)
    assert keys.dtype == values.dtype == torch.bfloat16
    torch.testing.assert_close(keys, first.bfloat16())
    assert layer._keys_buffer.dtype == torch.bfloat16


def test_an_fp16_layer_turns_fp32_for_a_value_beyond_fp16s_range(caplog) -> None:
    layer = GrowingLayer(torch.float16)
    first = torch.randn(1, 2, 10, 4)
    layer.update(first, first)
    huge = torch.full((1, 2, 1, 4), 1e5)  # FP16 would store inf
    keys, values = layer.update(first[..., :1, :], huge)
    assert keys.dtype == values.dtype == torch.float32 and bool(values.isfinite().all())
    torch.testing.assert_close(keys[..., :10, :], first.half().float())  # the earlier tokens are kept
    assert values[0, 0, -1, 0] == 1e5
    assert "beyond FP16's range" in caplog.text or kv_cache._warned_fp16


def test_a_copied_16_bit_prefix_stays_16_bit_as_it_grows(random_fp8) -> None:
    """The choices of one request (``n``) copy the prompt's cache: the copy keeps its source's dtype."""
    config = load_model(str(random_fp8), device="cpu", precision="fp32").model.config
    source = new_cache(config, torch.bfloat16)
    for index in range(len(source.layers)):
        source.update(torch.randn(1, 2, 40, 64), torch.randn(1, 2, 40, 64), index)
    copy = copy_prefix(source, 30, config)
    for index, layer in enumerate(copy.layers):
        keys, values = copy.update(torch.randn(1, 2, GROWTH_STEP, 64), torch.randn(1, 2, GROWTH_STEP, 64), index)
        assert keys.dtype == values.dtype == layer._keys_buffer.dtype == torch.bfloat16
        torch.testing.assert_close(keys[..., :30, :], source.layers[index].keys[..., :30, :])
