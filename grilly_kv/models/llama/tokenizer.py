"""The tokenizer and chat template stored in a GGUF file, rebuilt with PyPI ``tokenizers`` and jinja2.

Two tokenizer models, as ``tokenizer.ggml.model`` names them:

- ``gpt2``: byte-level BPE over ``tokenizer.ggml.tokens`` and ``tokenizer.ggml.merges``. The text is
  first split by the regular expressions of the pre-tokenizer named in ``tokenizer.ggml.pre``
  (:data:`PRE_TOKENIZERS`), then mapped to bytes (GPT-2's byte-to-unicode table).
- ``llama``: SentencePiece BPE over ``tokenizer.ggml.tokens`` and ``tokenizer.ggml.scores``: spaces
  become ``"▁"`` (with a leading one unless ``tokenizer.ggml.add_space_prefix`` is false), adjacent
  pieces are merged highest score first, and bytes with no piece fall back to ``<0xNN>`` tokens.
  The merge list is derived from the scores (every way a piece splits into two pieces, ranked by
  the piece's score), which is the same greedy rule.

Control and user-defined tokens (``token_type`` 3 and 4) are matched whole in the text. The chat
template (``tokenizer.chat_template``) is rendered by jinja2 in a sandbox, with ``messages``,
``add_generation_prompt``, ``bos_token`` and ``eos_token``, so no system prompt is hard-coded here:
whatever the template does without one is what the model's authors chose.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split patterns of llama.cpp's pre-tokenizer types (llama-vocab.cpp), by ``tokenizer.ggml.pre``.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "default": (_GPT2,),
    "gpt2": (_GPT2,),
    "smollm": (r"\p{N}", _GPT2),
    "llama-bpe": (_LLAMA3,),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "tekken": (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
               r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
               r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
}
# Texts of control tokens that end a turn in the common chat formats (llama.cpp treats them as EOG).
END_OF_TURN_TEXTS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                     "<|end_of_text|>", "</s>", "<|eom_id|>")


@dataclass(frozen=True)
class TokenizerSpec:
    """What a GGUF file says about its tokenizer (the ``tokenizer.*`` metadata keys).

    Attributes:
        model: ``"gpt2"`` (byte-level BPE) or ``"llama"`` (SentencePiece BPE).
        tokens: the vocabulary, id order.
        token_types: GGUF token type per id (1 normal, 2 unknown, 3 control, 4 user defined,
            5 unused, 6 byte).
        merges: ``"a b"`` merge rules (gpt2), highest priority first.
        scores: piece scores (llama).
        pre: pre-tokenizer name (gpt2).
        bos_id, eos_id, eot_id, unk_id: special ids (-1: none).
        add_bos: prepend BOS when encoding a prompt.
        add_space_prefix: prepend a space before SentencePiece encoding.
        chat_template: jinja2 source ("" if the file has none).
    """

    model: str
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    pre: str = "default"
    bos_id: int = -1
    eos_id: int = -1
    eot_id: int = -1
    unk_id: int = -1
    add_bos: bool = False
    add_space_prefix: bool = True
    chat_template: str = ""

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], source: str = "the model file") -> "TokenizerSpec":
        """Read the ``tokenizer.*`` keys of a GGUF metadata mapping.

        Raises:
            ValueError: a missing key or inconsistent lists, naming ``source``.
        """
        def need(key):
            if key not in meta:
                raise ValueError(f"{source}: tokenizer metadata {key!r} is missing")
            return meta[key]

        model = str(need("tokenizer.ggml.model"))
        tokens = tuple(str(t) for t in need("tokenizer.ggml.tokens"))
        n = len(tokens)
        types = tuple(int(t) for t in meta.get("tokenizer.ggml.token_type", [NORMAL] * n))
        if len(types) != n:
            raise ValueError(f"{source}: {len(types)} token types for {n} tokens")
        bad = [i for i, t in enumerate(types) if not 1 <= t <= 6]
        if bad:
            raise ValueError(f"{source}: token {bad[0]} has type {types[bad[0]]} ({len(bad)} tokens outside "
                             "GGUF's types 1-6: normal, unknown, control, user defined, unused, byte)")
        scores = tuple(float(s) for s in meta.get("tokenizer.ggml.scores", ()))
        if scores and len(scores) != n:
            raise ValueError(f"{source}: {len(scores)} token scores for {n} tokens")

        def token_id(key):
            value = int(meta.get(key, -1))
            if value >= n:
                raise ValueError(f"{source}: {key} = {value} is outside the vocabulary of {n} tokens")
            return value

        default_bos = model == "llama"
        return cls(model=model, tokens=tokens, token_types=types,
                   merges=tuple(str(m) for m in meta.get("tokenizer.ggml.merges", ())), scores=scores,
                   pre=str(meta.get("tokenizer.ggml.pre", "default")),
                   bos_id=token_id("tokenizer.ggml.bos_token_id"),
                   eos_id=token_id("tokenizer.ggml.eos_token_id"),
                   eot_id=token_id("tokenizer.ggml.eot_token_id"),
                   unk_id=token_id("tokenizer.ggml.unknown_token_id"),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", default_bos)),
                   add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
                   chat_template=str(meta.get("tokenizer.chat_template", "")))


def _special_tokens(spec: TokenizerSpec) -> list[str]:
    return [t for t, kind in zip(spec.tokens, spec.token_types) if kind in (CONTROL, USER_DEFINED)]


def _gpt2_tokenizer(spec: TokenizerSpec):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if spec.pre not in PRE_TOKENIZERS:
        raise ValueError(f"tokenizer.ggml.pre {spec.pre!r} is not supported; supported: "
                         f"{', '.join(sorted(PRE_TOKENIZERS))}")
    vocab = {tok: i for i, tok in enumerate(spec.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in spec.merges]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=spec.pre in ("llama-bpe", "llama3")))
    splits = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in PRE_TOKENIZERS[spec.pre]]
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    return tk


def _spm_merges(spec: TokenizerSpec) -> list[tuple[str, str]]:
    """Merge rules of a SentencePiece BPE vocabulary: each normal piece split in two pieces, ranked
    by the merged piece's score (highest first; ties by id)."""
    vocab = {tok: i for i, tok in enumerate(spec.tokens)}
    ranked = []
    for i, (piece, kind) in enumerate(zip(spec.tokens, spec.token_types)):
        if kind != NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-spec.scores[i], i, vocab[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _spm_tokenizer(spec: TokenizerSpec):
    from tokenizers import Tokenizer, decoders, models, normalizers

    if not spec.scores:
        raise ValueError("a SentencePiece ('llama') tokenizer needs tokenizer.ggml.scores")
    vocab = {tok: i for i, tok in enumerate(spec.tokens)}
    unk = spec.tokens[spec.unk_id] if spec.unk_id >= 0 else None
    tk = Tokenizer(models.BPE(vocab=vocab, merges=_spm_merges(spec), unk_token=unk, byte_fallback=True,
                              fuse_unk=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    if spec.add_space_prefix:
        steps.insert(0, normalizers.Prepend("\u2581"))
    tk.normalizer = normalizers.Sequence(steps)
    strip = [decoders.Strip(" ", 1, 0)] if spec.add_space_prefix else []
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                    decoders.Fuse(), *strip])
    return tk


def _render_template(source: str, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool,
                     bos_token: str, eos_token: str) -> str:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        template = env.from_string(source)
        return template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token)
    except TemplateError as exc:
        raise ValueError(f"the model's chat template failed: {exc}") from exc


class GGUFTokenizer:
    """Encode and decode text, and render the chat template, as the GGUF file specifies.

    Args:
        spec: the file's tokenizer metadata (:meth:`TokenizerSpec.from_metadata`).
    """

    def __init__(self, spec: TokenizerSpec):
        from tokenizers import AddedToken

        if spec.model == "gpt2":
            tk = _gpt2_tokenizer(spec)
        elif spec.model == "llama":
            tk = _spm_tokenizer(spec)
        else:
            raise ValueError(f"tokenizer.ggml.model {spec.model!r} is not supported (gpt2 or llama)")
        specials = _special_tokens(spec)
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        self.spec = spec
        self._tk = tk
        self.special_ids = {t: spec.tokens.index(t) for t in specials}
        self.vocab_size = len(spec.tokens)
        self.im_end_id = self.special_ids.get("<|im_end|>")

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], source: str = "the model file") -> "GGUFTokenizer":
        return cls(TokenizerSpec.from_metadata(meta, source))

    @property
    def has_chat_template(self) -> bool:
        return bool(self.spec.chat_template)

    def _token_text(self, token_id: int) -> str:
        return self.spec.tokens[token_id] if token_id >= 0 else ""

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of ``text`` (special-token strings in it are matched whole); ``add_bos``
        prepends BOS when the file asks for one and the text does not already start with it."""
        ids = self._tk.encode(text, add_special_tokens=False).ids
        bos = self.spec.bos_id
        if add_bos and self.spec.add_bos and bos >= 0 and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def decode(self, ids) -> str:
        """Text of ``ids`` (special tokens are kept as their strings)."""
        return self._tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def render_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        """The chat template rendered for ``messages`` (``[{"role": ..., "content": ...}]``).

        Raises:
            ValueError: the file has no chat template, or the template rejects the messages.
        """
        if not self.has_chat_template:
            raise ValueError("this model file has no chat template (tokenizer.chat_template); "
                             "use the raw prompt (--no-chat-template)")
        return _render_template(self.spec.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                bos_token=self._token_text(self.spec.bos_id),
                                eos_token=self._token_text(self.spec.eos_id))

    def chat_prompt(self, user: str, system: str | None = None) -> list[int]:
        """Ids of a one-turn conversation ending where the assistant starts to answer. Without
        ``system`` the template decides (some insert a default system prompt of their own)."""
        messages = ([{"role": "system", "content": system}] if system is not None else [])
        messages.append({"role": "user", "content": user})
        return self.encode(self.render_chat(messages), add_bos=True)

    def stop_ids(self, eos_id: int | None = None) -> set[int]:
        """Ids that end an answer: EOS, EOT and the control tokens that end a turn."""
        ids = {i for i in (self.spec.eos_id, self.spec.eot_id, eos_id) if i is not None and i >= 0}
        ids |= {self.special_ids[t] for t in END_OF_TURN_TEXTS if t in self.special_ids}
        return ids


def read_gguf_metadata(path) -> dict[str, Any]:
    """The scalar, string and array metadata of a GGUF file (tokenizer lists included)."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if not field.types or key.startswith("GGUF."):
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY and field.types[-1] == GGUFValueType.STRING:
            meta[key] = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        elif kind == GGUFValueType.ARRAY:
            meta[key] = [field.parts[i][0].item() for i in field.data]
        elif kind == GGUFValueType.STRING:
            meta[key] = bytes(field.parts[field.data[0]]).decode("utf-8")
        else:
            meta[key] = field.parts[field.data[0]][0].item()
    return meta
