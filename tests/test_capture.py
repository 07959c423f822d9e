"""grilly_kv.models.capture: captured q/k/v are the model's own, RoPE relation holds (with the
model's frequencies), file round trip, and the command with ``-m``. Synthetic checkpoints: the
real weights are not the point."""
import numpy as np
from safetensors import safe_open

from grilly_kv.models.capture import capture_qkv, main, save_capture
from grilly_kv.models.llama import load_checkpoint
from grilly_kv.models.llama.reference import apply_rope, rope_tables
from grilly_kv.models.synthetic import write_synthetic_gguf


def test_capture_round_trip(tmp_path):
    ck = load_checkpoint(write_synthetic_gguf(tmp_path / "yarn.gguf", "yarn"))
    ids = list(range(200, 240))
    t = capture_qkv(ids, [0, 1], ckpt=ck, chunk=16)             # chunks: the sequence is stitched
    assert t["layer1.q_pre"].shape == (1, 4, 40, 16) and t["layer0.k_post"].shape == (1, 2, 40, 16)
    cos, sin = rope_tables(np.arange(40), ck.config)
    np.testing.assert_allclose(apply_rope(t["layer1.k_pre"][0], cos, sin), t["layer1.k_post"][0], atol=1e-5)
    # layer 0 keys are the RMS-normalised embeddings times wk
    e = ck.embedding[ids]
    h = e / np.sqrt((e * e).mean(-1, keepdims=True) + ck.config.norm_eps) * ck.layers[0]["attn_norm"]
    np.testing.assert_allclose((h @ ck.layers[0]["wk"].T).reshape(40, 2, 16).transpose(1, 0, 2),
                               t["layer0.k_pre"][0], atol=1e-4)
    path = tmp_path / "cap.safetensors"
    save_capture(path, t, meta={"rope_theta": 1e4})
    with safe_open(str(path), framework="numpy") as f:
        assert "rotate-half" in f.metadata()["rope"]
        np.testing.assert_allclose(f.get_tensor("layer1.v"), t["layer1.v"], atol=2e-3, rtol=1e-3)


def test_capture_command_takes_a_model(tmp_path):
    model = write_synthetic_gguf(tmp_path / "qwen3.gguf", "qwen3")
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat in the sun " * 8)
    out = tmp_path / "cap.safetensors"
    assert main(["-m", str(model), "--layers", "0,1", "--tokens", "30", "--text", str(text), "--float32", str(out)]) == 0
    with safe_open(str(out), framework="numpy") as f:
        meta = f.metadata()
        assert meta["arch"] == "qwen3" and meta["model"] == str(model)
        q = f.get_tensor("layer1.q_pre")
    assert q.shape == (1, 4, 30, 24)                                # qwen3: head_dim 24
    ids = [int(i) for i in __import__("json").loads(meta["token_ids"])]
    want = capture_qkv(ids, [1], ckpt=load_checkpoint(model))["layer1.q_pre"]
    np.testing.assert_allclose(q, want, atol=1e-6)
