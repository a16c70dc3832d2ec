"""The model layer: checkpoints, their formats, FP8 math and kernels, CPU layers, the device and
precision decision, and the loader that builds a ready ``LoadedModel``.

Imports only ``chatbot.errors`` and ``chatbot.settings`` from this project: nothing here knows about
the engine, chats, servers or the command line.
"""
