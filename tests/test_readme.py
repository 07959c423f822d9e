"""Every README snippet runs as written: each ```python block is executed on the default device,
and the ```bash commands of the model client are parsed by the real argument parser."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


PYTHON = blocks("python")


def _needs_weights(code: str) -> bool:
    return "load_model" in code


@pytest.mark.parametrize("code", PYTHON, ids=[c.strip().splitlines()[-1][:40] for c in PYTHON])
def test_python_snippet_runs(code, vk):
    if _needs_weights(code):
        from grilly_kv.models.smollm2.weights import weights_available
        if not weights_available():
            pytest.skip("SmolLM2 weights not installed")
    exec(compile(code, "README.md", "exec"), {})


def _cli_lines() -> list[list[str]]:
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in re.split(r";|&&", line):
                words = shlex.split(part)
                if words[:1] == ["grilly-kv"]:
                    out.append(words[1:])
                elif words[:3] == ["python3", "-m", "grilly_kv"]:
                    out.append(words[3:])
    return out


def test_readme_commands_parse():
    from grilly_kv.cli import build_parser

    lines = _cli_lines()
    assert any(w[:1] == ["ask"] for w in lines) and any(w[:2] == ["eval", "--quick"] for w in lines)
    parser = build_parser()
    for words in lines:
        parser.parse_args(words)               # argparse exits (SystemExit) on a bad command


def test_readme_main_job_is_question_aware():
    first = blocks("bash")[0].splitlines()[0]
    assert "python3 -m grilly_kv ask" in first     # works without the console script's shim
