"""grilly_kv.evaluation: needle prompts, the eval loop and its JSON/PNG outputs (1-layer synthetic
NumPy model: this checks the plumbing; accuracy numbers come from `grilly-kv eval` runs; the CLI
test still loads the real model)."""
import json

import numpy as np
import pytest

from grilly_kv.evaluation.needle import make_trial
from grilly_kv.cli import main
from grilly_kv.evaluation.run import EvalConfig, evaluate, summary_line, write_results
from grilly_kv.models import load_model


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 1-layer synthetic checkpoint (the plumbing, not the weights, is the point)."""
    from grilly_kv.models.synthetic import write_synthetic_gguf

    path = write_synthetic_gguf(tmp_path_factory.mktemp("eval") / "llama.gguf", "llama", n_layers=1, context=1024)
    return load_model(path, "cpu", max_chunk=16)


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
    cfg = EvalConfig(policies=["dense", "streaming"], budgets=[16], contexts=[240], depths=[0.5],
                     ppl_contexts=[24, 32], ppl_targets=4, ppl_windows=1)
    res = evaluate(model, tk, cfg)
    paths = write_results(res, tmp_path, "t")
    assert all(p.stat().st_size > 0 for p in paths)
    data = json.loads(paths[0].read_text())
    assert data["model"] == model.ckpt.source
    assert [r["describe"] for r in data["runs"]] == ["dense", "streaming(sinks=4, window=12)"]
    for run in data["runs"]:
        assert len(run["needle"]) == 1 and 0 <= run["needle_accuracy"] <= 1
        assert sorted(run["perplexity"]) == ["24", "32"]
        assert all(np.isfinite(p["ppl"]) and p["n_tokens"] == 4 for p in run["perplexity"].values())
    s16 = data["runs"][1]["needle"][0]
    assert s16["kv_bytes"] < s16["dense_kv_bytes"]


def test_eval_keeps_finished_runs_when_cut_short(small, tmp_path):
    """Results are written after each (policy, budget) run: a run interrupted after the first
    keeps that run's JSON and plots, marked incomplete."""
    model, tk = small
    cfg = EvalConfig(policies=["streaming", "entmax"], budgets=[16], contexts=[240], depths=[0.5],
                     ppl_contexts=[24], ppl_targets=4, ppl_windows=1)
    seen = []

    def on_run(results, run):
        seen.append(summary_line(run))
        write_results(results, tmp_path, "t")
        raise KeyboardInterrupt      # as a time limit killing the run

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, tk, cfg, on_run=on_run)
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["complete"] is False and [r["policy"] for r in data["runs"]] == ["streaming"]
    assert (tmp_path / "t_budget.png").stat().st_size > 0
    assert seen[0].startswith("streaming") and "budget 16" in seen[0] and "ppl@24 " in seen[0]


def test_cli_eval_prints_a_line_per_run(tmp_path, capsys):
    rc = main(["eval", "--policies", "quest,entmax", "--budgets", "16,32", "--contexts", "48", "--depths", "0.5",
               "--ppl-contexts", "24", "--ppl-targets", "4", "--ppl-windows", "1", "--device", "cpu",
               "--layers", "1", "--chunk", "16", "--out", str(tmp_path), "--name", "t"])
    assert rc == 0
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("[grilly-kv] ") and " ppl@24 " in ln]
    assert sum(" ppl@24 " in ln for ln in captured.out.splitlines()) == 4     # the table, on stdout
    assert [ln.split()[1:4] for ln in lines] == [["quest", "budget", "16"], ["quest", "budget", "32"],
                                                 ["entmax", "budget", "16"], ["entmax", "budget", "32"]]
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["complete"] is True and len(data["runs"]) == 4
    assert not list(tmp_path.glob(".*tmp*"))
