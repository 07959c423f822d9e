"""`grilly-kv calibrate -m MODEL`: the file it writes holds the statistics of the model's own
pre-RoPE queries (checked against calibrate() on queries captured separately), with the model's
RoPE frequencies. A synthetic llama3-scaled checkpoint: the model's weights are not the point."""
import numpy as np

from grilly_kv.cli import main
from grilly_kv.triattention import calibrate
from grilly_kv.triattention.calibration import load_calibration
from grilly_kv.triattention.cli import smollm2_rope


def test_calibrate_command_matches_captured_queries(tmp_path):
    from grilly_kv.evaluation.corpus import essays
    from grilly_kv.models.capture import capture_qkv
    from grilly_kv.models.chat_tokenizer import ChatTokenizer
    from grilly_kv.models.llama import load_checkpoint
    from grilly_kv.models.synthetic import write_synthetic_gguf

    model = write_synthetic_gguf(tmp_path / "llama3.gguf", "llama3")
    out = tmp_path / "calib.safetensors"
    assert main(["calibrate", "-m", str(model), "--output", str(out), "--essays", "1", "--tokens", "48",
                 "--chunk", "16"]) == 0
    got = load_calibration(out)
    ckpt = load_checkpoint(model)
    c = ckpt.config
    rope = smollm2_rope(c)
    np.testing.assert_array_equal(rope.omega, c.inv_freq())          # the forward's frequencies
    assert not np.allclose(rope.omega, c.rope_theta ** (-np.arange(0, c.head_dim, 2) / c.head_dim))
    ids = ChatTokenizer(ckpt.tokenizer).encode(essays()[0][1])[:48]
    layers = list(range(c.n_layers))
    q = capture_qkv(ids, layers, ckpt=ckpt, chunk=48)
    want = calibrate([q[f"layer{i}.q_pre"][0] for i in layers], rope, n_kv_heads=c.n_kv_heads)
    assert (got.n_layers, got.n_kv_heads) == (c.n_layers, c.n_kv_heads)
    for i in layers:
        for a, b in zip(got.layer(i), want.layer(i)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_calibrate_command_rejects_bad_arguments(tmp_path, capsys):
    assert main(["calibrate", "--output", str(tmp_path / "x.safetensors"), "--tokens", "0"]) == 2
    assert "--tokens" in capsys.readouterr().err
