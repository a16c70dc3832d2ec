"""Loading every checkpoint format in every CPU mode; logits track the original BF16 model."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatbot.authoring.quantize import quantize_checkpoint
from chatbot.model.loader import load_model

PROMPT = [{"role": "user", "content": "Alice was beginning to get very tired of sitting by her sister on the bank."}]


def prompt_ids(folder) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return torch.tensor([tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=False)])


@pytest.fixture(scope="module")
def reference_logits(make_checkpoint) -> torch.Tensor:
    """Plain transformers on the BF16 checkpoint, computed in FP32: the original model."""
    folder = make_checkpoint("bf16")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    with torch.inference_mode():
        return model(prompt_ids(folder)).logits[0].float()


def logits_of(loaded, folder) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.model(prompt_ids(folder)).logits[0].float()


@pytest.mark.parametrize("fmt", ["fp8", "compressed-tensors", "bf16"])
@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_logits_track_the_original_bf16_model(make_checkpoint, reference_logits, fmt, precision) -> None:
    folder = make_checkpoint(fmt)
    loaded = load_model(str(folder), device="cpu", precision=precision)
    assert loaded.precision.mode == precision
    logits = logits_of(loaded, folder)
    # random weights give nearly flat distributions, so compare the logits themselves
    cosine = torch.nn.functional.cosine_similarity(logits.flatten(), reference_logits.flatten(), dim=0)
    error = (logits - reference_logits).abs().max() / reference_logits.abs().max()
    limit = 0.08 if fmt != "bf16" else 0.03  # FP8 weights carry their own rounding
    assert cosine > 0.99 and error < limit, (float(cosine), float(error))


def test_sharded_checkpoint_loads_like_the_single_file(make_checkpoint, reference_logits) -> None:
    sharded = make_checkpoint("bf16", shards=3)
    assert len(list(sharded.glob("model-*-of-00003.safetensors"))) == 3
    loaded = load_model(str(sharded), device="cpu", precision="fp32")
    torch.testing.assert_close(logits_of(loaded, sharded), reference_logits, rtol=1e-4, atol=1e-4)


def test_fp8_checkpoint_in_16_bits_leaves_no_stray_bf16_tensor(random_fp8) -> None:
    """transformers' own FP8 loading with dtype=float16 dequantizes only the linear layers and leaves
    embeddings and norms in BF16, so the first forward fails; every tensor here has its mode's dtype."""
    loaded = load_model(str(random_fp8), device="cpu", precision="fp16")
    dtypes = {name: p.dtype for name, p in loaded.model.named_parameters()}
    assert {d for n, d in dtypes.items() if n.endswith("proj.weight") or "embed" in n} == {torch.float16}
    assert {d for n, d in dtypes.items() if "norm" in n} == {torch.float32}  # the FP32 residual stream on CPU
    assert torch.bfloat16 not in dtypes.values()
    assert torch.isfinite(logits_of(loaded, random_fp8)).all()


def test_saving_a_loaded_fp8_model_writes_a_plain_checkpoint(random_fp8, tmp_path) -> None:
    """save_pretrained on a dequantized model must not claim a quantization its tensors do not have."""
    loaded = load_model(str(random_fp8), device="cpu", precision="fp32")
    loaded.model.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert "quantization_config" not in config
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    with torch.inference_mode():
        again = reloaded(prompt_ids(random_fp8)).logits[0]
    torch.testing.assert_close(again, logits_of(loaded, random_fp8), rtol=1e-4, atol=1e-4)


def test_quantize_command_code_converts_a_bf16_checkpoint(make_checkpoint, tmp_path, reference_logits) -> None:
    source = make_checkpoint("bf16", shards=2)
    out = quantize_checkpoint(str(source), tmp_path / "fp8")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "fp8"
    assert (out / "tokenizer.json").exists() and (out / "chat_template.jinja").exists()
    loaded = load_model(str(out), device="cpu", precision="fp32")
    assert loaded.precision.checkpoint_fp8
    cosine = torch.nn.functional.cosine_similarity(logits_of(loaded, out).flatten(), reference_logits.flatten(), dim=0)
    assert cosine > 0.99


def test_weights_memory_is_reported_and_halved_by_16_bit_weights(random_fp8, monkeypatch) -> None:
    fp32 = load_model(str(random_fp8), device="cpu", precision="fp32")
    with_copy = load_model(str(random_fp8), device="cpu", precision="fp16")
    monkeypatch.setenv("QWEN_CPU_PREFILL_COPY", "0")
    without_copy = load_model(str(random_fp8), device="cpu", precision="fp16")
    assert without_copy.weights_bytes < 0.55 * fp32.weights_bytes
    copy_bytes = int(with_copy.precision.details["prefill_copy_bytes"])
    assert with_copy.weights_bytes == without_copy.weights_bytes + copy_bytes  # the memory shown includes it
    assert fp32.max_context == 8192 and fp32.eos_token_ids
