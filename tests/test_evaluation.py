"""`grilly-kv eval` (the task suite through the CLI), the suite's time limit, the needle prompts
of benchmarks/tappa_budget_quality.py, and the outputs of
grilly_kv.evaluation.report: merging result files, the best-per-cell comparison with kvpress,
tables and plots, and benchmarks/merge_suite.py. A 1-layer synthetic NumPy model checks the
plumbing (accuracy numbers come from real runs); the merge tests use small synthetic result
dicts and one real suite result of that model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grilly_kv.cli import main
from grilly_kv.evaluation.report import best_per_cell, format_best_table, merge_results, write_outputs
from grilly_kv.evaluation.stats import bootstrap_perplexity, rate_summary
from grilly_kv.evaluation.suite import SuiteConfig, evaluate_suite
from grilly_kv.models import load_model

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(n_layers=1, context=1024)


@pytest.fixture(scope="module")
def small_path(tmp_path_factory):
    """A 1-layer synthetic checkpoint (the plumbing, not the weights, is the point)."""
    from grilly_kv.models.synthetic import write_synthetic_gguf

    return write_synthetic_gguf(tmp_path_factory.mktemp("eval") / "llama.gguf", "llama", **SMALL)


@pytest.fixture(scope="module")
def small(small_path):
    return load_model(small_path, "cpu", max_chunk=16)


@pytest.fixture(scope="module")
def suite_result(small):
    model, tk = small
    cfg = SuiteConfig(policies=["dense", "streaming"], budgets=[16], contexts=[400], tasks=["passkey", "multikey"],
                      n_per_cell=2, n_depths=2, ppl_contexts=[32], ppl_targets=8, ppl_windows=1)
    return evaluate_suite(model, tk, cfg)


# ---- needle prompts (benchmarks/tappa_budget_quality.py) -------------------------------------------
def test_needle_prompt_has_exact_length_and_the_key(small):
    from grilly_kv.evaluation.needle import make_trial

    _, tk = small
    hay = tk.encode("Some sentence here. Another one follows. " * 40)
    for depth in (0.0, 0.5, 1.0):
        tr = make_trial(tk, hay, 120, depth, "12345")
        assert len(tr.prompt_ids) == 120 and "passkey is 12345" in tk.decode(tr.prompt_ids)
    with pytest.raises(ValueError, match=r"depth must be in \[0, 1\]"):
        make_trial(tk, hay, 120, 1.5, "12345")


# ---- grilly-kv eval -------------------------------------------------------------------------------
def test_cli_eval_runs_the_suite_and_writes_json_table_and_plots(small_path, tmp_path, capsys):
    rc = main(["eval", "-m", str(small_path), "--policies", "dense,streaming", "--budgets", "16,32",
               "--contexts", "400", "--tasks", "passkey,multivalue", "-n", "2", "--ppl-targets", "8",
               "--ppl-windows", "1", "--device", "cpu", "--chunk", "16", "--out", str(tmp_path), "--name", "t"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "estimated run time" in captured.err and "took " in captured.err
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["complete"] is True and data["engine"] == "grilly_kv"
    runs = [(r["method"], r["budget"], r["setting"]) for r in data["runs"]]
    assert runs == [("dense", None, "in-place")] + [("streaming", b, s) for b in (16, 32)
                                                     for s in ("question-aware", "in-place")]
    assert len(data["rows"]) == 5 * 2                      # every run, both tasks, one context
    for row in data["rows"]:
        assert row["n"] == 2 and row["lo"] <= row["rate"] <= row["hi"]
    ppl = {(r["method"], r["budget"]) for r in data["perplexity"]}
    assert ppl == {("dense", None), ("streaming", 16), ("streaming", 32)}     # in place only
    assert all(r["n_tokens"] == 8 and np.isfinite(r["ppl"]) for r in data["perplexity"])
    md = (tmp_path / "t.md").read_text()
    assert "| streaming | 16 | question-aware |" in md and "passkey 400" in md and "ppl 400" in md
    for png in ("t_accuracy.png", "t_perplexity.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert "| grilly_kv | dense | - | in-place |" in captured.out      # the table, on stdout
    assert not list(tmp_path.glob(".*tmp*"))


def test_cli_eval_one_setting_and_no_perplexity(small_path, tmp_path, capsys):
    rc = main(["eval", "-m", str(small_path), "--policies", "streaming", "--budgets", "16", "--contexts", "400",
               "--tasks", "passkey", "-n", "1", "--setting", "question-aware", "--ppl-windows", "0",
               "--device", "cpu", "--chunk", "16", "--out", str(tmp_path), "--name", "q"])
    assert rc == 0
    data = json.loads((tmp_path / "q.json").read_text())
    assert [r["setting"] for r in data["runs"]] == ["question-aware"] and data["perplexity"] == []
    assert not (tmp_path / "q_perplexity.png").exists() and (tmp_path / "q_accuracy.png").exists()


def test_perplexity_contexts_that_do_not_fit_are_said(small_path, tmp_path, capsys):
    rc = main(["eval", "-m", str(small_path), "--policies", "dense", "--contexts", "400", "--tasks", "passkey",
               "-n", "1", "--ppl-targets", "1000", "--device", "cpu", "--chunk", "16", "--out", str(tmp_path)])
    assert rc == 0
    assert "perplexity not measured at context(s) 400" in capsys.readouterr().err
    assert json.loads((tmp_path / "eval.json").read_text())["perplexity"] == []


def test_time_limit_starts_no_run_after_it(small):
    model, tk = small
    cfg = SuiteConfig(policies=["dense", "streaming"], budgets=[16], contexts=[400], tasks=["passkey"],
                      n_per_cell=1, n_depths=1, ppl_contexts=[], ppl_windows=0)
    cut = evaluate_suite(model, tk, cfg, time_limit=0.0)
    assert cut["complete"] is False and cut["runs"] == [] and cut["rows"] == []
    done = evaluate_suite(model, tk, cfg, time_limit=1e6)
    assert done["complete"] is True and len(done["runs"]) == 3


def test_interrupted_run_keeps_its_finished_trials(small, monkeypatch):
    """A shard killed by `timeout` (SIGTERM -> SystemExit) mid-run keeps the trials that finished,
    marked partial, spread over the cells (round robin), and re-raises."""
    import grilly_kv.evaluation.suite as suite_mod

    model, tk = small
    cfg = SuiteConfig(policies=["dense"], budgets=[16], contexts=[400], tasks=["passkey", "multikey"],
                      n_per_cell=3, n_depths=1, ppl_contexts=[], ppl_windows=0)
    real, calls, seen = suite_mod.answer, [], []

    def answer(*args):
        if len(calls) == 4:
            raise SystemExit(143)
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(suite_mod, "answer", answer)
    with pytest.raises(SystemExit):
        evaluate_suite(model, tk, cfg, on_run=lambda res, run: seen.append(run))
    assert len(seen) == 1 and seen[0]["partial"] is True and len(seen[0]["trials"]) == 4
    tasks = sorted(t["task"] for t in seen[0]["trials"])
    assert tasks == ["multikey", "multikey", "passkey", "passkey"]


def test_device_vs_host_rebuilds_the_prompts_of_a_result(small, small_path, tmp_path):
    """benchmarks/device_vs_host.py rebuilds a suite result's prompts from its config and answers
    them again: on the same (host) model every answer must come out identical."""
    import importlib.util
    import json

    model, tk = small
    cfg = SuiteConfig(policies=["dense", "streaming"], budgets=[16], contexts=[400], tasks=["passkey", "multikey"],
                      n_per_cell=2, n_depths=2, ppl_contexts=[], ppl_windows=0, settings=["question-aware"])
    doc = evaluate_suite(model, tk, cfg)
    src = tmp_path / "gpu.json"
    src.write_text(json.dumps(doc))
    spec = importlib.util.spec_from_file_location("device_vs_host", ROOT / "benchmarks" / "device_vs_host.py")
    dvh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dvh)
    assert dvh.main([str(src), "-m", str(small_path), "--runs", "streaming:16", "--per-cell", "1",
                     "--name", str(tmp_path / "out")]) == 0
    (r,) = json.loads((tmp_path / "out.json").read_text())["results"]
    assert r["compared"] == 2 and r["same_answer"] == 2 and r["differences"] == []
    with pytest.raises(SystemExit, match="quest:16 not in"):
        dvh.main([str(src), "-m", str(small_path), "--runs", "quest:16", "--name", str(tmp_path / "x")])


# ---- merging and the best-per-cell comparison ------------------------------------------------------
def _row(engine, method, budget, setting, k, n=100, task="passkey", context=2048):
    return {"engine": engine, "method": method, "budget": budget, "setting": setting, "task": task,
            "context": context, **rate_summary([1] * k + [0] * (n - k))}


def _doc(engine, rows, seed=0, ppl=()):
    return {"engine": engine, "device": "dev", "commit": "abc", "config": {"seed": seed, "n_depths": 10},
            "rows": rows, "perplexity": list(ppl)}


QA = "question-aware"


def test_merge_keeps_one_of_each_cell_and_notes_a_disagreement():
    a = _doc("grilly_kv", [_row("grilly_kv", "dense", None, "in-place", 90), _row("grilly_kv", "streaming", 256, QA, 10)])
    b = _doc("grilly_kv", [_row("grilly_kv", "dense", None, "in-place", 90), _row("grilly_kv", "tappa", 256, QA, 30)])
    c = _doc("grilly_kv", [_row("grilly_kv", "dense", None, "in-place", 89)])
    merged = merge_results([a, b, c], ["a.json", "b.json", "c.json"])
    assert [(r["method"], r["k"]) for r in merged["rows"]] == [("dense", 90), ("streaming", 10), ("tappa", 30)]
    assert len(merged["notes"]) == 1 and "c.json" in merged["notes"][0] and "89" in merged["notes"][0]
    assert [m["file"] for m in merged["merged_from"]] == ["a.json", "b.json", "c.json"]
    with pytest.raises(ValueError, match="different prompts: config seed"):
        merge_results([a, _doc("kvpress", [], seed=1)], ["a", "k"])
    peer = {"engine": "kvpress", "config": {"seed": 0}, "rows": []}          # make_suite's n_depths: 10
    assert merge_results([a, peer], ["a", "k"])["rows"] == a["rows"]
    with pytest.raises(ValueError, match="config n_depths is a: 2 / k: 10"):
        merge_results([dict(a, config={"seed": 0, "n_depths": 2}), peer], ["a", "k"])
    with pytest.raises(ValueError, match="no 'rows'"):
        merge_results([a, {"engine": "x"}], ["a", "x"])


def test_best_per_cell_picks_each_engines_best_and_judges_overlap():
    ours = _doc("grilly_kv", [_row("grilly_kv", "dense", None, "in-place", 95),
                              _row("grilly_kv", "streaming", 256, QA, 10), _row("grilly_kv", "tappa", 256, QA, 30),
                              _row("grilly_kv", "streaming", 1024, QA, 50), _row("grilly_kv", "tappa", 1024, QA, 45),
                              _row("grilly_kv", "tappa", 2048, QA, 70),
                              _row("grilly_kv", "tappa", 512, "in-place", 20)])
    peer = _doc("kvpress", [_row("kvpress", "dense", None, "in-place", 99),
                            _row("kvpress", "snapkv", 256, QA, 5), _row("kvpress", "knorm", 256, QA, 2),
                            _row("kvpress", "snapkv", 1024, QA, 80), _row("kvpress", "tova", 2048, QA, 75)])
    best = {(e["budget"], e["setting"]): e for e in best_per_cell([merge_results([ours, peer], ["o", "p"])])}
    assert set(best) == {(256, QA), (1024, QA), (2048, QA), (512, "in-place")}      # dense left out
    e = best[(256, QA)]
    assert e["grilly_kv"]["method"] == "tappa" and e["kvpress"]["method"] == "snapkv"
    assert (e["overlap"], e["lead"], e["target_met"]) == (False, "grilly_kv", True)
    e = best[(1024, QA)]
    assert e["grilly_kv"]["method"] == "streaming" and (e["overlap"], e["lead"], e["target_met"]) == (False, "kvpress", False)
    e = best[(2048, QA)]
    assert (e["overlap"], e["lead"], e["target_met"]) == (True, "overlap", True)        # 0.70 vs 0.75, n=100
    e = best[(512, "in-place")]
    assert e["kvpress"] is None and (e["overlap"], e["lead"], e["target_met"]) == (None, "-", None)
    no_tappa = best_per_cell([ours, peer], exclude=("tappa",))
    assert [e["grilly_kv"]["method"] for e in no_tappa if e["grilly_kv"]] == ["streaming", "streaming"]
    table = format_best_table(best_per_cell([ours, peer]))
    assert "| passkey | 2048 | 1024 | question-aware | streaming 0.50 [0.40, 0.60] n=100 | snapkv 0.80" in table
    assert "**no**" in table and "in 2 of 3 cells measured by both" in table


def test_merge_suite_script_on_a_real_suite_result_and_a_peer(suite_result, tmp_path):
    """benchmarks/merge_suite.py on the synthetic model's suite result (two shards of it) and a
    peer result in the same schema: one JSON, the tables, the plots, the best-per-cell table."""
    rows = suite_result["rows"]
    shard_a = dict(suite_result, rows=[r for r in rows if r["method"] == "dense"])
    shard_b = dict(suite_result, rows=rows)                          # dense again: kept once
    peer_rows = [dict(r, engine="kvpress", method="snapkv" if r["budget"] else "dense") for r in rows
                 if r["setting"] == "question-aware" or r["budget"] is None]
    peer = {"engine": "kvpress", "device": "cpu", "commit": "x", "config": {"seed": 0, "n_depths": 2},
            "rows": peer_rows, "perplexity": []}
    files = []
    for name, doc in (("a", shard_a), ("b", shard_b), ("kvpress_peer", peer)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(doc))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "merge_suite.py"), "--name", "m",
                          "--out", str(tmp_path / "out"), *map(str, files)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    merged = json.loads((tmp_path / "out" / "m.json").read_text())
    assert len(merged["rows"]) == len(rows) + len(peer_rows) and merged["notes"] == []
    assert {e["task"] for e in merged["best_per_cell"]} == {"passkey", "multikey"}
    judged = [e for e in merged["best_per_cell"] if e["target_met"] is not None]
    assert judged and all(e["overlap"] and e["target_met"] for e in judged)   # identical rates
    md = (tmp_path / "out" / "m.md").read_text()
    assert "## Best grilly_kv policy against the best kvpress press per cell" in md and "ppl 32" in md
    for png in ("m_accuracy.png", "m_perplexity.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "merge_suite.py"), "--name", "m",
                          str(tmp_path / "missing.json")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "no such file" in bad.stderr


def test_write_outputs_replaces_files_whole(tmp_path):
    nll = [np.random.default_rng(0).gamma(2.0, 1.0, size=256)]
    doc = _doc("grilly_kv", [_row("grilly_kv", "dense", None, "in-place", 9, n=10),
                             _row("grilly_kv", "streaming", 64, QA, 3, n=10)],
               ppl=[{"engine": "grilly_kv", "method": "dense", "budget": None, "setting": "in-place", "context": 128,
                     **bootstrap_perplexity(nll)}])
    paths = write_outputs(doc, tmp_path, "w", "title")
    assert [p.name for p in paths] == ["w.json", "w.md", "w_accuracy.png", "w_perplexity.png"]
    assert json.loads(paths[0].read_text()) == doc and "0.30 [0.11, 0.60] n=10" in paths[1].read_text()
    assert not list(tmp_path.glob(".*tmp*"))


# ---- benchmarks/bench_suite.py: shards run in parallel -----------------------------------------------
def test_bench_suite_lists_parse_and_parallel_runs_never_share_files(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_suite
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    cfg = bench_suite.config(bench_suite.parse(["--budgets", "256,512,1024,2048", "--contexts", "2048,4096,8000",
                                                "--policies", "streaming,tappa", "--settings", "question-aware",
                                                "--name", "shard_a"]))
    assert cfg.budgets == [256, 512, 1024, 2048] and cfg.contexts == [2048, 4096, 8000]
    assert bench_suite.ordered_runs(cfg)[:2] == [("streaming", 256, "question-aware"), ("tappa", 256, "question-aware")]
    out = tmp_path / "shard_a.json"
    lock = bench_suite.claim(out)
    assert lock.read_text() == str(os.getpid())
    with pytest.raises(SystemExit, match="another --name"):        # this process is alive: refused
        bench_suite.claim(out)
    assert bench_suite.claim(tmp_path / "shard_b.json") != lock     # another name: its own files
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(gone.stdout.strip())                            # a run killed by timeout
    assert bench_suite.claim(out) == lock and lock.read_text() == str(os.getpid())
