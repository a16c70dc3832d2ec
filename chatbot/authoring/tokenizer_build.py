"""A small byte-level BPE tokenizer with Qwen3's special tokens and chat template.

Used by ``make-model``: generated checkpoints need a tokenizer that behaves like Qwen3's
(``<|im_start|>``/``<|im_end|>`` control tokens, ``<think>``/``</think>`` as non-special added
tokens that survive ``skip_special_tokens``, the same pre-tokenizer regex) without downloading it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Qwen2/Qwen3 pre-tokenizer regex.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_TOKENS = ("<think>", "</think>")
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
BPE_VOCAB_SIZE = 400


def data_text(name: str) -> str:
    return resources.files("chatbot").joinpath("data", name).read_text(encoding="utf-8")


def chat_template() -> str:
    return data_text("chat_template.jinja")


def _training_corpus() -> list[str]:
    passage = data_text("passage.txt")
    chinese = data_text("corpus_zh.txt")
    chat_words = "system\nuser\nassistant\nYou are a helpful assistant.\n\nHello! How are you?\n\n"
    # Repeat so that frequent pieces (including "\n\n", one token in Qwen3) become merges.
    return [passage, chinese, *([chat_words] * 20), *passage.split("\n\n")]


def build_tokenizer(extra_tokens: list[str] | tuple[str, ...] = ()) -> Tokenizer:
    """Train the BPE on the shipped texts, then add the control, think and ``extra_tokens`` tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in (*THINK_TOKENS, *extra_tokens)])
    return tokenizer


def load_tokenizer(folder: Path, extra_tokens: list[str] | tuple[str, ...] = ()) -> Tokenizer:
    """Qwen3's real tokenizer from ``folder`` (see ``qwen3_tokenizer.fetch``), plus ``extra_tokens``.

    The extra tokens take ids in Qwen3's unused vocabulary slots (151,669 and up).
    """
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    if extra_tokens:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra_tokens])
    return tokenizer


def chat_template_of(folder: Path) -> str:
    """The chat template shipped in ``folder``'s tokenizer_config.json."""
    return json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]


def save_tokenizer(tokenizer: Tokenizer, out: Path, max_length: int, template: str | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json and chat_template.jinja as Qwen3 ships them.

    ``template``: the chat template to ship (default: the project's copy of Qwen3's).
    """
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, model_max_length=max_length
    )
    wrapped.chat_template = template if template is not None else chat_template()
    wrapped.save_pretrained(str(out))
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.update({"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "clean_up_tokenization_spaces": False})
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
