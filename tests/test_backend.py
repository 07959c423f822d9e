"""The Vulkan bridge: device choice, buffers and float16 packing, typed constants, timestamps."""
import numpy as np
import pytest

from grilly_kv.backend import (BackendError, Buffer, PushLayout, Recording, get_device, pack_f16,
                               unpack_f16)
from grilly_kv.backend.pipelines import as_words


def test_default_device_is_vulkan_and_named(vk, monkeypatch, caplog):
    monkeypatch.delenv("GRILLY_KV_DEVICE", raising=False)
    dev = get_device()
    assert dev.kind == "vulkan" and dev.name and dev.timestamp_period_ns > 0
    assert get_device("vulkan:0") is dev and get_device(dev) is dev


def test_env_var_selects_cpu(monkeypatch):
    monkeypatch.setenv("GRILLY_KV_DEVICE", "cpu")
    assert get_device().is_cpu


@pytest.mark.parametrize("spec, exc, match", [
    ("cuda", ValueError, "must be 'cpu', 'vulkan' or 'vulkan:N'"),
    ("cpu:1", ValueError, "takes no index"),
    (3, TypeError, "device must be None, a string or a Device"),
])
def test_bad_device_spec(spec, exc, match):
    with pytest.raises(exc, match=match):
        get_device(spec)


def test_bad_device_from_env(monkeypatch):
    monkeypatch.setenv("GRILLY_KV_DEVICE", "metal")
    with pytest.raises(ValueError, match=r"\$GRILLY_KV_DEVICE"):
        get_device()


def test_missing_vulkan_device_raises_instead_of_falling_back(vk):
    with pytest.raises(BackendError, match="cannot open Vulkan device 99"):
        get_device("vulkan:99")


def test_float16_packing_round_trip():
    x = np.random.default_rng(0).standard_normal(9).astype(np.float32)
    words = pack_f16(x)
    assert words.dtype == np.uint32 and words.size == 5
    np.testing.assert_array_equal(unpack_f16(words, 9), x.astype(np.float16).astype(np.float32))


def test_buffer_round_trip_through_device(vk):
    buf = Buffer(vk, 16, np.uint32)
    h = np.arange(-4, 28, dtype=np.float16) / 8
    buf.write(h)
    buf.upload_now()
    buf.write(np.zeros(16, np.uint32))
    buf.download_now()
    np.testing.assert_array_equal(buf.read(32, np.float16), h.astype(np.float32))
    with pytest.raises(ValueError, match="overflows"):
        buf.write(np.zeros(17, np.uint32))


def test_constants_are_typed_words():
    w = as_words([3, -1, 1.5])
    assert w.dtype == np.uint32
    assert w.tolist() == [3, 0xFFFFFFFF, 0x3FC00000]
    layout = PushLayout("n", "eps:f")
    assert layout.pack(n=7, eps=1.0).tolist() == [7, 0x3F800000]
    with pytest.raises(TypeError, match="missing"):
        layout.pack(n=7)
    with pytest.raises(OverflowError):
        as_words([2**32])


def test_push_constants_reach_the_shader_as_integers(vk):
    # chain-add reads its push constant n as a uint: a float-typed 64 would be 0x42800000
    from grilly_kv.ops.chain_add import SHADER

    x, y = Buffer(vk, 64), Buffer(vk, 64)
    x.write(np.arange(64, dtype=np.float32))
    Recording(vk).upload(x).dispatch(SHADER, [x, y], groups=(1,), push=[64], spec=[64],
                                     writes=[1]).download(y).run()
    np.testing.assert_array_equal(y.read(), np.arange(64, dtype=np.float32)[::-1] + 1)


def test_timestamps_are_monotone_and_scaled(vk):
    from grilly_kv.ops.buffer_copy import SHADER

    a, b = Buffer(vk, 1 << 16, host_visible=False), Buffer(vk, 1 << 16, host_visible=False)
    rec = Recording(vk, timestamps=True)
    for _ in range(3):
        rec.dispatch(SHADER, [a, b], groups=(64,), push=[1 << 14], spec=[256], writes=[1])
    for _ in range(2):   # replay: the query pool is reset at each recording start
        rec.run()
        ts = rec.timestamps_us()
        assert ts.shape == (len(rec.steps),) and np.all(np.diff(ts) >= 0) and rec.gpu_time_us() > 0


def test_dispatch_grid_checked(vk):
    rec = Recording(vk)
    with pytest.raises(ValueError, match="groups must be"):
        rec.dispatch("chain-add", [], groups=(0,))
    with pytest.raises(ValueError, match="exceeds the device limit"):
        rec.dispatch("chain-add", [], groups=(1 << 31,))


def test_unknown_shader_is_a_clear_error(vk):
    a = Buffer(vk, 4)
    with pytest.raises(BackendError, match="no compiled shader 'nope'"):
        Recording(vk).dispatch("nope", [a], groups=(1,)).run()


def test_partial_upload_and_download_touch_only_their_range(vk):
    buf = Buffer(vk, 8)
    buf.write(np.zeros(8, np.float32))
    buf.upload_now()
    buf.write(np.arange(8, dtype=np.float32) + 1)
    Recording(vk).upload(buf, words=3, offset=2).run()       # device: 0 0 3 4 5 0 0 0
    buf.write(np.full(8, -1, np.float32))
    Recording(vk).download(buf, words=6, offset=1).run()     # staging words 1..6 from the device
    np.testing.assert_array_equal(buf.read(), [-1, 0, 3, 4, 5, 0, 0, -1])
    with pytest.raises(ValueError, match="outside"):
        Recording(vk).upload(buf, words=8, offset=1)
    with pytest.raises(ValueError, match="exactly one buffer"):
        Recording(vk).upload(buf, buf, words=1)
