"""Faulty checkpoints: each is an error naming the file and the fix, in the loader and in doctor."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from chatbot.cli.doctor import run_doctor
from chatbot.errors import CheckpointError
from chatbot.model.loader import load_model


def edit_tensors(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    file = folder / "model.safetensors"
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def edit_config(folder: Path, change: Callable[[dict], None]) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def truncate(folder: Path) -> None:
    file = folder / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-1000])


def huge_header(folder: Path) -> None:
    """A header length of 2^62 bytes: reading it would try to allocate that much."""
    file = folder / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[:8] = (2**62).to_bytes(8, "little")
    file.write_bytes(bytes(data))


def drop_scale(folder: Path) -> None:
    edit_tensors(folder, lambda t: t.pop("model.layers.0.mlp.up_proj.weight_scale_inv"))


def wrong_scale_shape(folder: Path) -> None:
    def change(t):
        t["model.layers.0.mlp.up_proj.weight_scale_inv"] = torch.ones(2, 2, dtype=torch.bfloat16)

    edit_tensors(folder, change)


def nan_weight(folder: Path) -> None:
    def change(t):
        t["model.norm.weight"] = torch.full_like(t["model.norm.weight"], float("nan"))

    edit_tensors(folder, change)


def unknown_method(folder: Path) -> None:
    edit_config(folder, lambda c: c["quantization_config"].update(quant_method="mystery-int3"))


def no_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()


def no_template(folder: Path) -> None:
    (folder / "chat_template.jinja").unlink()


def pickles_only(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def missing_tensor(folder: Path) -> None:
    edit_tensors(folder, lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"))


CASES = {
    "truncated file": (truncate, "model.safetensors", "truncated", "download"),
    "header too large to be real": (huge_header, "model.safetensors", "more than the file holds", "download"),
    "missing scale": (drop_scale, "model.safetensors", "has no 'model.layers.0.mlp.up_proj.weight_scale_inv'", "again"),
    "scale of the wrong shape": (wrong_scale_shape, "model.safetensors", "expected [7, 5]", "again"),
    "unknown quant_method": (
        unknown_method,
        "config.json",
        "unknown quantization method 'mystery-int3'",
        "supported formats",
    ),
    "missing tokenizer": (no_tokenizer, "", "has no tokenizer", "Copy the tokenizer files"),
    "missing chat template": (no_template, "", "has no chat template", "chat_template.jinja"),
    "pickle weights only": (pickles_only, "", "pickled PyTorch weights are never loaded", "safetensors"),
}


@pytest.fixture
def broken(scripted_fp8, tmp_path) -> Callable[[Callable[[Path], None]], Path]:
    def make(damage: Callable[[Path], None]) -> Path:
        folder = tmp_path / "model"
        shutil.copytree(scripted_fp8, folder)
        damage(folder)
        return folder

    return make


@pytest.mark.parametrize("case", list(CASES))
def test_faulty_checkpoint_names_file_and_fix(broken, case, capsys) -> None:
    damage, file_name, message, fix = CASES[case]
    folder = broken(damage)
    with pytest.raises(CheckpointError) as caught:
        load_model(str(folder), device="cpu")
    error = caught.value
    assert message in str(error)
    assert fix in (error.fix or "")
    assert error.path and error.path.startswith(str(folder)) and error.path.endswith(file_name)
    # doctor reports the same problem with its fix
    assert run_doctor(str(folder)) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and message in out and "fix:" in out


def test_missing_tensor_is_named(broken, capsys) -> None:
    folder = broken(missing_tensor)
    with pytest.raises(CheckpointError, match=re.escape("missing, e.g. model.layers.1.self_attn.k_norm.weight")):
        load_model(str(folder), device="cpu")
    # doctor reads headers only; with --load it finds the gap too
    assert run_doctor(str(folder), load=True) == 1
    assert "k_norm.weight" in capsys.readouterr().out


def test_missing_shard_listed_in_the_index(make_checkpoint, tmp_path) -> None:
    folder = tmp_path / "sharded"
    shutil.copytree(make_checkpoint("bf16", shards=2), folder)
    (folder / "model-00002-of-00002.safetensors").unlink()
    message = "lists shard model-00002-of-00002.safetensors that is not in the folder"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_model(str(folder), device="cpu")


def test_nan_weights_are_refused_naming_the_file(broken) -> None:
    folder = broken(nan_weight)
    with pytest.raises(CheckpointError, match=re.escape("'model.norm.weight' holds NaN or infinite values")) as caught:
        load_model(str(folder), device="cpu")
    assert caught.value.path.endswith("model.safetensors")


def test_missing_folder_names_the_way_out(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no such folder") as caught:
        load_model(str(tmp_path / "nowhere"), device="cpu")
    assert "--demo" in caught.value.fix


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder; permissions cannot be tested as root")
def test_unreadable_folder(broken) -> None:
    folder = broken(lambda f: None)
    folder.chmod(0)
    try:
        with pytest.raises(CheckpointError, match="not readable"):
            load_model(str(folder), device="cpu")
    finally:
        folder.chmod(0o755)
