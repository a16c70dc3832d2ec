"""Saved system prompts of the web chat (presets, the default for new chats) as plain values.

Pure Python, no model: ``.venv/bin/python -m pytest tests/unit/test_saved_prompts.py -q``.
"""

from __future__ import annotations

from chatbot.chat.conversation import Conversation, Turn
from chatbot.serve import ui_prompts


def test_presets_are_saved_replaced_picked_and_deleted() -> None:
    saved, listed, name_box, notice = ui_prompts.save("Pirate", None, "Talk like a pirate.", None)
    assert saved["presets"] == [{"name": "Pirate", "prompt": "Talk like a pirate."}] and notice == ""
    assert listed["choices"] == ["Pirate"] and listed["value"] == "Pirate" and name_box == ""
    saved, *_ = ui_prompts.save("", "Pirate", "Talk like a polite pirate.", saved)  # the picked one, again
    saved, *_ = ui_prompts.save("  Terse  ", None, "One word.", saved)
    assert ui_prompts.names(saved) == ["Pirate", "Terse"]
    assert ui_prompts.pick("Pirate", saved) == ("Talk like a polite pirate.", "Pirate")
    saved, listed, *_ = ui_prompts.delete("Pirate", saved)
    assert ui_prompts.names(saved) == ["Terse"] and listed["value"] is None


def test_a_preset_needs_a_name_and_a_prompt() -> None:
    assert "Name the prompt" in ui_prompts.save("", None, "text", None)[3]
    assert "empty" in ui_prompts.save("Name", None, "  ", None)[3]
    assert "Pick the saved prompt" in ui_prompts.delete("Nothing", None)[3]


def test_new_chats_start_with_the_default_once_one_is_chosen() -> None:
    assert ui_prompts.for_new_chat(None) == {"__type__": "update"}  # none chosen: the box is left alone
    saved = ui_prompts.make_default("Be brief.", None)
    assert ui_prompts.for_new_chat(saved) == "Be brief."
    assert ui_prompts.for_new_chat(ui_prompts.make_default("", saved)) == ""  # no system prompt at all
    assert ui_prompts.note("Be brief.") == "New chats start with: “Be brief.”"
    fresh, kept = Conversation(), Conversation("own", [Turn("user", "hi")])
    assert ui_prompts.for_fresh_chat(saved, fresh) == "Be brief."
    assert ui_prompts.for_fresh_chat(saved, kept) == {"__type__": "update"}
    fresh.unrestored = True  # the tab's chat is not back yet: nothing changes
    assert ui_prompts.for_fresh_chat(saved, fresh) == {"__type__": "update"}


def test_a_malformed_store_reads_as_empty() -> None:
    assert ui_prompts.cleaned({"default": 3, "presets": [{"name": 1}, "x", {"name": "a", "prompt": "b"}]}) == {
        "default": None,
        "presets": [{"name": "a", "prompt": "b"}],
    }
