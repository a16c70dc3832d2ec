"""The command line: ``python -m chatbot serve | chat | make-model | quantize | doctor | batch | bench``.

The top layer: may import every other one.
"""
