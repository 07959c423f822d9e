"""The checkpoint's byte-level BPE rebuilt with PyPI ``tokenizers``, and its chat template.

Recipe (MODEL.md): BPE over the stored vocabulary and merges; pre-tokenizer
``Digits(individual_digits=True)`` then ``ByteLevel(add_prefix_space=False)``; ByteLevel decoder;
control tokens (``<|im_start|>``, ``<|im_end|>``, ...) added as special tokens.
"""
from __future__ import annotations

from .llama.weights import TokenizerData

CONTROL_TOKEN_TYPE = 3          # GGUF token_type of special/control tokens
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


class ChatTokenizer:
    """Encode/decode text and apply the ChatML template of SmolLM2-Instruct.

    Args:
        data: vocabulary, merges and token types from the checkpoint.
    """

    def __init__(self, data: TokenizerData):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        vocab = {tok: i for i, tok in enumerate(data.tokens)}
        merges = [tuple(m.split(" ", 1)) for m in data.merges]
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        tk.decoder = decoders.ByteLevel()
        specials = [t for t, kind in zip(data.tokens, data.token_types) if kind == CONTROL_TOKEN_TYPE]
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        self._tk = tk
        self.special_ids = {t: vocab[t] for t in specials}
        self.vocab_size = len(data.tokens)
        self.im_end_id = self.special_ids.get("<|im_end|>")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special-token strings in it are recognised)."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Text of ``ids`` (special tokens are kept as their strings)."""
        return self._tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def chat_prompt(self, user: str, system: str = DEFAULT_SYSTEM) -> list[int]:
        """Ids of a one-turn ChatML conversation, ending where the assistant starts to answer."""
        text = (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                "<|im_start|>assistant\n")
        return self.encode(text)

    def stop_ids(self, eos_id: int) -> set[int]:
        """Ids that end an answer: the model's EOS and ``<|im_end|>``."""
        return {eos_id} | ({self.im_end_id} if self.im_end_id is not None else set())
