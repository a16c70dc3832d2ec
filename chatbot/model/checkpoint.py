"""Checkpoint files: find them (local folder or hub id), check them, and read tensors.

Only safetensors weights are read (never pickled ``.bin`` files). Every problem is a
``CheckpointError`` naming the file and the fix.
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError, ModelUnavailableError
from .formats import CheckpointFormat, detect_format

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer*"]
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_CHECK_TIMEOUT_S = 10.0
NO_MODEL_FIX = "Run with --model PATH (a local checkpoint folder) or --demo (a generated tiny model)."


@dataclass(frozen=True)
class TensorMeta:
    file: Path
    dtype: str
    shape: tuple[int, ...]


@dataclass
class CheckpointInfo:
    """A checked checkpoint folder: config, format, weight files and the tensors they hold."""

    source: str
    path: Path
    config: dict[str, Any]
    format: CheckpointFormat
    files: list[Path]
    tensors: dict[str, TensorMeta]
    chat_template: bool

    @property
    def native_dtype(self) -> str:
        return str(self.config.get("torch_dtype") or self.config.get("dtype") or "bfloat16")

    def read(self, name: str, files: FileHandles) -> torch.Tensor:
        """Read one tensor; raises CheckpointError if the file is damaged."""
        meta = self.tensors.get(name)
        if meta is None:
            raise CheckpointError(f"tensor {name!r} is missing", path=self.path, fix=_redownload_fix(self.source))
        try:
            return files.get(meta.file).get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot read tensor {name!r}: {exc}", path=meta.file, fix=_redownload_fix(self.source)
            ) from exc


class FileHandles:
    """Open safetensors files, each opened once while weights are read."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._open: dict[Path, Any] = {}

    def get(self, path: Path) -> Any:
        if path not in self._open:
            self._open[path] = self._stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
        return self._open[path]

    def release(self) -> None:
        """Close every file (reopened on the next read): the pages read so far stop counting as this
        process's memory, which keeps the peak of a load near the size of the loaded weights."""
        self._stack.close()
        self._stack = ExitStack()
        self._open.clear()

    def __enter__(self) -> FileHandles:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _redownload_fix(source: str) -> str:
    if HUB_ID_RE.match(source) and not Path(source).exists():
        return f"Delete the damaged copy from the Hugging Face cache and download {source} again."
    return "Copy or download the checkpoint again, or regenerate it with `python -m chatbot make-model`."


def resolve_checkpoint(source: str) -> Path:
    """Local folder, or hub id downloaded to the Hugging Face cache.

    Raises:
        CheckpointError: a local path that is missing or not a folder.
        ModelUnavailableError: a hub id that is neither cached nor downloadable right now.
    """
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                "is a file, not a checkpoint folder", path=path, fix="Pass the folder that holds config.json."
            )
        if not os.access(path, os.R_OK | os.X_OK):
            raise CheckpointError("folder is not readable", path=path, fix="Fix its permissions (chmod -R u+rX).")
        return path
    if not HUB_ID_RE.match(source) or source.startswith((".", "/", "~")):
        raise CheckpointError("no such folder", path=path, fix=NO_MODEL_FIX)
    return _from_hub(source)


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import model_info, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
        pass  # not cached yet
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline:
        raise ModelUnavailableError(
            f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set.", fix=NO_MODEL_FIX
        )
    try:
        # A quick check with a short timeout, so a machine without network fails in seconds, not minutes.
        model_info(repo_id, timeout=HUB_CHECK_TIMEOUT_S)
        log.info("Downloading %s from the Hugging Face hub (safetensors only)", repo_id)
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except (HfHubHTTPError, OSError, ValueError, *_http_errors()) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailableError(
            f"Could not download {repo_id} from the Hugging Face hub ({first_line}).", fix=NO_MODEL_FIX
        ) from exc


def _http_errors() -> tuple[type[Exception], ...]:
    """The HTTP client's errors (huggingface_hub uses httpx2 or httpx, depending on its version)."""
    errors: list[type[Exception]] = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def inspect_checkpoint(path: Path, source: str | None = None) -> CheckpointInfo:
    """Parse config.json, find weight files, read their headers and check FP8 scales.

    Raises:
        CheckpointError: anything that would make loading fail or load a wrong model.
    """
    source = source or str(path)
    config_path = path / "config.json"
    config = _read_json(
        config_path, "config.json is missing", fix="Pass the folder that holds the checkpoint's config.json."
    )
    if not isinstance(config, dict):
        raise CheckpointError("is not a JSON object", path=config_path, fix=_redownload_fix(source))
    fmt = detect_format(config, config_path)
    files = _weight_files(path, source)
    tensors = _read_headers(files, source)
    _check_index_consistency(path, files, tensors)
    if fmt.is_fp8:
        _check_scales(fmt, tensors, path, source)
    chat_template = _has_chat_template(path)
    info = CheckpointInfo(source, path, config, fmt, files, tensors, chat_template)
    _check_tokenizer(path, info)
    return info


def _read_json(file: Path, missing: str, fix: str) -> Any:
    if not file.exists():
        raise CheckpointError(missing, path=file, fix=fix)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"cannot be parsed: {exc}", path=file, fix="Restore the file from the original checkpoint."
        ) from exc


def _weight_files(path: Path, source: str) -> list[Path]:
    index_path = path / INDEX_FILE
    if index_path.exists():
        index = _read_json(index_path, "", fix=_redownload_fix(source))
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError("has no weight_map", path=index_path, fix=_redownload_fix(source))
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (path / n).exists()]
        if missing:
            raise CheckpointError(
                f"lists shard {missing[0]} that is not in the folder"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                path=index_path,
                fix=f"Download the missing shard(s) again: {_redownload_fix(source)}",
            )
        return [path / n for n in names]
    single = path / SINGLE_FILE
    if single.exists():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    pickles = sorted(p.name for p in path.glob("*.bin"))
    hint = (
        f" It has {', '.join(pickles[:3])}: pickled PyTorch weights are never loaded, because they can run code."
        if pickles
        else ""
    )
    raise CheckpointError(
        f"no *.safetensors weights found.{hint}",
        path=path,
        fix="Use a safetensors checkpoint (convert with `transformers` save_pretrained(safe_serialization=True)).",
    )


def _read_headers(files: list[Path], source: str) -> dict[str, TensorMeta]:
    tensors: dict[str, TensorMeta] = {}
    for file in files:
        try:
            expected_size = _declared_size(file)
            actual = file.stat().st_size
            if actual < expected_size:
                raise CheckpointError(
                    f"is truncated: {actual} bytes on disk, its header describes {expected_size}",
                    path=file,
                    fix=_redownload_fix(source),
                )
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    piece = handle.get_slice(name)
                    tensors[name] = TensorMeta(file, str(piece.get_dtype()), tuple(piece.get_shape()))
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"is not a readable safetensors file ({exc})", path=file, fix=_redownload_fix(source)
            ) from exc
    return tensors


# The safetensors format caps its JSON header at 100 MB; a larger length is damage or a hostile file,
# and reading it would allocate that much before anything could refuse it.
MAX_HEADER_BYTES = 100_000_000


def _declared_size(file: Path) -> int:
    """File size that the safetensors header promises (8-byte length + header + data)."""
    with file.open("rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        if header_len > min(MAX_HEADER_BYTES, file.stat().st_size - 8):
            raise ValueError(
                f"its header claims {header_len} bytes, more than the file holds or the format allows "
                f"({MAX_HEADER_BYTES} bytes)"
            )
        header = json.loads(handle.read(header_len))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return 8 + header_len + end


def _check_index_consistency(path: Path, files: list[Path], tensors: dict[str, TensorMeta]) -> None:
    index_path = path / INDEX_FILE
    if not index_path.exists():
        return
    weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    for name, shard in weight_map.items():
        meta = tensors.get(name)
        if meta is None or meta.file.name != shard:
            raise CheckpointError(
                f"says tensor {name!r} is in {shard}, but that file does not hold it",
                path=index_path,
                fix="Regenerate the index or download the checkpoint again.",
            )


def _check_scales(fmt: CheckpointFormat, tensors: dict[str, TensorMeta], path: Path, source: str) -> None:
    fp8_weights = [n for n, m in tensors.items() if m.dtype.startswith("F8") or "float8" in m.dtype]
    if not fp8_weights:
        raise CheckpointError(
            "config.json declares FP8 quantization but no tensor is stored in FP8",
            path=path,
            fix="Remove quantization_config from config.json, or use the real FP8 checkpoint.",
        )
    for name in fp8_weights:
        scale_name = fmt.scale_name(name)
        scale = tensors.get(scale_name) if scale_name else None
        if scale is None:
            raise CheckpointError(
                f"FP8 weight {name!r} has no {scale_name!r}",
                path=tensors[name].file,
                fix=_redownload_fix(source),
            )
        expected = fmt.expected_scale_shape(tensors[name].shape)
        if expected is not None and tuple(scale.shape) != tuple(expected):
            raise CheckpointError(
                f"{scale_name!r} has shape {list(scale.shape)}, expected {list(expected)} for a weight of shape "
                f"{list(tensors[name].shape)} with {fmt.block_size[0]}x{fmt.block_size[1]} blocks",
                path=scale.file,
                fix=_redownload_fix(source),
            )


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return True
    config_file = path / "tokenizer_config.json"
    if config_file.exists():
        try:
            return bool(json.loads(config_file.read_text(encoding="utf-8")).get("chat_template"))
        except (OSError, json.JSONDecodeError):
            return False
    return False


def _check_tokenizer(path: Path, info: CheckpointInfo) -> None:
    if not (path / "tokenizer.json").exists() and not (path / "vocab.json").exists():
        raise CheckpointError(
            "has no tokenizer (tokenizer.json or vocab.json + merges.txt)",
            path=path,
            fix="Copy the tokenizer files from the original model (e.g. Qwen/Qwen3-0.6B) into this folder.",
        )
    if not info.chat_template:
        raise CheckpointError(
            "has no chat template (chat_template.jinja or tokenizer_config.json's chat_template)",
            path=path,
            fix="Copy chat_template.jinja / tokenizer_config.json from the original Qwen3 model into this folder.",
        )
