"""The summary line of `generate`/`ask` explains an evicting policy's K/V allocation."""
from grilly_kv.cli.generate import slots_note


class _Twin:
    def __init__(self, slots):
        self.slots = slots

    def capacity_tokens(self):
        return self.slots


class _Model:
    def __init__(self, twin):
        self.kv = twin


class _Policy:
    budget = 128


def test_slots_note_splits_budget_and_margin():
    note = slots_note(_Model(_Twin(191)), _Policy())
    assert note == ("; 191 token slots per layer and KV head = budget 128 + 63 working margin "
                    "(prefill chunk, window, question and answer)")


def test_slots_note_empty_without_a_twin_or_budget():
    assert slots_note(_Model(None), _Policy()) == ""

    class NoBudget:
        budget = None

    assert slots_note(_Model(_Twin(191)), NoBudget()) == ""
