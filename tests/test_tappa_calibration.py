"""TAPPA calibration and layer pruning on the real SmolLM2 weights (first 2 layers, short texts):
windowed q-similarity on Vulkan vs NumPy, hidden-state capture, Block Influence, BI' orders,
layer removal, perplexity, JSON round trip and the prune-rank command."""
import numpy as np
import pytest

from grilly_kv.models.llama import reference
from grilly_kv.models.llama.reference import ReferenceModel, rms_norm
from grilly_kv.models.llama.weights import load_checkpoint
from grilly_kv.policies.dense import DensePolicy
from grilly_kv.reference.attention_q_similarity import q_similarity_ref
from grilly_kv.tappa import (Calibration, block_influence, calibrate, minmax, perplexity,
                             prune_order, tappa_scores, without_layers)
from grilly_kv.tappa.calibration import capture_hidden, windowed_qsim
from grilly_kv.tappa.cli import main as cli_main


@pytest.fixture(scope="module")
def ckpt():
    return load_checkpoint(n_layers=2)


def texts(n=2, length=70, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"t{i}", rng.integers(100, 20000, length).tolist()) for i in range(n)]


@pytest.mark.parametrize("T", [32, 70, 97])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_windowed_qsim_vulkan_matches_numpy_windows(vk, T, dtype):
    q = np.random.default_rng(T).standard_normal((9, T, 64)).astype(dtype)
    for mode in ("consecutive", "pairwise"):
        got, n = windowed_qsim(q, 32, mode, vk)
        assert n == T // 32
        want = sum(q_similarity_ref(q[None, :, T - (j + 1) * 32:T - j * 32], mode)[0] for j in range(n))
        np.testing.assert_allclose(got, want, atol=2e-5 * n if dtype == np.float32 else 2e-3 * n)
    with pytest.raises(ValueError, match="no 32-query window"):
        windowed_qsim(q[:, :31], 32, "pairwise", vk)


def test_block_influence_known_values():
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])
    np.testing.assert_allclose(block_influence([a, a * 3, b, -b]), [0.0, 1.0, 2.0])
    np.testing.assert_allclose(block_influence([a, np.zeros_like(a)]), [1.0])     # no NaN


def test_capture_hidden_gives_the_residual_stream(ckpt):
    ids = texts(1, 20)[0][1]
    hidden = {}
    model = ReferenceModel(ckpt, max_chunk=20)
    model.start(DensePolicy(), 20)
    with capture_hidden(ckpt, lambda i, x: hidden.setdefault(i, x.copy())):
        logits = model.forward(ids, 0, all_logits=True)
    assert reference.rms_norm is rms_norm                           # restored
    assert sorted(hidden) == [0, 1, 2]
    np.testing.assert_array_equal(hidden[0], ckpt.embedding[ids])
    c = ckpt.config
    np.testing.assert_allclose(rms_norm(hidden[2], ckpt.output_norm, c.norm_eps) @ ckpt.embedding.T,
                               logits, rtol=1e-5, atol=1e-4)


def test_calibrate_on_the_real_model(vk, ckpt, tmp_path):
    tx = texts()
    captured = {}

    def keep(layer, name, arr):
        captured.setdefault((layer, name), []).append(arr.copy())

    model = ReferenceModel(ckpt, max_chunk=70)
    for _, ids in tx:      # the queries, independently of calibrate()
        model.start(DensePolicy(), 70)
        model.forward(ids, 0, capture=keep)
    ticks = []
    cal = calibrate(ckpt, tx, window=32, device=vk, progress=ticks.append)
    assert sum(ticks) == 2 * 2 and sorted(cal.qsim) == ["post/consecutive", "post/pairwise",
                                                         "pre/consecutive", "pre/pairwise"]
    for rope in ("pre", "post"):
        for mode in ("consecutive", "pairwise"):
            want = [np.mean([q_similarity_ref(q[None, :, 70 - 64 + 32 * j:70 - 32 + 32 * j], mode)[0]
                             for q in captured[(layer, f"q_{rope}")] for j in range(2)], axis=0)
                    for layer in range(2)]
            np.testing.assert_allclose(cal.qsim[f"{rope}/{mode}"], want, atol=5e-5)
    chunk = [np.mean([q_similarity_ref(q[None], "pairwise")[0] for q in captured[(layer, "q_pre")]], axis=0)
             for layer in range(2)]
    np.testing.assert_allclose(cal.qsim_chunk, chunk, atol=5e-5)
    assert cal.block_influence.shape == (2,) and (cal.block_influence > 0).all()
    np.testing.assert_allclose(cal.perplexity, perplexity(ckpt, [ids for _, ids in tx]), rtol=1e-5)
    back = Calibration.from_json(cal.to_json(tmp_path / "qsim.json"))
    np.testing.assert_allclose(back.qsim["post/pairwise"], cal.qsim["post/pairwise"], atol=1e-6)
    assert back.texts == ["t0", "t1"] and back.window == 32


def test_pruning_scores_orders_and_layer_removal(ckpt):
    np.testing.assert_array_equal(minmax(np.full(4, 0.3)), np.zeros(4))
    bi = np.array([0.4, 0.1, 0.1, 0.2, 0.9])
    q = np.array([0.5, 0.9, 0.5, 0.6, 0.5])
    np.testing.assert_allclose(tappa_scores(bi, q, 0.0), minmax(bi))
    s = tappa_scores(bi, q, 0.3)          # (bi-0.1)/0.8 + 0.3 (1 - (q-0.5)/0.4)
    np.testing.assert_allclose(s, [0.675, 0.0, 0.3, 0.35, 1.3])
    assert prune_order(bi) == [1, 2, 3, 0, 4]          # tie 1, 2 by index
    assert prune_order(s) == [1, 2, 3, 0, 4]
    assert prune_order(tappa_scores(bi, q, 2.0)) == [1, 3, 2, 0, 4]
    with pytest.raises(ValueError, match=r"\(L,\)"):
        tappa_scores(bi, q[:3], 0.3)
    one = without_layers(ckpt, [0])
    assert one.config.n_layers == 1 and one.layers[0] is ckpt.layers[1]
    assert ckpt.config.n_layers == 2 and len(ckpt.layers) == 2        # input untouched
    with pytest.raises(ValueError, match="every layer"):
        without_layers(ckpt, [0, 1])
    with pytest.raises(ValueError, match="removed layer"):
        without_layers(ckpt, [2])
    tx = [ids for _, ids in texts(1, 40)]
    assert perplexity(one, tx) != perplexity(ckpt, tx)


def test_prune_rank_command(tmp_path, capsys):
    cal = Calibration(model="m", texts=["a"], tokens_per_text=64, window=32, device="cpu",
                      qsim={"post/pairwise": np.tile([[0.5], [0.9], [0.5], [0.6], [0.5]], (1, 3))},
                      qsim_chunk=np.tile([[0.5], [0.9], [0.5], [0.6], [0.5]], (1, 3)),
                      block_influence=np.array([0.4, 0.1, 0.1, 0.2, 0.9]), perplexity=1.0)
    path = cal.to_json(tmp_path / "c.json")
    assert cli_main(["prune-rank", "--beta", "2", "--calibration", str(path), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "Block Influence order:        1 2 3 0 4" in out
    assert "TAPPA BI' order (beta 2): 1 3 2 0 4" in out
    assert "first 2 removed: BI [1, 2]  BI' [1, 3]" in out
    from grilly_kv.cli.options import UsageError

    with pytest.raises(UsageError, match="grilly-kv qsim"):            # exit 2 through grilly-kv
        cli_main(["prune-rank", "--calibration", str(tmp_path / "missing.json")])
