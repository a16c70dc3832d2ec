"""Settings: one typed object, built once from CLI flags and ``QWEN_*`` environment variables.

Priority for every field: explicit argument / CLI flag > environment variable > the default below.
Each field is written once, here: its description, range and default are also the command line's
``--help`` (``chatbot/cli/main.py`` makes one flag per field), and the README's "Options" table lists
the same fields (a test checks it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "Qwen/Qwen3-0.6B-FP8"
PrecisionChoice = Literal["auto", "fp8", "int8", "fp16", "bf16", "fp32"]


MIN_SESSIONS = 16  # the fewest tabs a derived --max-sessions holds (the memory budget still bounds them)


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where this app keeps what it makes or fetches once (the demo model, Qwen3's tokenizer, llama.cpp):
    ``$XDG_CACHE_HOME/qwen3-chat``, by default ``~/.cache/qwen3-chat``."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qwen3-chat"


class Tuning(BaseModel):
    """The CPU tuning switches: measured defaults the bench established, changed only to compare or work around.

    They are settings like the others (flags of every command that loads a model, ``QWEN_*`` variables),
    read where they act through ``tuning()``; a flag given on the command line is exported to its variable
    (``Settings.export_tuning``), so the model layer and the processes the app starts see it too.
    """

    model_config = ConfigDict(validate_default=True)

    cpu_decode_step: Literal["auto", "compiled", "eager", "off"] = Field(
        "auto", description="CPU decode step: auto (compiled where it checks out), compiled, eager or off."
    )
    cpu_decode_rows: int | None = Field(
        None, ge=1, le=16, description="Most batched rows a CPU matmul takes from the 16-bit weights (default 1)."
    )
    cpu_prefill_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="CPU prefill dtype: auto (BF16 where the CPU has BF16 instructions), bf16, fp16 or fp32."
    )
    cpu_prefill_copy: bool = Field(
        True, description="Keep a prefill copy of the CPU weights (faster prompts, more memory); off: none."
    )
    cpu_prefill_pack: bool = Field(True, description="Keep BF16 prefill copies pre-packed for oneDNN; off: plain.")
    int8_isa: Literal["auto", "avx512-vnni", "avx-vnni", "avx2"] = Field(
        "auto", description="Instruction set of the INT8 dot-product kernel (auto: the fastest this CPU runs)."
    )
    kernel_cache: Path | None = Field(
        None, description="Folder for the built INT8 kernel (default: the cache folder's kernels/)."
    )
    batch_invariant: bool = Field(
        False, description="Decode batched rows one by one, so a seeded reply is the same alone or in a batch (slower)."
    )
    cpu_attention: Literal["auto", "kernel", "sdpa"] = Field(
        "auto",
        description="CPU decode attention over a 16-bit cache: auto or kernel (ours, where it builds and checks "
        "out), sdpa (PyTorch's flash attention).",
    )
    kv_cache_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="CPU key/value cache dtype: auto (BF16 where the CPU has BF16 instructions, else FP16; "
        "FP32 with --precision fp32), bf16, fp16 or fp32.",
    )

    @field_validator(
        "cpu_decode_step", "cpu_prefill_dtype", "int8_isa", "cpu_attention", "kv_cache_dtype", mode="before"
    )
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() or "auto" if isinstance(value, str) else value

    @field_validator("cpu_decode_rows", "kernel_cache", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


ENV_PREFIX = "QWEN_"


def tuning(environ: Mapping[str, str] | None = None) -> Tuning:
    """The tuning switches from ``environ`` (default: this process's environment).

    Raises:
        ValueError: a variable holds no valid value; the message names it and says what it takes.
    """
    environ = os.environ if environ is None else environ
    values = {
        name: environ[variable]
        for name in Tuning.model_fields
        if (variable := f"{ENV_PREFIX}{name}".upper()) in environ
    }
    try:
        return Tuning.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        variable = f"{ENV_PREFIX}{error['loc'][0]}".upper()
        raise ValueError(f"{variable}: {error['msg'][0].lower()}{error['msg'][1:]}, not {error['input']!r}") from None


class Settings(BaseSettings, Tuning):
    """Everything the app can be told, with its default and range."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    model: str = Field(DEFAULT_MODEL, description="Hub id or local folder of a Qwen3 checkpoint.")
    device: str = Field("auto", description="Where the model runs: auto, cpu, cuda, cuda:N or mps.")
    precision: PrecisionChoice = Field("auto", description="Precision mode: auto, fp8, int8 (CPU), fp16, bf16 or fp32.")
    gpu_memory_limit: float | None = Field(
        None, gt=0.0, le=1.0, description="Fraction of GPU memory this process may use, e.g. 0.8."
    )
    max_context: int | None = Field(
        None, ge=256, description="Context window in tokens (default: the model's own, at most 32768)."
    )
    demo: bool = Field(
        False, description="Use a generated tiny demo model (random weights, scripted replies), no download."
    )
    trust_remote_code: bool = Field(
        False, description="Allow code shipped inside a checkpoint to run (Qwen3 needs none)."
    )

    host: str = Field(
        "127.0.0.1",
        description="Interface the web UI and API listen on; 0.0.0.0 serves the LAN (set auth and an API key).",
    )
    port: int = Field(7860, ge=1, le=65535, description="Web UI port.")
    api_port: int = Field(8000, ge=0, le=65535, description="OpenAI-compatible API port; 0 turns the API off.")
    auth: SecretStr | None = Field(None, description="user:password login for the web UI (as a flag it shows in `ps`).")
    auth_file: Path | None = Field(
        None, description="File holding user:password, one a line for several logins (keeps it out of `ps`)."
    )
    api_key: SecretStr | None = Field(None, description="Key the API then requires as 'Authorization: Bearer KEY'.")
    api_key_file: Path | None = Field(None, description="File holding the API key (keeps it out of `ps`).")
    allowed_hosts: str = Field(
        "", description="Extra Host names both servers answer to, comma-separated ('*': any); loopback and ours always."
    )
    cors_origins: str = Field(
        "", description="Web origins (https://app.example) whose pages may call the API, comma-separated."
    )
    max_upload_mb: float = Field(
        10.0, gt=0, description="Largest file the web page accepts (conversation imports, attached files), in MB."
    )
    max_chat_mb: float = Field(
        2.0, gt=0, description="Largest chat the server holds for a tab (imported, opened or restored), in MB."
    )
    max_sessions: int | None = Field(
        None,
        ge=1,
        description="Web chat tabs whose chat the server holds at once (default: --session-memory-mb / --max-chat-mb, "
        "at least 16).",
    )
    chat_store: Literal["auto", "browser", "server"] = Field(
        "auto",
        description="Where the web chat keeps chats: server (SQLite, one store per login; needs --auth), "
        "browser (its localStorage) or auto (server with --auth, else browser).",
    )
    chat_store_file: Path | None = Field(
        None, description="SQLite file of the chats kept on the server (default: chats.sqlite3 in the cache folder)."
    )
    chat_store_mb: float = Field(
        256.0, gt=0, description="Chats one login may keep on the server, in MB (and at most 1000 chats)."
    )
    session_memory_mb: float = Field(
        1024.0, gt=0, description="Memory the held web chats may take together, in MB (oldest idle let go beyond)."
    )
    max_request_mb: float = Field(8.0, gt=0, description="Largest request body either server reads, in MB (413 above).")
    responses_store: int = Field(
        256,
        ge=0,
        description="Replies /v1/responses keeps, in memory, for previous_response_id and GET /v1/responses/{id} "
        "(0: none).",
    )
    max_new_tokens_cap: int = Field(
        16384, ge=1, description="Most tokens one reply may generate (API: asking for more is a 400)."
    )
    max_generation_seconds: float = Field(
        600.0, gt=0, description="Longest one reply may generate, in seconds; it then ends with finish_reason length."
    )
    stream_write_seconds: float = Field(
        30.0, gt=0, description="How long a streamed reply waits for its client to read before it is cancelled."
    )
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, how long running replies may finish before they are stopped."
    )
    queue_size: int = Field(
        16, ge=1, le=1024, description="Requests that may wait for the model at once (the API answers 429 beyond)."
    )
    max_batch: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Requests generated at once (default: 8 on CPU, 32 on a GPU, 64 with a backend; 1: one at a time).",
    )
    client_limit: int = Field(0, ge=0, description="Requests one client may have waiting (0: half the queue).")
    prefill_chunk: int | None = Field(
        None, ge=16, description="Prompt tokens read per step while others decode (default: 128 CPU, 2048 GPU)."
    )
    system_prompt: str = Field("", description="Default system prompt (of the web chat, and of the terminal chat).")
    prefix_cache_tokens: int = Field(
        16384, ge=0, description="Tokens of conversation key/value cache kept for reuse (0 disables)."
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all cores).")
    served_model_name: str | None = Field(
        None, min_length=1, description="Model name the API lists and answers to (default: hub id or folder name)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="How much the log says.")

    # A remote backend: the web chat and the API in front of another OpenAI-compatible server.
    backend: str | None = Field(
        None,
        description="Base URL (…/v1) of an OpenAI-compatible server (vLLM, SGLang, llama-server...) to answer from; "
        "nothing loads locally.",
    )
    backend_api_key: SecretStr | None = Field(None, description="Bearer key the backend requires.")
    backend_api_key_file: Path | None = Field(None, description="File holding the backend's key (not in `ps`).")
    backend_model: str | None = Field(
        None, min_length=1, description="Model to ask the backend for (default: the first one it lists)."
    )
    backend_precision: str | None = Field(
        None,
        min_length=1,
        max_length=40,
        pattern=r"^[A-Za-z0-9 ._+-]+$",
        description="The backend's precision as its operator states it (e.g. fp8); shown, never guessed.",
    )

    @field_validator("backend")
    @classmethod
    def _backend_is_a_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parsed = urlsplit(value.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"backend must be an http:// or https:// URL such as http://host:8000/v1, not {value!r}")
        if parsed.path in ("", "/"):  # a bare host: the OpenAI routes live under /v1
            return urlunsplit((parsed.scheme, parsed.netloc, "/v1", "", ""))
        return value.strip().rstrip("/")

    @field_validator("auth")
    @classmethod
    def _auth_has_user_and_password(cls, value: SecretStr | None) -> SecretStr | None:
        # A file may hold several logins, one user:password a line (each gets its own chats on the server).
        if value is not None and not all(":" in line for line in _login_lines(value.get_secret_value())):
            raise ValueError("auth must look like user:password (an auth file: one user:password a line)")
        return value

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        for name in ("auth", "api_key", "backend_api_key"):
            file = getattr(self, f"{name}_file")
            if file is None:
                continue
            if getattr(self, name) is not None:
                raise ValueError(f"give {name} or {name}_file, not both")
            try:
                secret = file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"{file} cannot be read ({exc.strerror})") from exc
            if not secret:
                raise ValueError(f"{file} is empty")
            setattr(self, name, SecretStr(secret))
        if self.auth is not None:
            self._auth_has_user_and_password(self.auth)
        if self.chat_store == "server" and self.auth is None:
            raise ValueError("chat_store server keeps one store per login: give --auth or --auth-file too")
        return self

    @classmethod
    def from_overrides(cls, **overrides: Any) -> Settings:
        """Build settings where every non-None keyword beats the environment."""
        given: dict[str, Any] = {key: value for key, value in overrides.items() if value is not None}
        return cls(**given)

    def export_tuning(self, environ: MutableMapping[str, str] | None = None) -> None:
        """Write the tuning switches given as flags to their ``QWEN_*`` variables, where ``tuning()`` reads them."""
        environ = os.environ if environ is None else environ
        for name in Tuning.model_fields:
            value = getattr(self, name)
            if name in self.model_fields_set and value is not None:
                environ[f"{ENV_PREFIX}{name}".upper()] = (
                    ("1" if value else "0") if isinstance(value, bool) else str(value)
                )

    @property
    def session_capacity(self) -> int:
        """``max_sessions`` as given, else as sized from the memory budget."""
        return self.max_sessions or max(MIN_SESSIONS, int(self.session_memory_mb / self.max_chat_mb))

    def auth_pair(self) -> tuple[str, str] | None:
        """The first login (the only one unless the auth file lists several)."""
        pairs = self.auth_pairs()
        return pairs[0] if pairs else None

    def auth_pairs(self) -> list[tuple[str, str]]:
        """Every login: ``--auth`` gives one, an auth file one per non-empty line."""
        if self.auth is None:
            return []
        return [_split_login(line) for line in _login_lines(self.auth.get_secret_value())]

    def keeps_chats_on_server(self) -> bool:
        """Whether the web chat keeps chats on the server (``chat_store``: server, or auto with a login)."""
        return self.chat_store == "server" or (self.chat_store == "auto" and self.auth is not None)


def _login_lines(secret: str) -> list[str]:
    return [line.strip() for line in secret.splitlines() if line.strip()] or [secret]


def _split_login(line: str) -> tuple[str, str]:
    user, _, password = line.partition(":")
    return user, password
