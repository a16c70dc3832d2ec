"""The engine: one model shared by every caller, the bounded queue and cancellation (``engine``), the
decode loop with its prefix cache (``generation``), the key/value cache and the sampler.

Imports the model layer and nothing above it: the engine deals in token ids and text deltas, not chats.
"""
