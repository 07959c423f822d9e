"""Defaults shared by the Llama-family forwards."""

DEFAULT_MAX_CHUNK = 32      # tokens per forward call (a streaming cache keeps max_chunk - 1 extra slots)
