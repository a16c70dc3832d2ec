"""Qwen3 Chat: a local chat app around Qwen3 (FP8 on GPUs that can, FP16 fallback elsewhere).

``from chatbot import Qwen3ChatBot`` is the Python entry point; ``python -m chatbot --help`` the
command line (serve, make-model, quantize, doctor, bench, batch).
"""

import os

# oneDNN (BF16 matmuls on CPUs with AVX512-BF16/AMX) caches a compiled kernel per matrix shape, and
# every new prompt length is a new shape: its default of 1024 entries let a long-running server grow
# by hundreds of MB. A small cache keeps memory flat; a new shape costs one kernel creation (well under
# a millisecond). Set before torch loads.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")

from .chat.bot import Qwen3ChatBot
from .chat.remote import RemoteBackend
from .chat.reply import AnswerDelta, ChatDone, Conversation, Loading, QueuePosition, ThinkingDelta
from .errors import (
    BackendError,
    BackendUnavailableError,
    ChatbotError,
    CheckpointError,
    ContextLengthError,
    GenerationError,
    InvalidRequestError,
    ModelUnavailableError,
    PrecisionError,
    QueueFullError,
)

__version__ = "0.1.0"
__all__ = [
    "AnswerDelta",
    "BackendError",
    "BackendUnavailableError",
    "ChatDone",
    "ChatbotError",
    "CheckpointError",
    "ContextLengthError",
    "Conversation",
    "GenerationError",
    "InvalidRequestError",
    "Loading",
    "ModelUnavailableError",
    "PrecisionError",
    "QueueFullError",
    "QueuePosition",
    "Qwen3ChatBot",
    "RemoteBackend",
    "ThinkingDelta",
]
