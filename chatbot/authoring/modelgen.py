"""Generated Qwen3 checkpoints in exactly the real on-disk format, for tests, benchmarks and the demo.

``python -m chatbot make-model OUT --size tiny|0.6b --format fp8|compressed-tensors|bf16 [--shards N] [--scripted]``

* random weights: a real Qwen3 (``--size 0.6b`` is exactly Qwen3-0.6B's architecture) whose
  text is noise; for loading, numerics and speed.
* ``--scripted`` (tiny only): weights written so that the real forward pass is a bigram table
  that, after the generation prompt, writes a thinking block, ``</think>``, and an answer. The
  embedding of token i is the one-hot e_i, attention and MLP outputs are scaled to almost zero
  so the residual stream carries e_i, and ``lm_head`` column i holds the logits wanted after i.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..settings import cache_dir
from . import tokenizer_build
from .quantize import quantization_config, quantize_tensors, write_checkpoint

SIZES: dict[str, dict[str, Any]] = {
    # hidden 576 and intermediate 832 leave partial 128-blocks at the edges, as real shapes may.
    "tiny": {
        "hidden_size": 576,
        "intermediate_size": 832,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "vocab_size": 512,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
    },
    # Exactly Qwen3-0.6B.
    "0.6b": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
        "tie_word_embeddings": True,
    },
}

# The scripted model's words. Each phrase is one token and occurs once, so greedy decoding follows one path.
THINKING_SCRIPT = (
    "Okay, the user",
    " sent me a message.",
    " I am the demo model",
    " of Qwen3 Chat,",
    " so I follow my script:",
    " greet them",
    " and explain",
    " what I am.",
)
ANSWER_SCRIPT = (
    "Hello!",
    " I am the",
    " **demo model**",
    " of Qwen3 Chat.",
    " My weights are",
    " generated on",
    " your machine,",
    " so every reply",
    " follows one script:",
    " a short",
    " thinking block,",
    " then this answer.",
    " 你好！",
    " Start the app with",
    " `--model PATH`",
    " to chat with",
    " a real Qwen3",
    " checkpoint.",
)
SCRIPT_LOGIT = 40.0  # margin of the scripted successor over every other token
RESIDUAL_SCALE = 0.05  # o_proj/down_proj scale: attention and MLP barely touch the residual stream
SCRIPTED_THINKING = "".join(THINKING_SCRIPT)
SCRIPTED_ANSWER = "".join(ANSWER_SCRIPT)


def qwen3_config(size: str, *, vocab_ids: dict[str, int], scripted: bool) -> dict[str, Any]:
    """config.json of a generated checkpoint, with the same keys as Qwen3-0.6B's."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    dims = dict(SIZES[size])
    if scripted:
        dims["tie_word_embeddings"] = False  # lm_head holds the script, the embedding the one-hot vectors
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": vocab_ids[tokenizer_build.PAD_TOKEN],
        "eos_token_id": vocab_ids[tokenizer_build.EOS_TOKEN],
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_window_layers": dims["num_hidden_layers"],
        "model_type": "qwen3",
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        **dims,
        "generated": {
            "by": "python -m chatbot make-model",
            "kind": "scripted" if scripted else "random",
            "note": "random weights, not a trained model",
        },
    }


def _parameter_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf_config = Qwen3Config(**{k: v for k, v in config.items() if k != "generated"})
    with torch.device("meta"):
        model = Qwen3ForCausalLM(hf_config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config["tie_word_embeddings"]:
        shapes.pop("lm_head.weight", None)
    return shapes


def random_weights(config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random BF16 weights: N(0, 0.02) matrices, norms near 1."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in _parameter_shapes(config).items():
        if name.endswith("norm.weight"):
            value = 1.0 + 0.05 * torch.randn(shape, generator=generator)
        else:
            value = torch.randn(shape, generator=generator) * config["initializer_range"]
        tensors[name] = value.to(torch.bfloat16)
    return tensors


def scripted_weights(config: dict[str, Any], token_ids: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights whose forward pass writes ``<think>`` + THINKING_SCRIPT + ``</think>\\n\\n`` + ANSWER_SCRIPT."""
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    eos = token_ids[tokenizer_build.EOS_TOKEN]
    chain = ["\n", "<think>", *THINKING_SCRIPT, "</think>", "\n\n", *ANSWER_SCRIPT, tokenizer_build.EOS_TOKEN]
    chain_ids = [token_ids[token] for token in chain]
    if vocab <= hidden:
        direction = torch.arange(vocab)  # one-hot embedding per token
    else:
        # A real-sized vocabulary: the script's tokens get a direction each, every other token shares one.
        on_script = list(dict.fromkeys(chain_ids))
        if len(on_script) >= hidden:
            raise ValueError("a scripted model needs hidden_size > the number of scripted tokens")
        direction = torch.full((vocab,), len(on_script))
        direction[on_script] = torch.arange(len(on_script))
    tensors = random_weights(config, seed)
    for name in tensors:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            tensors[name] = (tensors[name].float() * RESIDUAL_SCALE).to(torch.bfloat16)
        elif name.endswith("norm.weight"):
            tensors[name] = torch.ones_like(tensors[name])
    embedding = torch.zeros(vocab, hidden)
    embedding[torch.arange(vocab), direction] = 1.0
    tensors["model.embed_tokens.weight"] = embedding.to(torch.bfloat16)

    scale = SCRIPT_LOGIT / math.sqrt(hidden)  # RMSNorm scales a unit direction to sqrt(hidden)
    lm_head = torch.zeros(vocab, hidden)
    lm_head[eos, :] = scale  # anything off the script ends the reply
    for current, following in itertools.pairwise(chain_ids):
        lm_head[eos, direction[current]] = 0.0
        lm_head[following, direction[current]] = scale
    tensors["lm_head.weight"] = lm_head.to(torch.bfloat16)
    return tensors


def make_model(
    out: Path,
    size: str = "tiny",
    fmt: str = "fp8",
    shards: int = 1,
    scripted: bool = False,
    seed: int = 0,
    tokenizer_dir: Path | None = None,
) -> Path:
    """Write a complete generated checkpoint (weights, config, tokenizer, chat template) to ``out``.

    ``tokenizer_dir``: a folder with Qwen3's real ``tokenizer.json`` and ``tokenizer_config.json``
    (see ``qwen3_tokenizer.fetch``) to use instead of the generated BPE; the vocabulary is then
    Qwen3's 151,936 whatever the size, and other tools (llama.cpp's converter) accept the checkpoint.
    """
    if scripted and size != "tiny":
        raise ValueError("--scripted needs --size tiny")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = (*THINKING_SCRIPT, *ANSWER_SCRIPT) if scripted else ()
    if tokenizer_dir is None:
        tokenizer = tokenizer_build.build_tokenizer(extra)
    else:
        tokenizer = tokenizer_build.load_tokenizer(Path(tokenizer_dir), extra)
    vocab = tokenizer.get_vocab()
    token_ids = {**vocab, "\n": vocab["Ċ"], "\n\n": vocab["ĊĊ"]}
    config = qwen3_config(size, vocab_ids=vocab, scripted=scripted)
    if tokenizer_dir is not None:
        config["vocab_size"] = SIZES["0.6b"]["vocab_size"]
    if tokenizer.get_vocab_size() > config["vocab_size"]:
        raise AssertionError("tokenizer is larger than the model's vocabulary")
    dense = scripted_weights(config, token_ids, seed) if scripted else random_weights(config, seed)
    tensors = dict(quantize_tensors(dense.items(), fmt))
    qcfg = quantization_config(fmt)
    if qcfg:
        config["quantization_config"] = qcfg
    write_checkpoint(out, tensors, config, shards)
    template = None if tokenizer_dir is None else tokenizer_build.chat_template_of(Path(tokenizer_dir))
    tokenizer_build.save_tokenizer(tokenizer, out, config["max_position_embeddings"], template)
    generation = {
        "bos_token_id": vocab[tokenizer_build.PAD_TOKEN],
        "do_sample": True,
        "eos_token_id": [vocab[tokenizer_build.EOS_TOKEN], vocab[tokenizer_build.PAD_TOKEN]],
        "pad_token_id": vocab[tokenizer_build.PAD_TOKEN],
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.95,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    return out


def demo_model_path() -> Path:
    """Where ``--demo`` keeps its generated model (made on first use)."""
    return cache_dir() / "demo-model-v1"


def ensure_demo_model() -> Path:
    path = demo_model_path()
    template = path / "chat_template.jinja"
    # A demo model made by an older version is remade when its chat template differs (e.g. no tools).
    current = template.exists() and template.read_text(encoding="utf-8") == tokenizer_build.chat_template()
    if not (path / "config.json").exists() or not current:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        make_model(tmp, size="tiny", fmt="fp8", scripted=True)
        if path.exists():
            import shutil

            shutil.rmtree(path)
        tmp.rename(path)
    return path
