"""What each compiled shader declares, from the SPIR-V reflection ``build.py`` writes next to it.

``grilly_kv/spirv/NAME.json`` (see ``build.py``'s ``reflect_spirv``) lists the shader's storage
buffers (set, binding, NonWritable / NonReadable, i.e. GLSL ``readonly`` / ``writeonly``), its
push-constant block size and member offsets in bytes, and its specialisation-constant ids. The
backend checks every pipeline against it and derives from it which bound buffers a dispatch may
write (for barriers), so no hand-kept list at a call site can drop a barrier.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from .errors import BackendError

REFLECTION_VERSION = 1


@dataclass(frozen=True)
class ShaderInterface:
    """One shader's interface.

    Attributes:
        name: the shader (``shaders/NAME.glsl``).
        n_bindings: bound buffers the shader expects: set 0, bindings ``0 .. n_bindings-1``.
        writable: bindings without ``readonly`` (a dispatch may write them).
        readable: bindings without ``writeonly``.
        push_size: push-constant block size in bytes (0: none).
        push_offsets: byte offset of each push-constant member.
        spec_ids: specialisation-constant ids the shader declares.
        spec_types: each id's scalar type ("uint", "int", "float", "bool"; empty for a
            reflection written before types were recorded).
    """
    name: str
    n_bindings: int
    writable: frozenset
    readable: frozenset
    push_size: int
    push_offsets: tuple
    spec_ids: tuple
    spec_types: tuple = ()

    def check_spec_values(self, values) -> None:
        """Raise BackendError (naming the shader and the id) unless each value suits its
        specialisation constant's type: an integer for "uint" (>= 0) and "int" (bools and floats
        refused: a float would be passed as its bit pattern, e.g. 1.5 as about 1e9 invocations),
        a number for "float", a bool or 0/1 for "bool"."""
        for sid, (kind, v) in enumerate(zip(self.spec_types, values)):
            is_int = isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
            ok = {"uint": is_int and v >= 0, "int": is_int,
                  "float": isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)),
                  "bool": isinstance(v, (bool, np.bool_)) or (is_int and v in (0, 1))}.get(kind, True)
            if not ok:
                raise BackendError(f"shader {self.name!r}: specialisation constant {sid} is {kind}, "
                                   f"got {v!r} ({type(v).__name__})")

    def check(self, n_buffers: int, n_spec: int, n_push_words: int) -> None:
        """Raise BackendError (naming the shader) unless a pipeline with ``n_buffers`` bound
        buffers, ``n_spec`` specialisation constants (ids 0..n_spec-1) and ``n_push_words``
        32-bit push-constant words matches this interface."""
        problems = []
        if n_buffers != self.n_bindings:
            problems.append(f"{n_buffers} buffers bound, the shader declares {self.n_bindings} "
                            f"(bindings 0..{self.n_bindings - 1})")
        if 4 * n_push_words != self.push_size:
            problems.append(f"{4 * n_push_words} bytes of push constants given, the shader's "
                            f"block is {self.push_size} bytes")
        expected = tuple(range(n_spec))
        if self.spec_ids and self.spec_ids != expected:
            problems.append(f"{n_spec} specialisation constants given (ids 0..{n_spec - 1}), the "
                            f"shader declares ids {list(self.spec_ids)}")
        elif not self.spec_ids and n_spec:
            problems.append(f"{n_spec} specialisation constants given, the shader declares none")
        if problems:
            raise BackendError(f"shader {self.name!r} does not match its dispatch: "
                               + "; ".join(problems))


def _spirv_dir():
    return resources.files("grilly_kv") / "spirv"


@lru_cache(maxsize=None)
def shader_interface(name: str) -> ShaderInterface:
    """The reflected interface of ``shaders/NAME.glsl``; BackendError if the JSON is missing,
    stale or describes a layout kp cannot bind (descriptor sets other than 0, gaps)."""
    from .pipelines import load_spirv

    spirv = load_spirv(name)   # no .spv: that error first
    path = _spirv_dir() / f"{name}.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackendError(f"no reflection for shader {name!r} ({path}): run "
                           "`python3 build.py --shaders`") from None
    except ValueError as exc:
        raise BackendError(f"damaged reflection file {path}: {exc}") from exc
    if info.get("version") != REFLECTION_VERSION:
        raise BackendError(f"{path} has reflection version {info.get('version')}, expected "
                           f"{REFLECTION_VERSION}: run `python3 build.py --shaders`")
    if info.get("spirv_sha256") != hashlib.sha256(spirv).hexdigest():
        raise BackendError(f"{path} describes another build of {name}.spv: run "
                           "`python3 build.py --shaders`")
    bindings = info["bindings"]
    numbers = sorted(b["binding"] for b in bindings)
    if any(b["set"] != 0 for b in bindings) or numbers != list(range(len(numbers))):
        raise BackendError(f"shader {name!r} declares bindings {numbers} in sets "
                           f"{sorted({b['set'] for b in bindings})}; kp binds set 0, 0..n-1")
    push = info.get("push_constants") or {"size": 0, "offsets": []}
    return ShaderInterface(
        name=name, n_bindings=len(numbers),
        writable=frozenset(b["binding"] for b in bindings if not b["non_writable"]),
        readable=frozenset(b["binding"] for b in bindings if not b["non_readable"]),
        push_size=int(push["size"]), push_offsets=tuple(push["offsets"]),
        spec_ids=tuple(info["spec_ids"]), spec_types=tuple(info.get("spec_types", ())))
