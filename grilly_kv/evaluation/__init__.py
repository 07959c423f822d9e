"""What a KV policy costs in accuracy: needle-in-a-haystack retrieval and perplexity on essays."""
