"""grilly_kv.models.capture: captured q/k/v are the model's own, RoPE relation holds, file round trip."""
import numpy as np
from safetensors import safe_open

from grilly_kv.models.capture import capture_qkv, save_capture
from grilly_kv.models.llama import load_checkpoint
from grilly_kv.models.llama.reference import apply_rope, rope_tables


def test_capture_round_trip(tmp_path):
    ck = load_checkpoint(n_layers=2)
    ids = list(range(300, 340))
    t = capture_qkv(ids, [0, 1], ckpt=ck, chunk=16)             # chunks: the sequence is stitched
    assert t["layer1.q_pre"].shape == (1, 9, 40, 64) and t["layer0.k_post"].shape == (1, 3, 40, 64)
    cos, sin = rope_tables(np.arange(40), ck.config)
    np.testing.assert_allclose(apply_rope(t["layer1.k_pre"][0], cos, sin), t["layer1.k_post"][0], atol=1e-5)
    # layer 0 keys are the RMS-normalised embeddings times wk
    e = ck.embedding[ids]
    h = e / np.sqrt((e * e).mean(-1, keepdims=True) + ck.config.norm_eps) * ck.layers[0]["attn_norm"]
    np.testing.assert_allclose((h @ ck.layers[0]["wk"].T).reshape(40, 3, 64).transpose(1, 0, 2),
                               t["layer0.k_pre"][0], atol=1e-4)
    path = tmp_path / "cap.safetensors"
    save_capture(path, t, meta={"rope_theta": 1e5})
    with safe_open(str(path), framework="numpy") as f:
        assert "rotate-half" in f.metadata()["rope"]
        np.testing.assert_allclose(f.get_tensor("layer1.v"), t["layer1.v"], atol=2e-3, rtol=1e-3)
