"""grilly_kv.models.load_model (the checkpoint registry) and the ``-m/--model`` arguments of the
commands that take a model, on synthetic checkpoints; the smollm2 compatibility alias."""
import numpy as np
import pytest

from grilly_kv.models import CHECKPOINTS, load_model, resolve_checkpoint
from grilly_kv.models.synthetic import write_synthetic_gguf


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_synthetic_gguf(tmp_path_factory.mktemp("reg") / "qwen2.gguf", "qwen2")


def test_names_and_paths_resolve(model_path, monkeypatch):
    assert "smollm2" in CHECKPOINTS
    assert resolve_checkpoint(model_path) == model_path and resolve_checkpoint(str(model_path)) == model_path
    monkeypatch.setenv("GRILLY_KV_GGUF", str(model_path))          # the default name honours the variable
    assert resolve_checkpoint("smollm2") == model_path and resolve_checkpoint(None) == model_path
    with pytest.raises(FileNotFoundError, match="'nope.gguf' is neither a registered checkpoint"):
        resolve_checkpoint("nope.gguf")


def test_load_model_builds_the_device_forward(vk, model_path):
    from grilly_kv.models.llama.reference import ReferenceModel
    from grilly_kv.models.llama.vulkan import VulkanModel

    ref, tk = load_model(model_path, "cpu", n_layers=1, max_chunk=4)
    dev, _ = load_model(model_path, vk, ckpt=ref.ckpt, max_chunk=4)
    assert isinstance(ref, ReferenceModel) and isinstance(dev, VulkanModel)
    assert ref.config.n_layers == 1 and dev.ckpt is ref.ckpt and ref.max_chunk == 4
    assert tk.vocab_size == ref.config.vocab and tk.stop_ids(ref.config.eos_id) >= {ref.config.eos_id}


def test_smollm2_alias_is_the_new_code():
    import grilly_kv.models.llama.reference as new_ref
    import grilly_kv.models.llama.vulkan as new_vk
    from grilly_kv.models.smollm2 import reference, vulkan

    assert reference is new_ref and vulkan is new_vk


def test_predictor_captures_take_a_model(model_path):
    from grilly_kv.predictor.train import load_captures

    a = load_captures([0], 32, model=str(model_path))
    b = load_captures([0], 32, model=str(model_path), layers=1)
    assert a[0].shape[:2] == (2 * 4, 32) and b[0].shape[0] == 4        # layers x query heads
    np.testing.assert_allclose(a[0][:4], b[0])


def test_predictor_capture_cache_supplies_what_it_holds_and_keeps_new_essays(model_path, tmp_path):
    from grilly_kv.predictor.train import load_captures

    cache = str(tmp_path / "captures.npz")
    first = load_captures([0], 32, model=str(model_path), cache=cache)
    with np.load(cache) as z:
        marked = {"essay0": np.full_like(z["essay0"], 7)}
    np.savez(cache, **marked)                               # prove essay 0 now comes from the cache
    both = load_captures([0, 1], 32, model=str(model_path), cache=cache)
    assert (both[0] == 7).all() and both[1].shape == first[0].shape and not (both[1] == 7).all()
    with np.load(cache) as z:
        assert sorted(z.files) == ["essay0", "essay1"] and (z["essay0"] == 7).all()


def test_tappa_qsim_takes_a_model(model_path, tmp_path):
    from grilly_kv.cli import main

    out = tmp_path / "qsim.json"
    assert main(["qsim", "-m", str(model_path), "--essays", "1", "--tokens", "64", "--window", "16",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert out.is_file()
