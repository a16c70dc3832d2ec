"""Files attached to a web chat message: read as text, written into the message, found again when drawn.

A file attached to a message (dropped, pasted or picked in the page; ``ui_attach.py`` does the page's
part) is read here once, as text: UTF-8 text and code files by their name, and the text layer of a PDF
(``pypdf``). Anything else (images, archives, office files, a binary file named ``.txt``) is refused,
saying what is accepted.

The model reads each file's text in a block of its own, then what was typed::

    <file name="backup.sh" chars="1234">
    ...the file's 1,234 characters...
    </file>

    What does this script do?

That text is the message: the context meter counts it, the model reads it, and the saved chat (browser
storage, export) keeps it as the message's content. ``split`` finds the blocks again (the ``chars``
count makes that exact, whatever the file holds) so the page shows each file as a folded block under its
name, then the typed text. Plain Python; no Gradio.
"""

from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ChatbotError

log = logging.getLogger(__name__)

# The suffixes read as text: prose and markup, data, and source code. Anything else is refused.
TEXT_SUFFIXES = frozenset(
    (
        *("txt", "text", "md", "markdown", "rst", "adoc", "org", "tex", "bib", "log", "srt", "vtt"),
        *("json", "jsonl", "ndjson", "csv", "tsv", "yaml", "yml", "toml", "ini", "cfg", "conf", "xml"),
        *("properties", "env", "sql", "graphql", "proto", "ipynb", "svg", "diff", "patch"),
        *("py", "pyi", "js", "mjs", "cjs", "ts", "tsx", "jsx", "html", "htm", "css", "scss", "sass", "less"),
        *("vue", "svelte", "c", "h", "cc", "cpp", "cxx", "hpp", "hh", "cs", "java", "kt", "kts", "scala"),
        *("go", "rs", "rb", "php", "pl", "pm", "lua", "r", "jl", "swift", "m", "mm", "dart", "sh", "bash"),
        *("zsh", "fish", "ps1", "bat", "cmd", "hs", "ml", "ex", "exs", "erl", "clj", "el", "vim", "cmake"),
        *("gradle", "mk", "tf", "nix", "zig", "sv", "vhd", "asm", "s", "f90", "groovy", "dockerfile"),
    )
)
# Files people attach that have no suffix, or one that says nothing.
TEXT_NAMES = frozenset(
    ("makefile", "dockerfile", "readme", "license", "gemfile", "rakefile", "procfile", ".gitignore", ".editorconfig")
)
ACCEPTED = "text (.txt, .md, .csv, .json…), code (.py, .js, .c, .sh…) or a PDF"
# The fence languages the page highlights safely (Gradio's bundled grammars); other files are shown as text.
FENCE_LANGUAGES = {
    **{"py": "python", "pyi": "python", "json": "json", "ipynb": "json", "js": "javascript", "mjs": "javascript"},
    **{"ts": "typescript", "sh": "bash", "bash": "bash", "html": "html", "htm": "html", "css": "css"},
    **{"yaml": "yaml", "yml": "yaml", "sql": "sql", "md": "markdown", "markdown": "markdown"},
}
MAX_NAME_LENGTH = 120
MAX_PDF_PAGES = 500  # reading a PDF's text takes time: a bound on what one upload may cost the server
BINARY_PROBE_BYTES = 8192
BLOCK_RE = re.compile(r'<file name="([^"\n]*)" chars="(\d{1,9})">\n')
BLOCK_END = "\n</file>"


@dataclass(frozen=True)
class Attachment:
    """One attached file as the model reads it: its name and its text."""

    name: str
    text: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "text": self.text}

    @classmethod
    def from_dict(cls, item: Any) -> Attachment | None:
        """An attachment from ``as_dict`` output; None for anything else."""
        if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("text"), str):
            return cls(clean_name(item["name"]), item["text"])
        return None

    def block(self) -> str:
        return f'<file name="{self.name}" chars="{len(self.text)}">\n{self.text}{BLOCK_END}'


def attachments_of(items: Any) -> list[Attachment]:
    """The well-formed attachments in ``items`` (the page's list of dicts); others are left out."""
    found = [Attachment.from_dict(item) for item in items] if isinstance(items, list) else []
    return [item for item in found if item is not None]


def clean_name(name: str) -> str:
    """A file name fit for a block's header: one line, no quotes or angle brackets, at most 120 characters."""
    flat = re.sub(r'["<>\r\n\t]', "_", Path(name.replace("\\", "/")).name).strip() or "file"
    return flat if len(flat) <= MAX_NAME_LENGTH else flat[: MAX_NAME_LENGTH - 1] + "…"


def compose(message: str, attachments: list[Attachment]) -> str:
    """The message as the model reads it: one block per file, then the typed text (``split`` undoes it).

    Files first, as llama.cpp's web UI sends them: a question asked again in other words (an edit) then
    shares the files' prompt prefix, which the engine's prefix cache need not read again, and a long
    document before the question is the order models are trained to read."""
    if not attachments:
        return message
    blocks = "\n\n".join(item.block() for item in attachments)
    return f"{blocks}\n\n{message}" if message.strip() else blocks


def split(content: str) -> tuple[str, list[Attachment]]:
    """A message's attached files and its typed text (``compose`` in reverse): (typed text, files). Text that
    does not start with a whole block is all typed."""
    found: list[Attachment] = []
    position = 0
    while header := BLOCK_RE.match(content, position):
        text_end = header.end() + int(header.group(2))
        if not content.startswith(BLOCK_END, text_end):
            break
        found.append(Attachment(header.group(1), content[header.end() : text_end]))
        position = text_end + len(BLOCK_END)
        if position == len(content):
            return "", found
        if not content.startswith("\n\n", position):
            return content, []
        position += 2
    return (content[position:], found) if found else (content, [])


def with_typed_text(content: str, typed: str) -> str:
    """``content`` (a stored message) with its typed text replaced by ``typed``, its files kept (an edit)."""
    return compose(typed, split(content)[1])


def fence_language(name: str) -> str:
    return FENCE_LANGUAGES.get(Path(name).suffix.lower().lstrip("."), "text")


def describe_size(text: str) -> str:
    """ "1,234 characters · 56 lines", for a file's chip and its folded block."""
    lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    return f"{len(text):,} characters · {lines:,} line{'s' if lines != 1 else ''}"


# --- reading an uploaded file ------------------------------------------------------------------------


def read_attachment(path: str | Path, max_chars: int) -> Attachment:
    """The text of the uploaded file at ``path`` (named as uploaded), refused unless it is text or a PDF.

    Raises:
        ChatbotError: an unknown or binary file type, text that is not UTF-8, a PDF without text or that
            cannot be read, or more than ``max_chars`` characters; each says which file and what to do.
    """
    path = Path(path)
    name = clean_name(path.name)
    suffix = path.suffix.lower().lstrip(".")
    if suffix == "pdf":
        text = pdf_text(path, name)
    elif suffix in TEXT_SUFFIXES or path.name.lower() in TEXT_NAMES:
        text = decoded_text(path.read_bytes(), name)
    else:
        kind = f"a .{suffix} file" if suffix else "a file without a known type"
        raise ChatbotError(f"“{name}” is {kind}, which this chat cannot read.", fix=f"Attach {ACCEPTED}.")
    if len(text) > max_chars:
        raise ChatbotError(
            f"“{name}” holds {len(text):,} characters of text; a chat holds at most {max_chars:,}.",
            fix="Attach a part of it, or start the server with a larger --max-chat-mb.",
        )
    if not text.strip():
        raise ChatbotError(f"“{name}” is empty.", fix="Attach a file that holds some text.")
    return Attachment(name, text)


def decoded_text(data: bytes, name: str) -> str:
    """``data`` as text (UTF-8, or UTF-16 with its byte order mark), with Unix line ends.

    Raises:
        ChatbotError: binary data (a NUL byte, or bytes that are not UTF-8).
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif b"\x00" in data[:BINARY_PROBE_BYTES]:
        raise ChatbotError(f"“{name}” is not text (it holds binary data).", fix=f"Attach {ACCEPTED}.")
    else:
        encoding = "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ChatbotError(
            f"“{name}” is not UTF-8 text (byte {exc.start:,} cannot be read).",
            fix=f"Save it as UTF-8, or attach {ACCEPTED}.",
        ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def pdf_text(path: Path, name: str) -> str:
    """The text layer of the PDF at ``path``, page after page (a blank line between pages).

    Raises:
        ChatbotError: the file is not a readable PDF, is encrypted, has too many pages or no text.
    """
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    unreadable = f"“{name}” cannot be read as a PDF"
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise ChatbotError(f"“{name}” is protected by a password.", fix="Attach an unprotected copy.")
        if len(reader.pages) > MAX_PDF_PAGES:
            raise ChatbotError(
                f"“{name}” has {len(reader.pages):,} pages; this chat reads PDFs of at most {MAX_PDF_PAGES}.",
                fix="Attach the pages you need (printed to a smaller PDF).",
            )
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    # pypdf raises its own errors for most damaged files, and Python's for the rest (a bad number, a missing key)
    except (PyPdfError, OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        log.info("Could not read the PDF %s: %s: %s", name, type(exc).__name__, exc)
        raise ChatbotError(f"{unreadable} ({type(exc).__name__}).", fix="Attach another copy, or its text.") from exc
    text = "\n\n".join(page for page in pages if page)
    if not text:
        raise ChatbotError(
            f"“{name}” has no text to read (a scanned PDF holds pictures of its pages).",
            fix="Attach a PDF with a text layer, or its text.",
        )
    return text.replace("\r\n", "\n").replace("\r", "\n")
