"""Chats on top of the engine: prompts from the chat template (``prompt``), the thinking split at
``</think>`` (``thinking``), typed chat events and conversations (``reply``) and ``Qwen3ChatBot``.

Imports the engine and model layers, never the servers or the command line.
"""
