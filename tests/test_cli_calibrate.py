"""``grilly-kv calibrate --device vulkan`` gives the statistics of the NumPy path; output paths and
arguments of calibrate, qsim and prune-rank are checked before any work."""
from __future__ import annotations

import numpy as np
import pytest

from grilly_kv.cli import main


def _weights_or_skip():
    from grilly_kv.models.smollm2.weights import weights_available
    if not weights_available():
        pytest.skip("SmolLM2 weights not installed")


def test_calibrate_on_vulkan_matches_cpu(tmp_path, vk):
    _weights_or_skip()
    from grilly_kv.triattention import load_calibration

    paths = {}
    for dev in ("cpu", "vulkan"):
        paths[dev] = tmp_path / f"{dev}.safetensors"
        assert main(["calibrate", "--output", str(paths[dev]), "--essays", "1", "--tokens", "24",
                     "--chunk", "8", "--device", dev]) == 0
    a, b = (load_calibration(paths[d]) for d in ("cpu", "vulkan"))
    assert (a.n_layers, a.n_q_heads) == (b.n_layers, b.n_q_heads)
    for name in ("q_center_real", "q_center_imag", "q_mean_norm"):
        x, y = np.stack(getattr(a, name)), np.stack(getattr(b, name))
        assert np.abs(x).max() > 0.1                  # real statistics, not zeros
        # float16 weights and activations on the device against the float32 NumPy forward
        np.testing.assert_allclose(y, x, rtol=0.05, atol=0.02 * np.abs(x).max())


@pytest.mark.parametrize("argv,message", [
    (["calibrate", "--output", "/nonexistent/x.safetensors"], "does not exist"),
    (["calibrate", "--output", "x.safetensors", "--device", "tpu"], "--device"),
    (["qsim", "--window", "0"], "--window"),
    (["qsim", "--out", "/proc/x/q.json"], "--out"),
    (["prune-rank", "--qsim", "bogus"], "--qsim"),
    (["prune-rank", "--calibration", "/nonexistent.json"], "grilly-kv qsim --out"),
    (["prune-rank", "--calibration", "/etc/hostname"], "not a file written by"),
])
def test_tool_errors_exit_2_before_work(argv, message, capsys, tmp_path, monkeypatch):
    import grilly_kv.models.smollm2.weights as weights

    monkeypatch.chdir(tmp_path)

    def boom(*a, **k):
        raise AssertionError("loaded the model before checking the arguments")
    monkeypatch.setattr(weights, "load_checkpoint", boom)
    import grilly_kv.models.smollm2 as sm
    monkeypatch.setattr(sm, "load_checkpoint", boom)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err
