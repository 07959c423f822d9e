"""Real models that run with grilly_kv's KV policies (SmolLM2-135M-Instruct)."""
