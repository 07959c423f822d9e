"""grilly_kv.evaluation: needle prompts, the eval loop and its JSON/PNG outputs (1-layer NumPy
model: this checks the plumbing; accuracy numbers come from `grilly-kv eval` runs)."""
import json

import numpy as np
import pytest

from grilly_kv.evaluation.needle import make_trial
from grilly_kv.evaluation.run import EvalConfig, evaluate, write_results
from grilly_kv.models.smollm2 import load_model


@pytest.fixture(scope="module")
def small():
    return load_model("cpu", n_layers=1, max_chunk=16)


def test_needle_prompt_has_exact_length_and_the_key(small):
    _, tk = small
    hay = tk.encode("Some sentence here. Another one follows. " * 40)
    for depth in (0.0, 0.5, 1.0):
        tr = make_trial(tk, hay, 120, depth, "12345")
        assert len(tr.prompt_ids) == 120 and "passkey is 12345" in tk.decode(tr.prompt_ids)
    with pytest.raises(ValueError, match=r"depth must be in \[0, 1\]"):
        make_trial(tk, hay, 120, 1.5, "12345")


def test_eval_writes_json_and_plots(small, tmp_path):
    model, tk = small
    cfg = EvalConfig(policies=["dense", "streaming"], budgets=[16], contexts=[48], depths=[0.5],
                     ppl_contexts=[24, 32], ppl_targets=4, ppl_windows=1)
    res = evaluate(model, tk, cfg)
    paths = write_results(res, tmp_path, "t")
    assert all(p.stat().st_size > 0 for p in paths)
    data = json.loads(paths[0].read_text())
    assert [r["describe"] for r in data["runs"]] == ["dense", "streaming(sinks=4, window=12)"]
    for run in data["runs"]:
        assert len(run["needle"]) == 1 and 0 <= run["needle_accuracy"] <= 1
        assert sorted(run["perplexity"]) == ["24", "32"]
        assert all(np.isfinite(p["ppl"]) and p["n_tokens"] == 4 for p in run["perplexity"].values())
    s16 = data["runs"][1]["needle"][0]
    assert s16["kv_bytes"] < s16["dense_kv_bytes"]
