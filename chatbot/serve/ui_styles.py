"""Positioning styles are taken out of the HTML in chat messages before the page draws them.

Gradio's sanitizer keeps ``style`` attributes, so a message (typed, imported, or written by the model) with
``<a style="position:fixed;inset:0;z-index:9999">`` covered the whole page and took its clicks. Here every
``style`` attribute outside code loses its positioning declarations (``position``, ``z-index``,
``inset``, ``top``/``left``..., ``transform``, ``translate``, ``margin``...); one the check cannot read
plainly (CSS escapes, comments, HTML character references) is dropped whole. Code blocks and code spans
are text on the page and stay as written, so CSS shown as code is unchanged.
"""

from __future__ import annotations

import html
import re

# Properties that move an element out of its place in the message (or over the page).
POSITIONING = re.compile(
    r"^(position|z-index|inset(-.*)?|top|left|right|bottom|float|transform|translate|rotate|scale|margin(-.*)?|"
    r"offset(-.*)?|contain|will-change|clip-path|mask(-.*)?|zoom)$"
)
# Fenced code blocks, then inline code spans (a run of backticks up to the same run).
CODE = re.compile(r"^( {0,3})(`{3,}|~{3,})[^\n]*\n.*?(?:^ {0,3}\2[ \t]*$|\Z)|(`+)(?!`).+?(?<!`)\3(?!`)", re.M | re.S)
# A style attribute wherever it stands outside code: not only inside a tag this finds (a quoted ">" ends a
# naive tag early), and in one pass, whatever the text. Browsers also take "/" or a closing quote before it.
STYLE = re.compile(r"""([\s/"'])style\s*=\s*("[^"]*"|'[^']*'|[^\s"'=<>`]+)""", re.I)


def without_positioning(text: str) -> str:
    """``text`` with positioning declarations taken out of every tag's style outside code."""
    if "style" not in text.lower():
        return text
    pieces, last = [], 0
    for code in CODE.finditer(text):
        pieces += [_clean_tags(text[last : code.start()]), code.group(0)]
        last = code.end()
    pieces.append(_clean_tags(text[last:]))
    return "".join(pieces)


def _clean_tags(text: str) -> str:
    return STYLE.sub(_clean_style, text)


def _clean_style(match: re.Match[str]) -> str:
    quoted = match.group(2)
    quote = quoted[0] if quoted[0] in "\"'" else '"'
    value = quoted[1:-1] if quoted[0] in "\"'" else quoted
    if any(sign in value for sign in ("\\", "/*", "&")) or html.unescape(value) != value:
        return match.group(1)  # not plain CSS: dropped whole rather than parsed the way a browser might
    kept = []
    for declaration in value.split(";"):
        name, colon, _ = declaration.partition(":")
        if colon and POSITIONING.match(name.strip().lower()):
            continue
        if declaration.strip():
            kept.append(declaration.strip())
    if not kept:
        return match.group(1)
    return f"{match.group(1)}style={quote}{'; '.join(kept)}{quote}"
