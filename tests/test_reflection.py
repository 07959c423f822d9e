"""SPIR-V reflection (build.py's parser, the JSON next to each .spv) and the checks built on it:
pipelines must match the shader's interface, and the buffers a dispatch writes (hence the
barriers) come from the shader's ``readonly`` declarations, not from a hand-kept list."""
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from grilly_kv.backend import BackendError, Buffer, Recording, reflection
from grilly_kv.backend.pipelines import load_spirv

ROOT = Path(__file__).resolve().parent.parent
SHADERS = sorted(p.stem for p in (ROOT / "shaders").glob("*.glsl"))
DECL = re.compile(r"layout\s*\(([^)]*)\)\s*((?:\w+\s+)*)buffer\s+(\w+)")


def load_build():
    spec = importlib.util.spec_from_file_location("grilly_kv_build", ROOT / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


build = load_build()


def glsl_buffers(name: str) -> dict[int, tuple[bool, bool]]:
    """binding -> (every declaration readonly, every declaration writeonly), from the source."""
    found: dict[int, list[set]] = {}
    text = re.sub(r"//[^\n]*", "", (ROOT / "shaders" / f"{name}.glsl").read_text())
    for layout, quals, _ in DECL.findall(text):
        m = re.search(r"binding\s*=\s*(\d+)", layout)
        if m:
            found.setdefault(int(m.group(1)), []).append(set(quals.split()))
    return {b: (all("readonly" in q for q in qs), all("writeonly" in q for q in qs))
            for b, qs in found.items()}


@pytest.mark.parametrize("name", SHADERS)
def test_reflection_json_matches_the_spirv_and_the_source(name):
    info = json.loads((ROOT / "grilly_kv" / "spirv" / f"{name}.json").read_text())
    again = build.reflect_spirv(load_spirv(name), name)
    for key in ("bindings", "push_constants", "spec_ids", "spec_types"):
        assert info[key] == again[key], key
    declared = glsl_buffers(name)
    reflected = {b["binding"]: (b["non_writable"], b["non_readable"]) for b in info["bindings"]}
    for binding, flags in reflected.items():     # the optimiser may drop an unused binding
        if binding in declared:
            assert flags == declared[binding], f"{name} binding {binding}"
    iface = reflection.shader_interface(name)
    assert iface.writable, f"{name} writes no buffer"


def test_chain_add_interface():
    iface = reflection.shader_interface("chain-add")
    assert (iface.n_bindings, iface.writable, iface.readable) == (2, {1}, {0})
    assert (iface.push_size, iface.push_offsets, iface.spec_ids) == (4, (0,), (0,))


def test_aliased_bindings_are_merged():
    iface = reflection.shader_interface("kv-compact")   # uint and uvec4 views of src and dst
    assert iface.n_bindings == 4 and iface.writable == {0, 1}   # src may be dst: not readonly


def _words(*instructions):
    out = [build.SPIRV_MAGIC, 0x00010300, 0, 100, 0]
    for op, *args in instructions:
        out += [((len(args) + 1) << 16) | op, *args]
    return b"".join(int(w).to_bytes(4, "little") for w in out)


def test_parser_on_a_hand_made_module():
    # %1 uint, %2 float, %3 runtime array of float, %4 struct{float[]} (SSBO, StorageBuffer class),
    # %5 pointer, %6 variable at set 0 binding 2, NonWritable; %7 push struct {uint, float, uint}
    # at offsets 0, 4, 12; %8 its pointer, %9 its variable; %10 a spec constant with SpecId 3.
    mod = _words(
        (21, 1, 32, 0), (22, 2, 32), (29, 3, 2), (30, 4, 3), (32, 5, 12, 4), (59, 5, 6, 12),
        (71, 4, 2), (71, 6, 34, 0), (71, 6, 33, 2), (71, 6, 24),
        (30, 7, 1, 2, 1), (72, 7, 0, 35, 0), (72, 7, 1, 35, 4), (72, 7, 2, 35, 12),
        (32, 8, 9, 7), (59, 8, 9, 9), (50, 1, 10, 64), (71, 10, 1, 3))
    info = build.reflect_spirv(mod, "hand")
    assert info["bindings"] == [{"set": 0, "binding": 2, "kind": "storage_buffer", "names": [""],
                                 "non_writable": True, "non_readable": False}]
    assert info["push_constants"]["size"] == 16 and info["push_constants"]["offsets"] == [0, 4, 12]
    assert info["spec_ids"] == [3] and info["spec_types"] == ["uint"]
    with pytest.raises(ValueError, match="not SPIR-V"):
        build.reflect_spirv(b"\0" * 40, "junk")


def test_mismatched_pipelines_are_named_errors(vk):
    a, b, c = Buffer(vk, 64), Buffer(vk, 64), Buffer(vk, 64)
    with pytest.raises(BackendError, match="'chain-add'.*3 buffers bound, the shader declares 2"):
        Recording(vk).dispatch("chain-add", [a, b, c], groups=(1,), push=[64], spec=[256])
    with pytest.raises(BackendError, match="'chain-add'.*8 bytes of push constants given.* 4 bytes"):
        Recording(vk).dispatch("chain-add", [a, b], groups=(1,), push=[64, 1], spec=[256])
    with pytest.raises(BackendError, match="'chain-add'.*2 specialisation constants given"):
        Recording(vk).dispatch("chain-add", [a, b], groups=(1,), push=[64], spec=[256, 1])
    with pytest.raises(BackendError, match="shader 'chain-add' does not match"):
        vk.pipelines.get("chain-add", [a], (256,), 1)     # the cache checks too


def test_specialisation_values_must_suit_their_types(vk):
    """A float given for a uint constant would reach the driver as its bit pattern (1.5 ->
    1069547520 invocations): refused by name, as are bools, negatives and strings; every
    shader's constants have one of the four reflected types."""
    a, b = Buffer(vk, 64), Buffer(vk, 64)
    assert reflection.shader_interface("chain-add").spec_types == ("uint",)
    for bad in (1.5, True, -1, "64"):
        with pytest.raises(BackendError, match="'chain-add': specialisation constant 0 is uint"):
            Recording(vk).dispatch("chain-add", [a, b], groups=(1,), push=[64], spec=[bad])
    Recording(vk).dispatch("chain-add", [a, b], groups=(1,), push=[64], spec=[np.uint32(64)])
    kinds = {k for name in SHADERS for k in reflection.shader_interface(name).spec_types}
    assert kinds <= {"uint", "int", "float", "bool"}


def test_a_hand_written_writes_list_is_checked_and_cannot_drop_a_barrier(vk):
    a, b, c = Buffer(vk, 64), Buffer(vk, 64), Buffer(vk, 64)
    with pytest.raises(BackendError, match=r"writes=\[0\] names bindings the shader declares "
                                           r"readonly; it may write only \[1\]"):
        Recording(vk).dispatch("chain-add", [a, b], groups=(1,), push=[64], spec=[256], writes=[0])
    kw = dict(groups=(1,), spec=(64, 64, 1, 1, 1, 0))
    rec = Recording(vk).dispatch("kv-compact", [a, b, c, c], push=[1, 1, 1, 0], writes=[1], **kw)
    rec.dispatch("chain-add", [a, c], groups=(1,), push=[64], spec=[256])
    assert rec.n_barriers == 1   # kv-compact's src is not readonly: a barrier despite writes=[1]


def test_barriers_follow_reflection(vk):
    a, b, c = (Buffer(vk, 64) for _ in range(3))
    kw = dict(groups=(1,), push=[64], spec=[256])
    rec = Recording(vk).dispatch("chain-add", [a, b], **kw).dispatch("chain-add", [a, c], **kw)
    assert rec.n_barriers == 0           # a is readonly: two readers need no barrier
    rec.dispatch("chain-add", [b, a], **kw)
    assert rec.n_barriers == 1           # reads b (written) and writes a (read): one barrier
    a.write(np.arange(64, dtype=np.float32))
    rec = Recording(vk).upload(a).dispatch("chain-add", [a, b], **kw)
    rec.dispatch("chain-add", [b, c], **kw).download(c).run()
    assert np.array_equal(c.read(64), np.arange(64, dtype=np.float32) + 2)


def test_stale_reflection_is_refused(tmp_path, monkeypatch):
    info = json.loads((ROOT / "grilly_kv" / "spirv" / "chain-add.json").read_text())
    info["spirv_sha256"] = "0" * 64
    (tmp_path / "chain-add.json").write_text(json.dumps(info))
    monkeypatch.setattr(reflection, "_spirv_dir", lambda: tmp_path)
    with pytest.raises(BackendError, match="another build of chain-add.spv"):
        reflection.shader_interface.__wrapped__("chain-add")
    with pytest.raises(BackendError, match="no reflection for shader 'buffer-copy'"):
        reflection.shader_interface.__wrapped__("buffer-copy")
