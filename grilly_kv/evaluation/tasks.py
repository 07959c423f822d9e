"""The retrieval task suite on the essay corpus, generated deterministically from a seed.

Every trial is a context (essay text with facts hidden in it) followed by a question whose
answer the model completes; the two are kept apart (``context_ids``, ``question_ids``) so a
policy can compress the context alone and then see the question (question-aware, as kvpress
does) or compress the whole prompt as it comes (in place).

Tasks:

- ``passkey``: one needle "The secret passkey is K. Remember it: the passkey is K." at one of
  ``n_depths`` evenly spread depths; correct when the first number of the answer is K.
- ``multikey``: four needles "The passkey for NAME is K." with different names and keys at random
  depths; the question asks for one name; correct when the first number of the answer is its key
  (the other three are distractors).
- ``multivalue``: three needles "One of the special numbers for NAME is V." for one name; the
  question asks for all of them; correct when every value appears in the answer.
- ``phrase``: a long-range question whose answer is a phrase of the essays: the question quotes
  the first words of a sentence that occurs once in the context, at a chosen depth, and the model
  continues the quote; correct when the answer holds the next ``PHRASE_WORDS`` words of that
  sentence (case and punctuation ignored).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

TASKS = ("passkey", "multikey", "multivalue", "phrase")
ANSWER_TOKENS = {"passkey": 12, "multikey": 12, "multivalue": 24, "phrase": 12}
NAMES = ("the red fox", "the blue whale", "the green parrot", "the grey wolf", "the golden eagle",
         "the black cat", "the white owl", "the brown bear", "the silver salmon", "the orange tiger",
         "the purple crab", "the yellow finch")
PHRASE_PREFIX_WORDS = 7
PHRASE_WORDS = 3
N_DISTRACTORS = 3
N_VALUES = 3


@dataclass(frozen=True)
class TaskTrial:
    """One prompt of the suite.

    Attributes:
        task: one of :data:`TASKS`.
        context: prompt length in tokens (context + question).
        depth: where the (target) fact sits in the context, 0 = start, 1 = end.
        context_ids, question_ids: the prompt's two parts, as token ids.
        answers: what a correct answer holds (``multivalue``: every one of them).
        index: the trial's number within its (task, context) cell.
    """

    task: str
    context: int
    depth: float
    context_ids: tuple[int, ...]
    question_ids: tuple[int, ...]
    answers: tuple[str, ...]
    index: int = 0

    @property
    def prompt_ids(self) -> list[int]:
        return list(self.context_ids) + list(self.question_ids)

    @property
    def answer_tokens(self) -> int:
        return ANSWER_TOKENS[self.task]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def score(trial: TaskTrial, answer: str) -> float:
    """1.0 when ``answer`` (the decoded completion) is correct for ``trial``, else 0.0."""
    if trial.task in ("passkey", "multikey"):
        numbers = re.findall(r"\d+", answer)
        return float(bool(numbers) and numbers[0] == trial.answers[0])
    if trial.task == "multivalue":
        found = set(re.findall(r"\d+", answer))
        return float(all(v in found for v in trial.answers))
    if trial.task == "phrase":
        want = " ".join(_words(trial.answers[0])[:PHRASE_WORDS])
        return float(want in " ".join(_words(answer)))
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {trial.task!r}")


class _Builder:
    """Cuts haystacks out of the corpus and hides facts in them at sentence ends."""

    def __init__(self, tokenizer, haystack_ids, rng: np.random.Generator):
        self.tk = tokenizer
        self.hay = np.asarray(haystack_ids, np.int64)
        self.rng = rng
        self.period = tokenizer.encode(".")[-1]

    def encode(self, text: str) -> list[int]:
        return list(self.tk.encode(text))

    def haystack(self, n_tokens: int) -> list[int]:
        if n_tokens < 1 or n_tokens > self.hay.size:
            raise ValueError(f"a haystack of {n_tokens} tokens does not fit the corpus's {self.hay.size}")
        start = int(self.rng.integers(0, self.hay.size - n_tokens + 1))
        return self.hay[start:start + n_tokens].tolist()

    def sentence_end(self, hay: list[int], cut: int) -> int:
        while 0 < cut < len(hay) and hay[cut - 1] != self.period:
            cut -= 1
        return cut

    def insert(self, hay: list[int], facts: list[tuple[float, list[int]]]) -> list[int]:
        """``hay`` with each fact's ids inserted at its depth (moved back to a sentence end)."""
        cuts = sorted((self.sentence_end(hay, int(round(d * len(hay)))), i) for i, (d, _) in enumerate(facts))
        out, prev = [], 0
        for cut, i in cuts:
            out += hay[prev:cut] + facts[i][1]
            prev = cut
        return out + hay[prev:]

    def key(self, taken: set[str]) -> str:
        while True:
            k = str(int(self.rng.integers(10000, 100000)))
            if k not in taken:
                taken.add(k)
                return k


def _with_facts(b: _Builder, task: str, context: int, depth: float, facts, question: str, answers, index):
    q_ids = b.encode(question)
    n_hay = context - len(q_ids) - sum(len(f) for _, f in facts)
    ctx = b.insert(b.haystack(n_hay), facts)
    return TaskTrial(task, len(ctx) + len(q_ids), depth, tuple(ctx), tuple(q_ids), tuple(answers), index)


def _passkey(b: _Builder, context: int, depth: float, index: int) -> TaskTrial:
    k = b.key(set())
    fact = b.encode(f" The secret passkey is {k}. Remember it: the passkey is {k}. ")
    return _with_facts(b, "passkey", context, depth, [(depth, fact)],
                       "\n\nWhat is the secret passkey? The secret passkey is", [k], index)


def _multikey(b: _Builder, context: int, depth: float, index: int) -> TaskTrial:
    names = b.rng.choice(len(NAMES), size=1 + N_DISTRACTORS, replace=False)
    taken: set[str] = set()
    keys = [b.key(taken) for _ in names]
    depths = [depth] + list(b.rng.uniform(0.05, 0.95, size=N_DISTRACTORS))
    facts = [(d, b.encode(f" The passkey for {NAMES[n]} is {k}. ")) for d, n, k in zip(depths, names, keys)]
    target = NAMES[names[0]]
    return _with_facts(b, "multikey", context, depth, facts,
                       f"\n\nWhat is the passkey for {target}? The passkey for {target} is", [keys[0]], index)


def _multivalue(b: _Builder, context: int, depth: float, index: int) -> TaskTrial:
    name = NAMES[int(b.rng.integers(len(NAMES)))]
    taken: set[str] = set()
    values = [b.key(taken) for _ in range(N_VALUES)]
    depths = [depth] + list(b.rng.uniform(0.05, 0.95, size=N_VALUES - 1))
    facts = [(d, b.encode(f" One of the special numbers for {name} is {v}. ")) for d, v in zip(depths, values)]
    return _with_facts(b, "multivalue", context, depth, facts,
                       f"\n\nWhat are all the special numbers for {name}? The special numbers for {name} are",
                       values, index)


def _phrase(b: _Builder, context: int, depth: float, index: int) -> TaskTrial:
    """Quote the start of a sentence near ``depth`` that occurs once in the context."""
    probe = b.encode(f'\n\nContinue this quote from the text above: "{"x " * PHRASE_PREFIX_WORDS}')
    for _ in range(50):
        hay = b.haystack(context - len(probe) - 8)
        text = b.tk.decode(hay)
        sentences = [m for m in re.finditer(r"(?<=[.!?]\s)([A-Z][^.!?\n]{40,200}[.!?])", text)]
        if not sentences:
            continue
        target = min(sentences, key=lambda m: abs(m.start() / max(len(text), 1) - depth))
        words = target.group(1).split()
        if len(words) < PHRASE_PREFIX_WORDS + PHRASE_WORDS:
            continue
        prefix = " ".join(words[:PHRASE_PREFIX_WORDS])
        rest = " ".join(words[PHRASE_PREFIX_WORDS:])
        if text.count(prefix) != 1:
            continue
        q_ids = b.encode(f'\n\nContinue this quote from the text above: "{prefix}')
        at = target.start() / max(len(text), 1)
        return TaskTrial("phrase", len(hay) + len(q_ids), float(at), tuple(hay), tuple(q_ids), (rest,), index)
    raise ValueError(f"no quotable sentence found for a {context}-token phrase trial")


_MAKERS = {"passkey": _passkey, "multikey": _multikey, "multivalue": _multivalue, "phrase": _phrase}


def depths_for(n_depths: int) -> np.ndarray:
    """``n_depths`` evenly spread depths in (0, 1): the centres of equal bins."""
    if n_depths < 1:
        raise ValueError(f"n_depths must be >= 1, got {n_depths}")
    return (np.arange(n_depths) + 0.5) / n_depths


def make_suite(tokenizer, haystack_ids, contexts, n_per_cell: int, *, tasks=TASKS, n_depths: int = 10,
               seed: int = 0) -> list[TaskTrial]:
    """``n_per_cell`` trials per (task, context): depths cycle through :func:`depths_for`.

    The same arguments give the same trials (token ids included) on every machine; each
    (task, context) cell has its own random stream, so adding a task or context leaves the other
    cells' trials unchanged.
    """
    unknown = [t for t in tasks if t not in _MAKERS]
    if unknown:
        raise ValueError(f"tasks must be among {', '.join(TASKS)}, got {', '.join(unknown)}")
    if n_per_cell < 1:
        raise ValueError(f"n_per_cell must be >= 1, got {n_per_cell}")
    depths = depths_for(n_depths)
    trials = []
    for task in tasks:
        for context in contexts:
            rng = np.random.default_rng([seed, TASKS.index(task), int(context)])
            b = _Builder(tokenizer, haystack_ids, rng)
            trials += [_MAKERS[task](b, int(context), float(depths[i % n_depths]), i) for i in range(n_per_cell)]
    return trials
