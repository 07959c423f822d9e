"""``grilly-kv``: exit codes, every argument checked before anything loads, --help content, --json
schema, broken pipe and Ctrl-C. The model loader is replaced by one that fails the test, so a
check that runs too late is caught (and these tests stay fast)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grilly_kv import cli
from grilly_kv.cli import evaluate as cli_eval
from grilly_kv.cli import generate as cli_gen
from grilly_kv.models.sampling import Sampler

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_load(monkeypatch):
    """Loading a model or opening a device fails the test: the error must come first."""
    def boom(*a, **k):
        raise AssertionError("the model or device was loaded before the argument check")
    for mod in (cli_gen, cli_eval):
        monkeypatch.setattr(mod, "load", boom)
        monkeypatch.setattr(mod, "open_device", boom)


USAGE_ERRORS = [
    (["generate", "--policy", "nope", "x"], "invalid choice"),
    (["generate", "--policy", "dense", "--budget", "8", "x"], "takes no budget"),
    (["generate", "--policy", "streaming", "--budget", "4", "x"], ">= 5"),
    (["generate", "--policy", "tappa", "--budget", "35", "x"], ">= 36"),
    (["generate", "--policy", "predictor", "--budget", "127", "x"], "128"),
    (["generate", "--policy", "triattention", "--budget", "132", "x"], ">= 133"),
    (["generate", "--policy", "quest", "--budget", "15", "x"], "16"),
    (["generate", "-n", "-5", "x"], "--n-predict"),
    (["generate", "--max-tokens", "0", "x"], "--n-predict"),
    (["generate", "--chunk", "-3", "x"], "--chunk"),
    (["generate", "--chunk", "0", "x"], "--chunk"),
    (["generate", "--temperature", "nan", "x"], "--temp"),
    (["generate", "--temp", "inf", "x"], "--temp"),
    (["generate", "--top-p", "0", "x"], "--top-p"),
    (["generate", "--top-k", "-1", "x"], "--top-k"),
    (["generate", "--raw", ""], "empty"),
    (["generate", "-p", "a", "b"], "once"),
    (["generate"], "once"),
    (["generate", "-f", "/nonexistent/prompt.txt"], "no such file"),
    (["generate", "-f", "/"], "not a regular file"),
    (["generate", "--device", "gpu", "x"], "--device"),
    (["generate", "--device", "vulkan:x", "x"], "--device"),
    (["generate", "--policy", "quest", "--calibration", "/etc/hostname", "x"], "applies to"),
    (["generate", "--policy", "triattention", "--calibration", "/nonexistent", "x"], "no such file"),
    (["generate", "--policy", "dense", "--sinks", "4", "x"], "--sinks"),
    (["ask", "--essay", "no-such-essay", "--policy", "streaming"], None),   # checked after the corpus
    (["eval", "--policies", "dense,nope"], "nope"),
    (["eval", "--budgets", "16,-3"], "--budgets"),
    (["eval", "--tasks", "passkey,nope"], "--tasks"),
    (["eval", "--setting", "sideways"], "--setting"),
    (["eval", "-n", "0"], "--n-per-cell"),
    (["eval", "--time-limit", "0"], "--time-limit"),
    (["eval", "--contexts", "8"], "--contexts"),
    (["eval", "--policies", "streaming", "--budgets", "3"], ">= 5"),
    (["eval", "--out", "/proc/x"], "--out"),
    (["eval", "--name", "a/b", "--out", "{tmp}"], "--name"),
    (["eval", "--policies", "tappa,triattention", "--budgets", "256", "--calibration", "x.json"],
     "POLICY=FILE"),
    (["info", "--device", "tpu"], "--device"),
]


@pytest.mark.parametrize("argv,message", USAGE_ERRORS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_usage_errors_exit_2_before_loading(argv, message, no_load, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [v.replace("{tmp}", str(tmp_path)) for v in argv]
    if argv[0] == "ask":
        pytest.importorskip("grilly_kv.evaluation.corpus")
        from grilly_kv.evaluation.corpus import corpus_available
        if not corpus_available():
            pytest.skip("essay corpus not installed")
        message = "--essay"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]          # argparse prints its usage lines before
    assert message in last and "error" in last
    assert "Traceback" not in err


def test_help_lists_policies_budgets_and_every_flag_has_help(capsys):
    from grilly_kv.policies import policy_names

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help text"
    assert cli.main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    for name in policy_names():
        assert name in out
    for floor in ("minimum sinks + 1 = 5", "= 36", "= 128", "= 133"):
        assert floor in out
    assert "saves reads, not memory" in out
    for flag in ("-m PATH", "--model", "-p PROMPT", "-f FILE", "-n N_PREDICT", "--temp", "--top-k",
                 "--top-p", "--seed", "-sys", "--no-chat-template", "--raw", "--json", "(default 64)"):
        assert flag in out, flag
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("grilly-kv ")


def test_budget_minima_in_help_match_the_policies():
    """The minima listed in --help are the ones the policies enforce."""
    from grilly_kv.cli.options import UsageError, policy_factory

    for name, floor in (("streaming", 5), ("tappa", 36), ("predictor", 128), ("triattention", 133),
                        ("quest", 16), ("entmax", 16)):
        policy_factory(name, floor)
        with pytest.raises(UsageError):
            policy_factory(name, floor - 1)


def test_ctrl_c_exits_130(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_gen, "open_device", lambda spec: None)
    monkeypatch.setattr(cli_gen, "load", interrupted)
    assert cli.main(["generate", "x"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_runtime_error_exits_1_in_one_line(monkeypatch, capsys):
    def fails(*a, **k):
        raise RuntimeError("the device went away")
    monkeypatch.setattr(cli_gen, "open_device", lambda spec: None)
    monkeypatch.setattr(cli_gen, "load", fails)
    monkeypatch.delenv("GRILLY_KV_DEBUG", raising=False)
    assert cli.main(["generate", "x"]) == 1
    err = capsys.readouterr().err
    assert "the device went away" in err and "Traceback" not in err


class _FakeConfig:
    context = 8192


class _FakeModel:
    config, device_name, max_chunk = _FakeConfig(), "fake", 8


def test_eval_interrupted_keeps_finished_runs_and_says_so(monkeypatch, tmp_path, capsys):
    import grilly_kv.evaluation.report as report_mod
    import grilly_kv.evaluation.suite as suite_mod

    monkeypatch.setattr(cli_eval, "open_device", lambda spec: None)
    monkeypatch.setattr(cli_eval, "load", lambda a: (_FakeModel(), None))
    monkeypatch.setattr(cli_eval, "measured_rates", lambda model: (1000.0, 100.0))
    monkeypatch.setattr(report_mod, "write_outputs",
                        lambda results, out, stem, title="": [Path(out) / f"{stem}.json"])

    def evaluate_suite(model, tk, cfg, on_run=None, policy_kwargs=None, time_limit=None, progress=None):
        run = {"engine": "grilly_kv", "method": "dense", "budget": None, "setting": "in-place", "seconds": 1.0}
        on_run({"rows": [], "perplexity": [], "runs": [run], "complete": False}, run)
        raise KeyboardInterrupt

    monkeypatch.setattr(suite_mod, "evaluate_suite", evaluate_suite)
    assert cli.main(["eval", "--quick", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "estimated run time" in err and "--quick is meant to finish within 15 minutes" in err
    assert f"1 finished run(s) kept in {tmp_path}" in err


def test_eval_default_output_is_not_the_repository_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["eval", "--quick"])
    _, _, out = cli_eval.check_eval_args(args)
    assert out.resolve() == (tmp_path / cli_eval.DEFAULT_OUT).resolve()
    assert out.resolve() != (ROOT / "benchmarks" / "results").resolve()


def test_eval_and_generate_take_policy_variants(tmp_path):
    """"predictor:cnn" / "predictor:last-row" are accepted wherever a policy is named; an unknown
    variant is refused naming the flag the user typed."""
    args = cli.build_parser().parse_args(["eval", "--quick", "--policies", "dense,predictor:cnn,predictor:last-row",
                                          "--budgets", "128", "--out", str(tmp_path)])
    _, kwargs, _ = cli_eval.check_eval_args(args)
    assert {"predictor:cnn", "predictor:last-row"} <= set(kwargs)
    bad = cli.build_parser().parse_args(["eval", "--quick", "--policies", "predictor:foo", "--out", str(tmp_path)])
    with pytest.raises(cli_eval.UsageError, match=r"--policies must be one of .*predictor:cnn.*got 'predictor:foo'"):
        cli_eval.check_eval_args(bad)
    assert cli.build_parser().parse_args(["generate", "--policy", "predictor:cnn", "hi"]).policy == "predictor:cnn"


def test_eval_estimate_counts_every_run():
    """Dense runs once, every other policy once per budget and setting; perplexity in place only."""
    from grilly_kv.evaluation.suite import SuiteConfig

    def cfg(policies, settings=("question-aware", "in-place"), ppl_windows=1):
        return SuiteConfig(policies=policies, budgets=[64, 128], contexts=[256], tasks=["passkey"],
                           settings=list(settings), n_per_cell=2, ppl_contexts=[256], ppl_targets=16,
                           ppl_windows=ppl_windows)

    one = cli_eval.estimate_seconds(cfg(["dense"]), 100.0, 10.0)
    assert one == pytest.approx(2 * (256 / 100 + 12 / 10) + (256 / 100 + 16 / 10))
    trials_only = cli_eval.estimate_seconds(cfg(["dense"], ppl_windows=0), 100.0, 10.0)
    assert cli_eval.estimate_seconds(cfg(["dense", "streaming"]), 100.0, 10.0) == pytest.approx(
        5 * trials_only + 3 * (one - trials_only))
    assert cli_eval.estimate_seconds(cfg(["streaming"], ["in-place"]), 100.0, 10.0) == pytest.approx(2 * one)


def test_eval_quick_and_full_settings():
    quick = cli_eval.settings(cli.build_parser().parse_args(["eval", "--quick"]))
    assert quick["settings"] == ["question-aware", "in-place"] and quick["tasks"] == ["passkey"]
    full = cli_eval.settings(cli.build_parser().parse_args(
        ["eval", "--setting", "in-place", "--budgets", "256,512,1024,2048", "--contexts", "2048,4096,8000"]))
    assert full["settings"] == ["in-place"] and full["budgets"] == [256, 512, 1024, 2048]
    assert full["contexts"] == [2048, 4096, 8000] and full["n_per_cell"] == 100 and len(full["tasks"]) == 4


def test_sampler_top_k_top_p_and_greedy():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    assert Sampler(0.0).sample(logits, rng) == 0
    p = Sampler(1.0, top_k=2).probabilities(logits)
    np.testing.assert_allclose(p, [0.625, 0.375, 0, 0])
    p = Sampler(1.0, top_p=0.8).probabilities(logits)      # 0.5 + 0.3 reaches 0.8
    np.testing.assert_allclose(p, [0.625, 0.375, 0, 0])
    p = Sampler(1.0, top_p=0.81).probabilities(logits)
    np.testing.assert_allclose(p, [0.5, 0.3, 0.15, 0] / np.float64(0.95))
    draws = {Sampler(1.0, top_k=2).sample(logits, rng) for _ in range(200)}
    assert draws == {0, 1}
    for bad in (dict(temperature=float("nan")), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
                dict(top_k=True)):
        with pytest.raises(ValueError):
            Sampler(**{"temperature": 1.0, **bad})
    with pytest.raises(ValueError):
        Sampler(1.0).probabilities(np.array([0.0, np.nan]))


def _weights_or_skip():
    from grilly_kv.models.smollm2.weights import weights_available
    if not weights_available():
        pytest.skip("SmolLM2 weights not installed")


def test_json_summary_schema(capsys):
    _weights_or_skip()
    rc = cli.main(["generate", "--json", "--policy", "streaming", "--budget", "8", "-n", "3",
                   "--layers", "1", "--device", "cpu", "--chunk", "8", "--raw",
                   "-q", "Who?", "-p", "One two three four five six seven eight nine ten eleven"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out)                     # stdout holds exactly one JSON object
    for key, kind in (("text", str), ("tokens", list), ("prompt_tokens", int), ("context_tokens", int),
                      ("question_tokens", int), ("prefill_tokens_per_s", float),
                      ("decode_tokens_per_s", float), ("kv_bytes", int), ("dense_kv_bytes", int),
                      ("device", str), ("policy", str), ("keeps_all_tokens", bool)):
        assert isinstance(data[key], kind), key
    assert "weight_bytes" in data and "cpu" in data["device"]
    assert data["prompt_tokens"] == data["context_tokens"] + data["question_tokens"]
    assert data["question_tokens"] > 0 and 1 <= len(data["tokens"]) <= 3
    assert 0 < data["kv_bytes"] < data["dense_kv_bytes"]


def test_prompt_beyond_the_context_is_refused_on_cpu_too(capsys):
    _weights_or_skip()
    rc = cli.main(["generate", "--layers", "1", "--device", "cpu", "--raw", "-n", "10000", "hi"])
    assert rc == 2 and "context" in capsys.readouterr().err


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "grilly_kv", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_python_dash_m_and_usage_error_in_a_subprocess():
    p = _cli("generate", "--chunk", "0", "x")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and b"--chunk" in err and b"Traceback" not in err


def test_broken_pipe_is_quiet():
    _weights_or_skip()
    p = _cli("generate", "--layers", "1", "--device", "cpu", "-n", "6", "--raw", "Hello")
    p.stdout.close()                           # the reader goes away, as `| head -0`
    err = p.stderr.read()
    p.wait(timeout=300)
    assert p.returncode == 0, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_list_devices(vk, capsys):
    assert cli.main(["--list-devices"]) == 0
    out = capsys.readouterr().out
    assert "vulkan:0" in out and "cpu" in out
