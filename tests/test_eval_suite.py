"""The task suite (grilly_kv.evaluation.tasks), its intervals (stats) and the suite runner."""
from __future__ import annotations

import numpy as np
import pytest

from grilly_kv.evaluation.stats import bootstrap_perplexity, intervals_overlap, rate_summary, wilson_interval
from grilly_kv.evaluation.tasks import TASKS, TaskTrial, depths_for, make_suite, score


class CharTokenizer:
    """One token per character (fast, and exact to decode): enough to test prompt building."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(i) for i in ids)


SENTENCE = ("Startups often fail because the founders build something nobody wants to use. "
            "Good ideas look like bad ideas at first, which is why they remain available to whoever works on them. ")


@pytest.fixture(scope="module")
def hay_ids():
    rng = np.random.default_rng(1)
    words = SENTENCE.split()
    sentences = []
    for i in range(400):            # distinct sentences so quotes occur once
        pick = rng.choice(len(words), size=12)
        sentences.append(f"Essay {i} says " + " ".join(words[j] for j in pick) + ".")
    return CharTokenizer().encode(" ".join(sentences))


# ---- intervals -----------------------------------------------------------------------------------
def test_wilson_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    s = rate_summary([1, 0, 1, 1])
    assert (s["k"], s["n"], s["rate"]) == (3, 4, 0.75) and s["lo"] < 0.75 < s["hi"]
    with pytest.raises(ValueError, match="0/1"):
        rate_summary([0.5])


def test_bootstrap_perplexity_interval():
    rng = np.random.default_rng(0)
    nll = [rng.gamma(2.0, 1.5, size=4096) for _ in range(2)]
    out = bootstrap_perplexity(nll, seed=3)
    assert out["n_tokens"] == 8192 and out["n_blocks"] == 128
    assert out["lo"] < out["ppl"] < out["hi"]
    assert out["ppl"] == pytest.approx(np.exp(np.concatenate(nll).mean()))
    assert bootstrap_perplexity(nll, seed=3) == out                      # deterministic
    few = bootstrap_perplexity([nll[0][:256]], seed=3)
    assert few["hi"] - few["lo"] > out["hi"] - out["lo"]                   # fewer targets, wider
    flat = bootstrap_perplexity([np.full(300, 2.0)])
    assert flat["lo"] == pytest.approx(flat["hi"]) == pytest.approx(np.exp(2.0))
    with pytest.raises(ValueError, match="not finite"):
        bootstrap_perplexity([np.array([1.0, np.nan])])
    assert intervals_overlap({"lo": 0, "hi": 1}, {"lo": 1, "hi": 2})
    assert not intervals_overlap({"lo": 0, "hi": 0.5}, {"lo": 0.6, "hi": 2})


# ---- the suite ------------------------------------------------------------------------------------
def test_suite_is_deterministic_and_complete(hay_ids):
    tk = CharTokenizer()
    a = make_suite(tk, hay_ids, [600, 1200], 12, seed=5)
    b = make_suite(tk, hay_ids, [600, 1200], 12, seed=5)
    c = make_suite(tk, hay_ids, [600, 1200], 12, seed=6)
    assert a == b and a != c
    assert len(a) == len(TASKS) * 2 * 12
    only_passkey = make_suite(tk, hay_ids, [600], 12, tasks=["passkey"], seed=5)
    assert only_passkey == [t for t in a if t.task == "passkey" and t.context <= 700]   # cells independent
    with pytest.raises(ValueError, match="tasks must be among"):
        make_suite(tk, hay_ids, [600], 2, tasks=["nope"])


def test_needles_sit_at_their_depth_and_lengths_are_exact(hay_ids):
    tk = CharTokenizer()
    trials = make_suite(tk, hay_ids, [1500], 10, tasks=["passkey"], seed=0)
    assert sorted(t.depth for t in trials) == pytest.approx(depths_for(10))
    for t in trials:
        assert len(t.prompt_ids) == t.context == 1500
        ctx = tk.decode(t.context_ids)
        at = ctx.index(f"passkey is {t.answers[0]}") / len(ctx)
        assert abs(at - t.depth) < 0.15, (at, t.depth)             # moved back to a sentence end
        assert tk.decode(t.question_ids).endswith("The secret passkey is")


def test_distractors_and_values_are_in_the_context(hay_ids):
    tk = CharTokenizer()
    for t in make_suite(tk, hay_ids, [1500], 5, tasks=["multikey", "multivalue", "phrase"], seed=2):
        ctx = tk.decode(t.context_ids)
        if t.task == "multikey":
            assert ctx.count("The passkey for ") == 4 and f" is {t.answers[0]}." in ctx
        elif t.task == "multivalue":
            assert all(f"is {v}." in ctx for v in t.answers) and len(set(t.answers)) == 3
        else:
            quote = tk.decode(t.question_ids).split('"', 1)[1]
            assert ctx.count(quote) == 1 and (quote + " " + t.answers[0]) in ctx


def test_scoring_rules():
    def trial(task, answers):
        return TaskTrial(task, 10, 0.5, (1,), (2,), tuple(answers))

    assert score(trial("passkey", ["12345"]), " 12345. Remember") == 1.0
    assert score(trial("passkey", ["12345"]), " 54321 or 12345") == 0.0          # first number counts
    assert score(trial("multikey", ["11111"]), "") == 0.0
    assert score(trial("multivalue", ["1", "2", "3"]), "3, 1 and 2") == 1.0
    assert score(trial("multivalue", ["1", "2", "3"]), "1 and 2") == 0.0
    assert score(trial("phrase", ["nobody wants to use."]), ' Nobody wants, to use it"') == 1.0
    assert score(trial("phrase", ["nobody wants to use."]), " nobody needs it") == 0.0
    with pytest.raises(ValueError, match="task must be one of"):
        score(trial("nope", ["1"]), "1")
