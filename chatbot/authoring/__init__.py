"""Writing checkpoints: generated Qwen3 models in the real format (``make-model``), BF16 -> block-FP8
conversion (``quantize``) and the generated checkpoints' tokenizer.

Imports the model layer (formats, FP8 math, checkpoint checks) and nothing above it.
"""
