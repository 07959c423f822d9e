"""Shader chain-add: a chain of dependent dispatches in one submission is exact only with the
backend's compute->compute barriers (the hazard kp 0.9.0 leaves open)."""
import numpy as np

from grilly_kv.ops.chain_add import SHADER, chain_add
from grilly_kv.reference.chain_add import chain_add_ref


def test_dependent_dispatches_in_one_submission(vk):
    n = 1 << 22            # 16 MiB per buffer: thousands of workgroups per dispatch
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    got = chain_add(x, 24, device=vk)
    assert SHADER == "chain-add"
    np.testing.assert_array_equal(got, chain_add_ref(x, 24))


def test_barriers_are_recorded_between_dependent_dispatches(vk):
    from grilly_kv.backend import Recording

    ws = vk.workspace("test-recording")
    a, b, c = (ws.scratch.get(k, 64) for k in "abc")
    rec = Recording(vk)
    rec.upload(a)
    rec.dispatch(SHADER, [a, b], groups=(1,), push=[64], spec=[256], writes=[1])   # reads a: RAW
    assert rec.n_barriers == 1
    rec.dispatch(SHADER, [a, c], groups=(1,), push=[64], spec=[256], writes=[1])   # independent
    assert rec.n_barriers == 1
    rec.dispatch(SHADER, [b, a], groups=(1,), push=[64], spec=[256], writes=[1])   # reads b: RAW
    assert rec.n_barriers == 2
    rec.download(a)                                                                # reads a: RAW
    assert rec.n_barriers == 3
    rec.run()
    assert np.isfinite(a.read()).all()
