"""The tokenizer and chat template rebuilt from GGUF metadata (grilly_kv.models.llama.tokenizer)."""
from __future__ import annotations

import pytest

from grilly_kv.models.llama.tokenizer import (BYTE, CONTROL, NORMAL, PRE_TOKENIZERS, GGUFTokenizer,
                                              TokenizerSpec)

pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (written out for the test)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def gpt2_meta(pre: str, merges_words=("hello", "world", " the", "123")) -> dict:
    """A byte-level BPE vocabulary: the 256 byte symbols plus the merges that build ``merges_words``."""
    b2u = byte_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    merges = []
    for word in merges_words:
        pieces = [b2u[b] for b in word.encode()]
        while len(pieces) > 1:
            left, right = pieces[0], pieces[1]
            merges.append(f"{left} {right}")
            if left + right not in tokens:
                tokens.append(left + right)
            pieces = [left + right] + pieces[2:]
    tokens += ["<|im_start|>", "<|im_end|>"]
    types = [NORMAL] * (len(tokens) - 2) + [CONTROL, CONTROL]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.bos_token_id": len(tokens) - 2, "tokenizer.ggml.eos_token_id": len(tokens) - 1}


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_gpt2_round_trip_every_pre_tokenizer(pre):
    tk = GGUFTokenizer.from_metadata(gpt2_meta(pre))
    text = "hello world, the 12345 caf\u00e9 \u65e5\u672c\n\n  tabs\there <|im_end|>"
    ids = tk.encode(text)
    assert tk.decode(ids) == text
    assert ids[-1] == tk.special_ids["<|im_end|>"]


def test_gpt2_digits_follow_the_pre_tokenizer():
    """smollm and qwen2 split digits one by one; llama3 in groups of up to 3 (then merges apply)."""
    text = "123456"
    smol = GGUFTokenizer.from_metadata(gpt2_meta("smollm"))
    llama3 = GGUFTokenizer.from_metadata(gpt2_meta("llama-bpe"))
    gpt2 = GGUFTokenizer.from_metadata(gpt2_meta("gpt2"))
    assert len(smol.encode(text)) == 6
    assert len(llama3.encode(text)) == 4            # "123" merged, then 4, 5, 6
    assert len(gpt2.encode(text)) == 4              # one digit run: "123" merged + 3 bytes


def test_unsupported_tokenizer_named():
    with pytest.raises(ValueError, match="tokenizer.ggml.pre 'nope'.*supported"):
        GGUFTokenizer.from_metadata(gpt2_meta("nope"))
    meta = gpt2_meta("gpt2")
    meta["tokenizer.ggml.model"] = "bert"
    with pytest.raises(ValueError, match="'bert' is not supported"):
        GGUFTokenizer.from_metadata(meta)
    del meta["tokenizer.ggml.tokens"]
    with pytest.raises(ValueError, match="tokenizer.ggml.tokens' is missing"):
        GGUFTokenizer.from_metadata(meta, "x.gguf")
    meta = gpt2_meta("gpt2")
    meta["tokenizer.ggml.eos_token_id"] = 10**6
    with pytest.raises(ValueError, match="outside the vocabulary"):
        GGUFTokenizer.from_metadata(meta)


# ---- SentencePiece ('llama') ---------------------------------------------------------------------
SPM_PIECES = {"\u2581": -1.0, "a": -2.0, "b": -2.0, "c": -2.0, "\u2581a": -0.5, "ab": -0.4, "abc": -0.1,
              "bc": -0.3, "\u2581ab": -0.2, "ca": -0.6, "\u2581b": -0.7}


def spm_meta(add_bos=True) -> dict:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(SPM_PIECES)
    types = [2, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * len(SPM_PIECES)
    scores = [0.0] * 259 + list(SPM_PIECES.values())
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": add_bos}


def spm_reference(text: str, meta: dict) -> list[int]:
    """llama.cpp's SentencePiece rule, written plainly: symbols are characters; repeatedly merge the
    adjacent pair whose concatenation is a piece with the highest score (leftmost on ties); a
    symbol with no piece becomes its UTF-8 bytes' <0xNN> tokens."""
    vocab = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    scores = meta["tokenizer.ggml.scores"]
    syms = list("\u2581" + text.replace(" ", "\u2581"))
    while True:
        best = None
        for i in range(len(syms) - 1):
            piece = syms[i] + syms[i + 1]
            if piece in vocab and meta["tokenizer.ggml.token_type"][vocab[piece]] == NORMAL:
                key = (-scores[vocab[piece]], i)
                best = key if best is None or key < best else best
        if best is None:
            break
        i = best[1]
        syms[i:i + 2] = [syms[i] + syms[i + 1]]
    ids = []
    for s in syms:
        if s in vocab:
            ids.append(vocab[s])
        else:
            ids += [vocab[f"<0x{b:02X}>"] for b in s.encode()]
    return ids


@pytest.mark.parametrize("text", ["abc", "a b c", "abcabc ab", "cab", "bca", "x", "ab\u00e9c", "a  b"])
def test_spm_matches_the_greedy_score_rule(text):
    meta = spm_meta()
    tk = GGUFTokenizer.from_metadata(meta)
    assert tk.encode(text) == spm_reference(text, meta)
    assert tk.decode(tk.encode(text)) == text


def test_spm_bos_added_once():
    tk = GGUFTokenizer.from_metadata(spm_meta(add_bos=True))
    assert tk.encode("ab", add_bos=True)[0] == 1
    assert tk.encode("<s>ab", add_bos=True).count(1) == 1
    no_bos = GGUFTokenizer.from_metadata(spm_meta(add_bos=False))
    assert 1 not in no_bos.encode("ab", add_bos=True)


# ---- chat template -------------------------------------------------------------------------------
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_chat_template_rendered_from_the_file():
    meta = gpt2_meta("gpt2")
    meta["tokenizer.chat_template"] = CHATML
    tk = GGUFTokenizer.from_metadata(meta)
    text = tk.render_chat([{"role": "user", "content": "hello"}])
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    with_system = tk.decode(tk.chat_prompt("hello", system="world"))
    assert with_system.startswith("<|im_start|>system\nworld<|im_end|>")
    assert tk.stop_ids() >= {tk.special_ids["<|im_end|>"]}


def test_chat_template_missing_or_failing_is_an_error():
    tk = GGUFTokenizer.from_metadata(gpt2_meta("gpt2"))
    with pytest.raises(ValueError, match="no chat template.*--no-chat-template"):
        tk.chat_prompt("hello")
    meta = gpt2_meta("gpt2")
    meta["tokenizer.chat_template"] = "{{ raise_exception('only user turns') }}"
    with pytest.raises(ValueError, match="only user turns"):
        GGUFTokenizer.from_metadata(meta).chat_prompt("x")
    meta["tokenizer.chat_template"] = "{{ ''.__class__.__mro__ }}"      # the sandbox refuses
    with pytest.raises(ValueError, match="chat template failed"):
        GGUFTokenizer.from_metadata(meta).chat_prompt("x")


def test_smollm2_file_tokenizer(smollm2_meta):
    """The real file: essays round-trip exactly; digits are single tokens; the template's own
    default system prompt appears when none is given."""
    from grilly_kv.evaluation.corpus import essays

    tk = GGUFTokenizer.from_metadata(smollm2_meta)
    for _, text in essays()[:3]:
        assert tk.decode(tk.encode(text)) == text
    assert len(tk.encode("2024")) == 4
    assert "SmolLM" in tk.decode(tk.chat_prompt("hi"))
    assert "SmolLM" not in tk.decode(tk.chat_prompt("hi", system="Be brief."))


@pytest.fixture(scope="module")
def smollm2_meta():
    from grilly_kv.models.llama.tokenizer import read_gguf_metadata

    try:
        from grilly_kv.models.smollm2.weights import find_weights
        path = find_weights(None)
    except (FileNotFoundError, ImportError) as exc:
        pytest.skip(f"SmolLM2 weights not installed: {exc}")
    return read_gguf_metadata(path)


def test_spm_reference_helper_is_not_trivial():
    """Guard the reference itself: it must merge (else it would agree with any tokenizer that
    returns characters)."""
    meta = spm_meta()
    vocab = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    assert spm_reference("abc", meta) == [vocab["\u2581"], vocab["abc"]]      # bc, then abc
