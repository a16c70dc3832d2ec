"""Serving: one process with one engine (``server``), the OpenAI-compatible API (``api``,
``api_models``) and the Gradio web chat (``ui``, ``ui_render``, ``ui_session``); ``app_state`` holds
the value both servers share.

Imports the chat, engine, model and authoring layers; the UI and the API only talk to the engine
through ``chatbot.chat``.
"""
