"""Saved system prompts of the web chat: a few named presets and the prompt new chats start with.

Kept per browser with the other settings (``ui.py``'s ``gr.BrowserState``, key "prompts")::

    {"default": "You are a concise assistant." | None, "presets": [{"name": "Pirate", "prompt": "..."}, ...]}

``default`` None: new chats keep the system prompt shown (the server's ``--system-prompt`` at first);
"" starts them without one. Picking a preset puts its prompt in the settings' system prompt box, from
where the next message of the chat shown takes it, as if typed. The functions are plain (values in,
values out); ``wire`` connects them to the page.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

MAX_PRESETS = 30
MAX_NAME = 60
MAX_PROMPT = 20_000  # characters of one saved prompt
NOTE_LENGTH = 60  # characters of the default prompt quoted under the buttons


@dataclass
class PromptControls:
    store: gr.State  # the saved prompts (see the module docstring), kept in the browser by ui.py
    preset: gr.Dropdown
    name: gr.Textbox
    save_button: gr.Button
    delete_button: gr.Button
    default_button: gr.Button
    default_note: gr.Markdown


def prompt_controls() -> PromptControls:
    """The "Saved prompts" section, made where this is called (under the system prompt box)."""
    store = gr.State(None)
    with gr.Accordion("Saved prompts", open=False, elem_id="qc-prompts"):
        preset = gr.Dropdown(
            [], value=None, label="Use a saved prompt", elem_id="qc-preset", allow_custom_value=False, interactive=True
        )
        name = gr.Textbox(
            placeholder="Name, to save the prompt above…",
            label="Prompt name",
            show_label=False,
            max_lines=1,
            elem_id="qc-preset-name",
        )
        with gr.Row():
            small: dict[str, Any] = {"size": "sm", "variant": "secondary", "min_width": 60}
            save_button = gr.Button("Save", elem_id="qc-preset-save", **small)
            delete_button = gr.Button("Delete", elem_id="qc-preset-delete", **small)
        default_button = gr.Button("Start new chats with this prompt", size="sm", elem_id="qc-prompt-default")
        default_note = gr.Markdown(note(None), elem_id="qc-prompt-note", elem_classes="qc-hint")
    return PromptControls(store, preset, name, save_button, delete_button, default_button, default_note)


def cleaned(saved: Any) -> dict[str, Any]:
    """The saved prompts in their one shape (anything malformed, from an older page or edited by hand, dropped)."""
    data = saved if isinstance(saved, dict) else {}
    default = data.get("default")
    presets = []
    for item in data.get("presets") or []:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("prompt"), str):
            presets.append({"name": item["name"][:MAX_NAME], "prompt": item["prompt"][:MAX_PROMPT]})
    return {"default": default[:MAX_PROMPT] if isinstance(default, str) else None, "presets": presets[:MAX_PRESETS]}


def names(saved: Any) -> list[str]:
    return [item["name"] for item in cleaned(saved)["presets"]]


def note(default: str | None) -> str:
    """What new chats start with, in a line under the buttons."""
    if default is None:
        return "New chats keep the system prompt shown."
    if not default.strip():
        return "New chats start without a system prompt."
    line = " ".join(default.split())
    quoted = line if len(line) <= NOTE_LENGTH else line[: NOTE_LENGTH - 1].rstrip() + "…"
    return f"New chats start with: “{quoted}”"


def shown(saved: Any, chosen: str | None = None) -> tuple[Any, str]:
    """The list of presets (``chosen`` selected when it is one) and the default's line."""
    data = cleaned(saved)
    listed = names(data)
    return gr.update(choices=listed, value=chosen if chosen in listed else None), note(data["default"])


def pick(chosen: str | None, saved: Any) -> tuple[Any, Any]:
    """A preset picked: its prompt goes in the system prompt box, its name in the name box (to save it again)."""
    for item in cleaned(saved)["presets"]:
        if item["name"] == chosen:
            return item["prompt"], item["name"]
    return gr.skip(), gr.skip()


def save(name: str, chosen: str | None, prompt: str, saved: Any) -> tuple[Any, ...]:
    """Save the system prompt under ``name`` (or the preset picked), replacing one of the same name.

    Outputs: saved prompts, preset list, name box, notice."""
    title = " ".join((name or chosen or "").split())[:MAX_NAME]
    data = cleaned(saved)
    problem = ""
    if not title:
        problem = "Name the prompt first (the box under the list), then Save."
    elif not prompt.strip():
        problem = "The system prompt is empty: type the prompt to save in the box above."
    elif len(prompt) > MAX_PROMPT:
        problem = f"A saved prompt holds at most {MAX_PROMPT:,} characters; this one has {len(prompt):,}."
    elif title not in names(data) and len(data["presets"]) >= MAX_PRESETS:
        problem = f"At most {MAX_PRESETS} prompts are kept: delete one first."
    if problem:
        return gr.skip(), gr.skip(), gr.skip(), notice(problem)
    presets = [item for item in data["presets"] if item["name"] != title]
    data["presets"] = sorted([*presets, {"name": title, "prompt": prompt}], key=lambda item: item["name"].lower())
    return data, gr.update(choices=names(data), value=title), "", ""


def delete(chosen: str | None, saved: Any) -> tuple[Any, ...]:
    """Delete the preset picked. Outputs: saved prompts, preset list, name box, notice."""
    data = cleaned(saved)
    if chosen not in names(data):
        return gr.skip(), gr.skip(), gr.skip(), notice("Pick the saved prompt to delete in the list first.")
    data["presets"] = [item for item in data["presets"] if item["name"] != chosen]
    return data, gr.update(choices=names(data), value=None), "", ""


def make_default(prompt: str, saved: Any) -> dict[str, Any]:
    """New chats start with ``prompt`` (the system prompt box's text; empty: with no system prompt)."""
    return cleaned(saved) | {"default": prompt[:MAX_PROMPT]}


def for_new_chat(saved: Any) -> Any:
    """The system prompt box of a new chat: the default, if one was chosen."""
    default = cleaned(saved)["default"]
    return gr.skip() if default is None else default


def for_fresh_chat(saved: Any, conversation: Any) -> Any:
    """On page load: the default in the system prompt box when the tab starts a new chat (a chat that has
    messages keeps its own). Run after both the settings and the tab's chat are restored (either may come
    first): until the chat is, nothing is changed."""
    if getattr(conversation, "unrestored", False) or getattr(conversation, "turns", None):
        return gr.skip()
    return for_new_chat(saved)


def notice(text: str) -> str:
    return f'<div class="qc-notice" role="alert">{html.escape(text)}</div>'


def wire(controls: PromptControls, system_prompt: gr.Textbox, notice_box: gr.HTML, prompt_shown: dict) -> None:
    """The section's events; ``prompt_shown``: the step to run once the system prompt box was set (the meter)."""
    private: dict[str, Any] = {"api_visibility": "private"}
    store = controls.store
    store.change(shown, [store, controls.preset], [controls.preset, controls.default_note], **private)
    controls.preset.input(pick, [controls.preset, store], [system_prompt, controls.name], **private).then(
        **prompt_shown, **private
    )
    edits = [store, controls.preset, controls.name, notice_box]
    controls.save_button.click(save, [controls.name, controls.preset, system_prompt, store], edits, **private)
    controls.delete_button.click(delete, [controls.preset, store], edits, **private)
    controls.default_button.click(make_default, [system_prompt, store], store, **private)
