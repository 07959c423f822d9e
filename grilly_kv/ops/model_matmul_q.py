"""Token rows times a GGUF weight matrix kept quantised on the device (dequantised in registers),
with optional fused RMSNorm or SwiGLU input, RoPE epilogue (qkv) and residual add.

Shader: ``shaders/model-matmul-q.glsl``; reference:
:func:`grilly_kv.reference.model_matmul_q.model_matmul_q_ref`. Serves the GEMV of decode (T = 1)
and the tiled GEMM of prefill (each weight chunk dequantised once per tile of up to
:data:`MAX_TT` tokens).

Formats: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K. The device holds the
file's raw tensor bytes unchanged (uploaded as uint32 words; each tensor starts at a 16-byte
boundary of its buffer, the only padding), and the shader addresses bytes inside the words, so
blocks of 18, 20, 22, 34 or 210 bytes need no repacking.

Decode mat-vecs have three lane layouts: "rows" (each lane dequantises whole 32-element chunks,
lane l taking chunks l, l + lanes, ...; also the CPU layout and the prefill tiles'), "coalesced"
(the specialisation constant COAL: 8 neighbouring lanes share a chunk, a vec4 each, so a
subgroup's loads cover neighbouring bytes): ``coalesced=`` of :func:`record_matmul_q`, default
:func:`default_coalesced`; and "stream" (``shaders/model-matmul-q-stream.glsl``, ``stream=``, plan
:func:`stream_plan`: no shared-memory staging and no barrier, X' read from global memory once for
``rows_per_lane`` rows, whole 16-byte loads of consecutive pieces of a row, one reduction at the
end; T = 1 without activation rounding only, see :func:`uses_stream`). A model picks the layout
with ``$GRILLY_KV_MATVEC`` (:func:`matvec_choice`).

Also here: :func:`record_embed_q` (``shaders/model-matmul-q-embed.glsl``: a step's token rows
dequantised from the same table a tied output head reads) and :func:`subgroup_size` (the device's,
probed once by ``shaders/model-matmul-q-probe.glsl`` where kp's property dict lacks it), which
:func:`plan` sizes the lanes per row by.

Typical use (a model)::

    qw = QuantWeights(dev, {"blk.0.qkv": (raw, qtype, (N, K)), ...})   # raw: (N, row_bytes) uint8
    record_matmul_q(rec, qw, "blk.0.qkv", x_buf, y_buf, T=T, mode="rmsnorm", g=norms, g_off=...)
    ...
    qw.close()
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

from ..backend import Buffer, PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.model_matmul_q import (FORMAT_BY_ID, FORMATS, dequantize_rows, model_matmul_q_ref,
                                        raw_is_finite, row_bytes)
from ..validation import check_array, check_choice, check_index_array, check_int, check_real
from .model_matmul import check_norm_and_y

SHADER = "model-matmul-q"
MODES = {"plain": 0, "rmsnorm": 1, "swiglu": 2}
# the shader's ACTQ: how the staged activations are rounded (ggml-cpu's vec_dot_type conversions,
# grilly_kv.reference.ggml_rounding); None: not at all
ACT_ROUNDINGS = {None: 0, "Q8_0": 1, "Q8_1": 2, "Q8_K": 3, "F16": 4, "BF16": 5}
WEIGHT_FORMATS = ("native", "f16", "f32")
MAX_TT = 8           # tokens per workgroup (prefill tile)
MAX_SG = 64          # the shader's per-subgroup arrays
WG_GPU = 256         # invocations per workgroup on GPUs
WG_CPU = 64          # CPU devices: one row per invocation
TENSOR_ALIGN = 16    # bytes: each tensor starts at a multiple of this in its buffer
PUSH = PushLayout("N", "T", "w_off", "x_off", "x_stride", "g_off", "y_off", "y_stride", "rope_rows", "eps:f")
PROBE_SHADER = "model-matmul-q-probe"
_probed: dict[int, int] = {}
_probe_lock = threading.Lock()


def subgroup_size(device) -> int:
    """The device's subgroup size: ``properties["subgroup_size"]`` when the backend reports it,
    else what a one-workgroup probe shader reads from ``gl_SubgroupSize`` (once per device)."""
    props = device.properties
    if props.get("subgroup_size"):
        return int(props["subgroup_size"])
    with _probe_lock:
        if id(device) not in _probed:
            buf = Buffer(device, 4, np.uint32)
            try:
                Recording(device, timestamps=False).dispatch(PROBE_SHADER, [buf], groups=(1,)).download(buf).run()
                _probed[id(device)] = int(buf.read(1)[0])
            finally:
                buf.release()
        return _probed[id(device)]


COAL_LANES = 8       # lanes that share one chunk in the coalesced layout (a vec4 each)
MATVEC_ENV = "GRILLY_KV_MATVEC"
MATVECS = ("default", "rows", "coalesced", "stream")
STREAM_SHADER = "model-matmul-q-stream"
# formats the stream layout reads in 16-byte pieces (uvec4 loads; F16 / BF16 only with K % 8 == 0;
# the blocks of 18, 20, 34 and 210 bytes through two aligned uvec4s and a shift); Q5_0 and Q5_1
# in 32-element chunks of 32-bit loads
STREAM_PIECE_FORMATS = ("F32", "F16", "BF16", "Q4_K", "Q5_K", "Q4_0", "Q4_1", "Q8_0", "Q6_K")
STREAM_ELEMS = {"F32": 4, "F16": 8, "BF16": 8, "Q8_0": 16}   # elements per piece (others 32)
STREAM_UNROLL = 4     # default units per lane per pass of the stream layout (fewer for short rows) ...
STREAM_UNROLL_32 = 2  # ... and for units of 32 elements (K-quant pieces, chunks: 8 vec4s of X' each)
MAX_ROWS_PER_LANE = 8
STREAM_FLOAT_FORMATS = ("F32", "F16", "BF16")   # default rows_per_lane 1; the block formats 2
PREFILL_LANES = 4     # GPU lanes per row for T > 1: a workgroup's rows share its staged X' slab
DEEP_ROW_CHUNKS = 32  # decode rows of more 32-element chunks than this issue 4 chunks per lane


def unroll_for(device, T: int, K: int) -> int:
    """Chunks each lane loads together: 1 on CPU devices and for prefill tiles (a tile already
    reuses each chunk for its tokens); for decode (T = 1) 4 when a row holds more than
    :data:`DEEP_ROW_CHUNKS` chunks (more bytes in flight per lane), else 1 (more lanes instead).
    Chosen from the H200 lanes x unroll sweeps in ``benchmarks/results/quant_decode_*.json``."""
    if device.properties.get("device_type") == "Cpu" or T > 1:
        return 1
    return 4 if -(-K // 32) > DEEP_ROW_CHUNKS else 1


def lanes_per_row(device, T: int, K: int) -> int:
    """Invocations per output row: 1 on CPU devices (a row per invocation); on GPUs
    :data:`PREFILL_LANES` for prefill tiles (T > 1), and for decode enough lanes that each takes
    :func:`unroll_for` chunks of the row (32 elements each) per pass, a power of 2 of at most the
    subgroup size (and 64)."""
    if device.properties.get("device_type") == "Cpu":
        return 1
    if T > 1:
        return min(PREFILL_LANES, subgroup_size(device))
    per_lane = -(-K // (32 * unroll_for(device, T, K)))
    return min(subgroup_size(device), 64, 1 << max(per_lane - 1, 0).bit_length())


def default_coalesced(device, T: int) -> bool:
    """Whether :func:`record_matmul_q` uses the coalesced layout when not told: not yet (False) on
    any device, until the H200 measurements (``benchmarks/bench_quant_decode.py --coalesced``)
    show where it wins."""
    return False


# formats whose one-token calls take the stream layout by default on GPUs: where it won on the H200
# (benchmarks/results/s5_llama1b.json: Q4_K mat-vecs 1082 vs 1433 us per token); it lost for Q4_1
# and Q8_0 (s5_smollm2.json), and the other formats are unmeasured
STREAM_DEFAULT_FORMATS = ("Q4_K",)


def default_stream(device, qtype: int, T: int, act_rounding: str | None) -> bool:
    """Whether :func:`record_matmul_q` uses the stream layout when not told: on GPU devices, for
    one-token calls without activation rounding of a format in :data:`STREAM_DEFAULT_FORMATS`."""
    return (device.properties.get("device_type") != "Cpu" and uses_stream(T, act_rounding)
            and FORMAT_BY_ID[qtype] in STREAM_DEFAULT_FORMATS)


def matvec_choice(value: str | None = None) -> str:
    """The decode mat-vec layout a model uses: ``value``, else ``$GRILLY_KV_MATVEC``, else
    "default" (:func:`default_coalesced` and :func:`default_stream` decide); "rows", "coalesced" or "stream" force one
    layout for the model's T = 1 calls (prefill tiles always use "rows"; "stream" falls back to
    "rows" where :func:`uses_stream` says so)."""
    value = value if value is not None else (os.environ.get(MATVEC_ENV) or "default")
    if value not in MATVECS:
        raise ValueError(f"matvec (or ${MATVEC_ENV}) must be one of {', '.join(MATVECS)}, got {value!r}")
    return value


def coalesced_lanes(device) -> int:
    """Coalesced layout: lanes per row by default, the subgroup (``LANES / 8`` chunks per pass),
    at least :data:`COAL_LANES` and at most 64."""
    return min(MAX_SG, max(COAL_LANES, subgroup_size(device)))


def coalesced_unroll(K: int) -> int:
    """Coalesced layout: chunks each 8-lane group loads together by default, 4 for rows of more
    than :data:`DEEP_ROW_CHUNKS` chunks, else 1 (as :func:`unroll_for` on GPUs)."""
    return 4 if -(-K // 32) > DEEP_ROW_CHUNKS else 1


def plan(device, T: int, K: int, *, lanes: int | None = None, tokens: int | None = None,
         unroll: int | None = None, rope: bool = False, coalesced: bool = False,
         rows: int | None = None) -> tuple[int, int, int, int, int]:
    """``(workgroup size, rows per workgroup, tokens per workgroup, slab width, unroll)`` for a call.

    The slab (elements of X' staged in shared memory at a time) is the whole row when it fits;
    otherwise, with default lanes, a multiple of one pass of the row's lanes (32 * lanes * unroll
    elements; 4 * lanes * unroll when ``coalesced``) so no pass runs part-empty, halving the
    lanes until one pass fits. ``coalesced``: lanes a multiple of :data:`COAL_LANES` (defaults
    :func:`coalesced_lanes`, :func:`coalesced_unroll`), on any device type. ``rows``: rows per
    workgroup (a power of 2; the workgroup is ``rows * lanes`` invocations, at most 1024 and
    :data:`MAX_SG` subgroups); default :data:`WG_GPU` invocations (:data:`WG_CPU` at one lane)."""
    chosen = lanes is None
    min_lanes = COAL_LANES if coalesced else 1
    lanes = lanes or (coalesced_lanes(device) if coalesced else lanes_per_row(device, T, K))
    if lanes < min_lanes or lanes & (lanes - 1) or lanes > MAX_SG:
        raise ValueError(f"lanes must be a power of 2 in {min_lanes}..{MAX_SG}"
                         f"{' (coalesced)' if coalesced else ''}, got {lanes}")
    unroll = unroll or (coalesced_unroll(K) if coalesced else unroll_for(device, T, K))
    if not 1 <= unroll <= 8:
        raise ValueError(f"unroll must be in 1..8, got {unroll}")
    wg = WG_CPU if lanes == 1 else max(WG_GPU, lanes)
    if rows is not None:
        wg = check_int("rows", rows, minimum=1) * lanes
        if rows & (rows - 1) or wg > 1024 or wg > MAX_SG * subgroup_size(device):
            raise ValueError(f"rows must be a power of 2 with rows * lanes <= 1024 and <= {MAX_SG} subgroups, "
                             f"got rows {rows}, lanes {lanes}")
    tt = min(tokens or MAX_TT, MAX_TT, T)
    smem = int(device.properties.get("max_compute_shared_memory_size", 32768))
    k32 = -(-K // 32) * 32
    while True:
        rows = wg // lanes
        fit = (smem - 2 * tt * MAX_SG * 4 - (tt * rows * 4 if rope else 4) - 64) // (4 * tt) // 32 * 32
        one_pass = (32 // COAL_LANES if coalesced else 32) * lanes * unroll
        if fit >= k32 or not chosen or lanes <= max(2, min_lanes) or fit >= one_pass:
            break
        lanes //= 2
    ks = k32 if fit >= k32 else (fit // one_pass * one_pass if chosen and fit >= one_pass else fit)
    if ks < 32:
        raise ValueError(f"{tt} tokens per workgroup leave no room for a 32-element slab in "
                         f"{device.name}'s shared memory")
    if rope and rows % 2:
        raise ValueError("the RoPE epilogue needs an even number of rows per workgroup")
    return wg, rows, tt, ks, unroll


def uses_stream(T: int, act_rounding: str | None) -> bool:
    """Whether a call asked for the stream layout gets it: only decode (T = 1) without activation
    rounding (``act_rounding`` None). The rule of the explicit fallback: T > 1 (prefill tiles) and
    ggml numerics (rounded, staged X') run the "rows" layout of ``model-matmul-q`` instead."""
    return T == 1 and act_rounding is None


def stream_units(qtype: int, K: int, offset: int, buffer_bytes: int = 0) -> tuple[int, int]:
    """``(PIECE, units per row)`` of the stream layout: 16-byte pieces (PIECE 1) for
    :data:`STREAM_PIECE_FORMATS` when the tensor starts at a multiple of 16 bytes (``offset``),
    its buffer is a multiple of 16 bytes long (``buffer_bytes``) and, for F32 / F16 / BF16, the
    rows are multiples of 16 bytes; else 32-element chunks (PIECE 0)."""
    fmt = FORMAT_BY_ID[qtype]
    floats = fmt in ("F32", "F16", "BF16")
    if (fmt in STREAM_PIECE_FORMATS and offset % 16 == 0 and buffer_bytes % 16 == 0
            and (not floats or row_bytes(qtype, K) % 16 == 0)):
        return 1, K // STREAM_ELEMS.get(fmt, 32)
    return 0, -(-K // 32)


def stream_x_fits(device, K: int, rows_per_lane: int = MAX_ROWS_PER_LANE, wg: int = 1024) -> bool:
    """Whether the stream layout can stage a row of X' (``x_shared``, 4 K bytes) next to its other
    shared arrays in the device's shared memory."""
    smem = int(device.properties.get("max_compute_shared_memory_size", 32768))
    return 4 * K + 4 * (MAX_SG * (rows_per_lane + 2) + wg) <= smem


def stream_plan(device, qtype: int, K: int, *, offset: int = 0, buffer_bytes: int = 0, lanes: int | None = None,
                unroll: int | None = None, rows: int | None = None, rows_per_lane: int | None = None,
                rope: bool = False, x_shared: bool | None = None) -> tuple[int, int, int, int, int, int]:
    """``(workgroup size, lanes per row group, rows per lane, unroll, PIECE, XS)`` of a stream call
    on a tensor at byte ``offset`` of a buffer of ``buffer_bytes`` (:func:`stream_units`).

    Units (:func:`stream_units`) of a row are taken by ``lanes`` consecutive lanes, ``unroll`` per
    lane per pass. Defaults on GPUs: unroll :data:`STREAM_UNROLL` (:data:`STREAM_UNROLL_32` for
    units of 32 elements, whose X' takes 8 vec4 registers; fewer when the row holds fewer than that
    many units per subgroup lane), lanes the fewest powers of 2 that cover the row in one
    pass, at most the subgroup size; on CPU devices one lane and unroll 1. ``rows_per_lane``
    (default 1 for :data:`STREAM_FLOAT_FORMATS`, whose weights outweigh their X', 2 for the block
    formats; at most :data:`MAX_ROWS_PER_LANE`): rows each lane computes with one load of X'.
    ``x_shared`` (None: False here; :func:`record_matmul_q` stages by default for "swiglu" where
    it fits): stage the whole row of X' in shared memory once per workgroup (XS = 1; 4 K bytes,
    ValueError when the device's shared memory is smaller).
    ``rows``: rows per workgroup (a multiple of rows_per_lane; default :data:`WG_GPU` invocations,
    :data:`WG_CPU` at one lane); the workgroup is ``rows / rows_per_lane * lanes`` invocations, at
    most 1024 and :data:`MAX_SG` subgroups; RoPE needs an even number of rows per workgroup."""
    piece, units = stream_units(qtype, K, offset, buffer_bytes)
    cpu = device.properties.get("device_type") == "Cpu"
    sg = subgroup_size(device)
    if rows_per_lane is None:
        rows_per_lane = 1 if FORMAT_BY_ID[qtype] in STREAM_FLOAT_FORMATS else 2
    nr = check_int("rows_per_lane", rows_per_lane, minimum=1)
    if nr > MAX_ROWS_PER_LANE:
        raise ValueError(f"rows_per_lane must be in 1..{MAX_ROWS_PER_LANE}, got {nr}")
    if unroll is None:
        most = STREAM_UNROLL_32 if units <= -(-K // 32) else STREAM_UNROLL
        unroll = 1 if cpu else max(1, min(most, 1 << max(units // sg, 1).bit_length() - 1))
    if not 1 <= unroll <= 8:
        raise ValueError(f"unroll must be in 1..8, got {unroll}")
    if lanes is None:
        lanes = 1 if cpu else min(sg, MAX_SG, 1 << max(-(-units // unroll) - 1, 0).bit_length())
    if lanes < 1 or lanes & (lanes - 1) or lanes > MAX_SG:
        raise ValueError(f"lanes must be a power of 2 in 1..{MAX_SG}, got {lanes}")
    if rows is None:
        wg = WG_CPU if lanes == 1 else max(WG_GPU, lanes)
    else:
        rows = check_int("rows", rows, minimum=1)
        if rows % nr or (rows // nr) & (rows // nr - 1):
            raise ValueError(f"rows must be rows_per_lane ({nr}) times a power of 2, got {rows}")
        wg = rows // nr * lanes
    if wg > 1024 or wg > MAX_SG * sg:
        raise ValueError(f"the workgroup ({wg} invocations: rows {rows}, rows_per_lane {nr}, lanes {lanes}) "
                         f"exceeds 1024 or {MAX_SG} subgroups")
    if rope and (wg // lanes * nr) % 2:
        raise ValueError("the RoPE epilogue needs an even number of rows per workgroup")
    xs = bool(x_shared)
    if xs and not stream_x_fits(device, K, nr, wg):
        smem = int(device.properties.get("max_compute_shared_memory_size", 32768))
        raise ValueError(f"x_shared: a row of X' ({4 * K} bytes) does not fit {device.name}'s {smem} bytes of "
                         "shared memory")
    return wg, lanes, nr, unroll, piece, int(xs)


@dataclass(frozen=True)
class WeightEntry:
    """Where one matrix lives: ``buffer`` (raw bytes as uint32 words) from byte ``offset``;
    ``qtype`` the ggml type id, ``(N, K)`` its shape (rows out, elements in)."""

    buffer: Buffer
    offset: int
    qtype: int
    N: int
    K: int

    @property
    def nbytes(self) -> int:
        return self.N * row_bytes(self.qtype, self.K)


def _check_tensor(name: str, raw, qtype: int, shape, *, finite: bool = True) -> np.ndarray:
    if not isinstance(raw, np.ndarray) or isinstance(raw, np.ma.MaskedArray):
        raise TypeError(f"tensor {name}: the GGUF rows must be a plain numpy array, got {type(raw).__name__}")
    qtype = check_int("qtype", qtype, minimum=0)
    if qtype not in FORMAT_BY_ID:
        raise ValueError(f"tensor {name}: ggml type {qtype} is not supported (supported: {sorted(FORMATS)})")
    if len(shape) != 2:
        raise ValueError(f"tensor {name}: a weight matrix must be 2-D (N, K), got shape {shape}")
    N, K = (int(s) for s in shape)
    _, blk, _ = FORMATS[FORMAT_BY_ID[qtype]]
    if K % max(blk, 4) or N < 1:
        raise ValueError(f"tensor {name}: K = {K} must be a positive multiple of {max(blk, 4)} for "
                         f"{FORMAT_BY_ID[qtype]} (N = {N})")
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raw = np.ascontiguousarray(raw).view(np.uint8)
    raw = raw.reshape(N, -1) if raw.size else raw
    if raw.shape != (N, row_bytes(qtype, K)):
        raise ValueError(f"tensor {name}: {raw.size} bytes do not hold ({N}, {K}) of {FORMAT_BY_ID[qtype]} "
                         f"({N} x {row_bytes(qtype, K)} bytes)")
    if finite and not raw_is_finite(raw, qtype):
        raise ValueError(f"tensor {name} ({FORMAT_BY_ID[qtype]}) holds NaN or Inf values (a weight or a "
                         "block's float16 scale)")
    return raw


def convert_rows(raw: np.ndarray, qtype: int, K: int, weight_format: str) -> tuple[np.ndarray, int]:
    """``(raw, qtype)`` as stored for ``weight_format``: unchanged ("native"), or dequantised to
    F16 ("f16", raises on float16 overflow) or F32 ("f32") rows."""
    if weight_format == "native":
        return raw, qtype
    w = dequantize_rows(raw, qtype, K)
    if weight_format == "f32":
        return w.view(np.uint8).reshape(w.shape[0], -1), 0
    if np.abs(w).max(initial=0.0) > 65504.0:
        raise ValueError("weights exceed the float16 range; use weight_format='f32' or 'native'")
    return w.astype(np.float16).view(np.uint8).reshape(w.shape[0], -1), 1


def concat_rows(*tensors: tuple) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Stack ``(raw, qtype, (N_i, K))`` tensors of one type and width along rows (fused qkv,
    gate/up); raises when their types or widths differ (dispatch them separately then)."""
    qtypes = {int(t[1]) for t in tensors}
    widths = {int(t[2][1]) for t in tensors}
    if len(qtypes) != 1 or len(widths) != 1:
        raise ValueError(f"concat_rows needs one type and one K, got types {sorted(qtypes)}, K {sorted(widths)}")
    raws = [_check_tensor(f"part {i}", *t, finite=False) for i, t in enumerate(tensors)]   # QuantWeights scans the stack
    N = sum(int(t[2][0]) for t in tensors)
    return np.concatenate(raws), qtypes.pop(), (N, widths.pop())


class QuantWeights:
    """Weight matrices on a Vulkan device as GGUF blocks, packed into as few buffers as the
    device's maxStorageBufferRange allows.

    Args:
        device: a Vulkan device.
        tensors: ``{name: (raw, qtype, (N, K))}``, raw the file's ``(N, row_bytes)`` uint8 rows
            (as :func:`grilly_kv.models.smollm2.weights.read_gguf_raw` returns them); insertion
            order is buffer order.
        weight_format: "native" (the file's own types), "f16" or "f32" (dequantised at load).

    Attributes:
        weight_bytes: bytes of device memory the weights occupy (all buffers).
        file_bytes: the tensors' bytes as given (the file's, for "native").
    """

    def __init__(self, device: DeviceLike, tensors: dict, *, weight_format: str = "native"):
        check_choice("weight_format", weight_format, WEIGHT_FORMATS)
        dev = get_device(device)
        if dev.is_cpu:
            raise ValueError("QuantWeights needs a Vulkan device")
        if not tensors:
            raise ValueError("tensors is empty")
        self.device = dev
        self.weight_format = weight_format
        self._lock = threading.Lock()
        staged = {}
        self.file_bytes = 0
        for name, (raw, qtype, shape) in tensors.items():
            raw = _check_tensor(name, raw, int(qtype), shape)     # once: it scans for NaN/Inf
            self.file_bytes += raw.nbytes
            staged[name] = convert_rows(raw, int(qtype), int(shape[1]), weight_format) + (tuple(int(s) for s in shape),)
        self.buffers: list[Buffer] = []
        self.entries: dict[str, WeightEntry] = {}
        self._upload(staged)
        self.weight_bytes = sum(b.nbytes for b in self.buffers)

    def _upload(self, staged: dict) -> None:
        limit = int(self.device.properties.get("max_storage_buffer_range", 2**32 - 1))
        limit = min(limit, 2**32 - 4) // TENSOR_ALIGN * TENSOR_ALIGN
        packs: list[list[str]] = [[]]
        size = 0
        for name, (raw, _, _) in staged.items():
            nbytes = -(-raw.nbytes // TENSOR_ALIGN) * TENSOR_ALIGN
            if nbytes > limit:
                raise ValueError(f"tensor {name} ({raw.nbytes} bytes) exceeds {self.device.name}'s "
                                 f"maxStorageBufferRange ({limit} bytes)")
            if packs[-1] and size + nbytes > limit:
                packs.append([])
                size = 0
            packs[-1].append(name)
            size += nbytes
        for pack in packs:
            offs, off = [], 0
            for name in pack:
                offs.append(off)
                off += -(-staged[name][0].nbytes // TENSOR_ALIGN) * TENSOR_ALIGN
            host = np.zeros(off, np.uint8)
            buf = Buffer(self.device, off // 4, np.uint32)
            self.buffers.append(buf)
            for name, o in zip(pack, offs):
                raw, qtype, (N, K) = staged[name]
                host[o:o + raw.nbytes] = raw.reshape(-1)
                self.entries[name] = WeightEntry(buf, o, qtype, N, K)
            buf.write(host.view(np.uint32))
            buf.upload_now()

    def __getitem__(self, name: str) -> WeightEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise KeyError(f"no weight tensor {name!r} (have {len(self.entries)}: "
                           f"{', '.join(list(self.entries)[:4])}, ...)") from None

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def close(self) -> None:
        """Free the device memory (recordings that bind these buffers must be dropped first)."""
        with self._lock:
            for b in self.buffers:
                if not b.released:
                    b.release()
            self.buffers = []
            self.entries = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def record_matmul_q(rec: Recording, weights: "QuantWeights | WeightEntry", name: str | None, x: Buffer,
                    y: Buffer, *, T: int, mode: str = "plain", g: Buffer | None = None, g_off: int = 0,
                    accumulate: bool = False, x_off: int = 0, x_stride: int | None = None,
                    y_off: int = 0, y_stride: int | None = None, eps: float = 1e-5,
                    rope: tuple | None = None, lanes: int | None = None,
                    tokens: int | None = None, unroll: int | None = None,
                    coalesced: bool | None = None, rows: int | None = None,
                    act_rounding: str | None = None, stream: bool | None = None,
                    rows_per_lane: int | None = None, x_shared: bool | None = None) -> Recording:
    """Record ``y[t, y_off + n] (+)= x'[t] . W[n]`` for t < T, n < N (W = ``weights[name]``).

    Args:
        x: float32 token rows: token t starts at float ``x_off + t * x_stride`` (default stride K,
            2K for "swiglu"); offsets and strides are multiples of 4 floats.
        y: float32 output: token t, row n at ``y_off + t * y_stride + n`` (default stride N).
        mode: "plain", "rmsnorm" (``g`` holds the gain from float ``g_off``) or "swiglu".
        accumulate: add to y (residual) instead of overwriting it.
        rope: ``(step, table, head_dim, rope_rows)``: rows < rope_rows are q/k heads in GGUF's
            interleaved-pair order, rotated at positions ``step[0] + t`` with a
            :func:`~grilly_kv.reference.model_rope.rope_table` buffer and written in rotate-half
            order (rope_rows a multiple of head_dim, itself even).
        lanes, tokens, unroll, rows: invocations per row, tokens per workgroup, chunks each lane
            loads together (with ``coalesced``: each 8-lane group), rows per workgroup (defaults:
            :func:`plan`).
        coalesced: the coalesced lane layout (8 lanes per chunk, a vec4 each; any T, meant for
            T = 1); None: :func:`default_coalesced`. Rounds with ``act_rounding`` as the other layout.
        act_rounding: round x' as ggml-cpu converts activations (a key of :data:`ACT_ROUNDINGS`:
            the weight type's ``VEC_DOT_TYPE`` for llama.cpp's numerics; "Q8_1" only with Q4_1 /
            Q5_1 weights, whose block minima meet its block sums; "Q8_K" needs K a multiple of 256).
        stream: the stream layout (``shaders/model-matmul-q-stream.glsl``, :func:`stream_plan`:
            ``lanes``, ``unroll``, ``rows`` and ``rows_per_lane`` are then its knobs) where
            :func:`uses_stream` allows it (T = 1, no act_rounding), else the "rows" layout (the
            documented fallback; ``coalesced`` is then ignored). None: :func:`default_stream`
            unless ``coalesced`` is given.
        rows_per_lane, x_shared: stream layout only: rows each lane computes with one load of X';
            stage the row of X' in shared memory once per workgroup (:func:`stream_plan`; None:
            for mode "swiglu" where :func:`stream_x_fits`, whose X' costs two loads and an exp
            per element, else not).
    """
    e = weights if isinstance(weights, WeightEntry) else weights[name]
    check_choice("mode", mode, MODES)
    actq = check_act_rounding(act_rounding, e.qtype, e.K)
    N, K = e.N, e.K
    xk = 2 * K if mode == "swiglu" else K
    x_stride = xk if x_stride is None else x_stride
    y_stride = N if y_stride is None else y_stride
    for nm, v in (("x_off", x_off), ("x_stride", x_stride), ("g_off", g_off)):
        if v % 4 or v < 0:
            raise ValueError(f"{nm} must be a non-negative multiple of 4 floats, got {v}")
    if x_stride < xk or y_stride < N or T < 1:
        raise ValueError(f"x_stride >= {xk}, y_stride >= {N} and T >= 1 needed, got {x_stride}, {y_stride}, {T}")
    if mode == "rmsnorm" and g is None:
        raise ValueError("mode 'rmsnorm' needs the gain buffer g")
    step = table = x
    head_dim = rope_rows = 0
    if rope is not None:
        step, table, head_dim, rope_rows = rope
        if head_dim % 2 or head_dim < 2 or rope_rows % head_dim or not 0 < rope_rows <= N or accumulate:
            raise ValueError(f"rope needs an even head_dim dividing rope_rows <= N = {N} and no accumulate, "
                             f"got head_dim {head_dim}, rope_rows {rope_rows}, accumulate {accumulate}")
    push = PUSH.pack(N=N, T=T, w_off=e.offset, x_off=x_off // 4, x_stride=x_stride // 4, g_off=g_off // 4,
                     y_off=y_off, y_stride=y_stride, rope_rows=rope_rows, eps=eps)
    if stream is None:
        stream = coalesced is None and default_stream(rec.device, e.qtype, T, act_rounding)
    if stream and uses_stream(T, act_rounding):
        if x_shared is None:
            x_shared = mode == "swiglu" and stream_x_fits(rec.device, K)
        wg, ln, nr, unr, piece, xs = stream_plan(rec.device, e.qtype, K, offset=e.offset,
                                                 buffer_bytes=e.buffer.n_words * 4, lanes=lanes,
                                                 unroll=unroll, rows=rows, rows_per_lane=rows_per_lane,
                                                 rope=rope is not None, x_shared=x_shared)
        spec = (wg, e.qtype, K, ln, nr, MODES[mode], int(accumulate), int(rope is not None), head_dim or 2, unr,
                piece, xs)      # constant ids 0..11 in the stream shader's order
        return rec.dispatch(STREAM_SHADER, [e.buffer, x, g or x, y, step, table], groups=(-(-N // (wg // ln * nr)),),
                            push=push, spec=spec, label=f"{SHADER}:{FORMAT_BY_ID[e.qtype]}")
    if stream:
        coalesced = False       # the fallback (uses_stream): the rows layout at the plan's defaults
        lanes = unroll = rows = None
    coal = default_coalesced(rec.device, T) if coalesced is None else bool(coalesced)
    wg, rows, tt, ks, unr = plan(rec.device, T, K, lanes=lanes, tokens=tokens, unroll=unroll,
                                 rope=rope is not None, coalesced=coal, rows=rows)
    xsh = int(not coal and rows == wg and subgroup_size(rec.device) % 8 == 0)   # a row per invocation: shuffled X'
    if actq == ACT_ROUNDINGS["Q8_K"] and ks % 256:     # Q8_K blocks (256) must not straddle slabs
        if ks < 256:
            raise ValueError(f"act_rounding 'Q8_K' needs a slab of 256 elements; {rec.device.name}'s shared "
                             f"memory leaves {ks} for {tt} tokens per workgroup (pass tokens=)")
        ks = ks // 256 * 256
    spec = (wg, e.qtype, K, rows, tt, MODES[mode], int(accumulate), ks, int(rope is not None), head_dim or 2, unr,
            xsh, int(coal), actq)       # constant ids 0..13 in the shader's order (COAL 12, ACTQ 13)
    return rec.dispatch(SHADER, [e.buffer, x, g or x, y, step, table], groups=(-(-N // rows), -(-T // tt)),
                        push=push, spec=spec, label=f"{SHADER}:{FORMAT_BY_ID[e.qtype]}")


def check_act_rounding(act_rounding: str | None, qtype: int, K: int) -> int:
    """The shader's ACTQ for ``act_rounding`` with weights of ggml type ``qtype`` and width ``K``;
    ValueError naming the argument when it is unknown or does not fit."""
    check_choice("act_rounding", act_rounding, ACT_ROUNDINGS)
    if act_rounding == "Q8_1" and FORMAT_BY_ID[qtype] not in ("Q4_1", "Q5_1"):
        raise ValueError(f"act_rounding 'Q8_1' needs Q4_1 or Q5_1 weights (their block minima), got "
                         f"{FORMAT_BY_ID[qtype]}")
    if act_rounding == "Q8_K" and K % 256:
        raise ValueError(f"act_rounding 'Q8_K' needs K a multiple of 256, got {K}")
    if act_rounding in ("Q8_0", "Q8_1") and K % 32:
        raise ValueError(f"act_rounding {act_rounding!r} needs K a multiple of 32, got {K}")
    return ACT_ROUNDINGS[act_rounding]


def model_matmul_q(x: np.ndarray, raw: np.ndarray, qtype: int, K: int, *, mode: str = "plain",
                   norm_weight=None, eps: float = 1e-5, y: np.ndarray | None = None,
                   rope: dict | None = None, lanes: int | None = None, tokens: int | None = None,
                   unroll: int | None = None, coalesced: bool | None = None, rows: int | None = None,
                   act_rounding: str | None = None, stream: bool | None = None,
                   rows_per_lane: int | None = None, x_shared: bool | None = None,
                   device: DeviceLike = None) -> np.ndarray:
    """``x' @ dequantize(raw).T`` (+ ``y``) on the device, weights uploaded as GGUF blocks.

    Args:
        x: ``(T, K)`` float32 token rows (``(T, 2K)`` for "swiglu": gate then up).
        raw, qtype, K: ``(N, row_bytes)`` uint8 GGUF rows of ggml type id ``qtype``.
        mode, norm_weight: as :func:`grilly_kv.ops.model_matmul.model_matmul`.
        y: optional ``(T, N)`` float32 residual.
        rope: ``dict(pos0, head_dim, rope_rows, theta)``: the RoPE epilogue.
        lanes, tokens, unroll, coalesced, rows, stream, rows_per_lane, x_shared: as :func:`record_matmul_q`.
        act_rounding: x' rounded as ggml-cpu's vec_dot_type conversion (see :func:`record_matmul_q`).

    Returns:
        ``(T, N)`` float32.
    """
    check_choice("mode", mode, MODES)
    qtype, K = check_int("qtype", qtype, minimum=0), check_int("K", K, minimum=1)
    if qtype not in FORMAT_BY_ID:
        raise ValueError(f"qtype {qtype} is not supported (supported: {sorted(FORMATS)})")
    N = np.asarray(raw).shape[0]
    raw = _check_tensor("raw", raw, qtype, (N, K))
    eps = check_real("eps", eps, minimum=0.0)
    xk = 2 * K if mode == "swiglu" else K
    check_array("x", x, ndim=2, dtypes=(np.float32,), shape_doc=f"(T, {xk})")
    if x.shape[1] != xk:
        raise ValueError(f"x must be (T, {xk}), got {x.shape}")
    T = x.shape[0]
    check_act_rounding(act_rounding, qtype, K)
    norm_weight = check_norm_and_y(mode, norm_weight, y, T=T, N=N, K=K)
    if rope is not None:
        hd, rr = int(rope["head_dim"]), int(rope["rope_rows"])
        if hd < 2 or hd % 2 or rr < hd or rr % hd or rr > N or int(rope["pos0"]) < 0 or y is not None:
            raise ValueError(f"rope needs an even head_dim dividing rope_rows <= N = {N}, pos0 >= 0 and no y, "
                             f"got {rope}")
    dev = get_device(device)
    if dev.is_cpu:
        return model_matmul_q_ref(x, raw, qtype, K, mode=mode, norm_weight=norm_weight, eps=eps, y=y, rope=rope,
                                  act_rounding=act_rounding)
    return _run_once(dev, x, raw, qtype, K, mode, norm_weight, eps, y, rope,
                     dict(lanes=lanes, tokens=tokens, unroll=unroll, coalesced=coalesced, rows=rows,
                          act_rounding=act_rounding, stream=stream, rows_per_lane=rows_per_lane,
                          x_shared=x_shared))


def _run_once(dev, x, raw, qtype, K, mode, norm_weight, eps, y, rope, tuning) -> np.ndarray:
    from ..reference.model_rope import rope_table
    from .step_words import fill_step, step_words

    T, N = x.shape[0], raw.shape[0]
    ws = dev.workspace(SHADER)
    wb = ws.scratch.get("w", -(-raw.nbytes // 16) * 4, np.uint32)   # whole 16-byte pieces (stream layout)
    xb = ws.scratch.get("x", x.size)
    gb = ws.scratch.get("g", K)
    yb = ws.scratch.get("y", T * N)
    words = np.zeros(wb.n_words * 4, np.uint8)
    words[:raw.nbytes] = raw.reshape(-1)
    wb.write(words.view(np.uint32))
    xb.write(x)
    if mode == "rmsnorm":
        gb.write(norm_weight)
    rec = Recording(dev).upload(wb, xb, gb)
    rope_args = None
    if rope is not None:
        sb = ws.scratch.get("step", step_words(T), np.uint32)
        tb = ws.scratch.get("table", (rope["pos0"] + T) * rope["head_dim"])
        sb.write(fill_step(np.zeros(sb.n_words, np.uint32), pos0=rope["pos0"], slots=np.zeros(T), n_scan=0))
        tb.write(rope_table(rope["pos0"] + T, rope["head_dim"], rope["theta"]))
        rec.upload(sb, tb)
        rope_args = (sb, tb, rope["head_dim"], rope["rope_rows"])
    if y is not None:
        yb.write(y)
        rec.upload(yb)
    entry = WeightEntry(wb, 0, qtype, N, K)
    record_matmul_q(rec, entry, None, xb, yb, T=T, mode=mode, g=gb, accumulate=y is not None, eps=eps,
                    rope=rope_args, **tuning)
    rec.download(yb).run()
    return yb.read(T * N).reshape(T, N)


EMBED_SHADER = "model-matmul-q-embed"
EMBED_LOCAL = 64
EMBED_PUSH = PushLayout("N", "w_off", "tok_at", "x_off", "x_stride")


def record_embed_q(rec: Recording, weights: "QuantWeights | WeightEntry", name: str | None, step: Buffer,
                   x: Buffer, *, T: int, max_chunk: int, x_off: int = 0, x_stride: int | None = None) -> Recording:
    """Record ``x[t] = dequantize(W[tokens[t]])`` for t < T, the token ids read from the step
    buffer (:mod:`grilly_kv.ops.step_words`, capacity ``max_chunk``). Offsets in floats (multiples
    of 4); default stride K. A tied output head and the embedding share one entry."""
    from .step_words import tokens_at

    e = weights if isinstance(weights, WeightEntry) else weights[name]
    x_stride = e.K if x_stride is None else x_stride
    if x_off % 4 or x_stride % 4 or x_stride < e.K or e.K % 4:
        raise ValueError(f"x_off and x_stride must be multiples of 4 floats, x_stride >= K = {e.K}")
    push = EMBED_PUSH.pack(N=e.N, w_off=e.offset, tok_at=tokens_at(max_chunk), x_off=x_off // 4,
                           x_stride=x_stride // 4)
    return rec.dispatch(EMBED_SHADER, [e.buffer, step, x], groups=(T,), spec=(EMBED_LOCAL, e.qtype, e.K),
                        push=push, label=f"{EMBED_SHADER}:{FORMAT_BY_ID[e.qtype]}")


def embed_q(raw: np.ndarray, qtype: int, K: int, tokens, *, device: DeviceLike = None) -> np.ndarray:
    """Rows ``dequantize(raw)[tokens]`` ``(T, K)`` float32 on the device (raw: ``(vocab, row_bytes)``
    uint8 GGUF rows of type ``qtype``)."""
    from ..reference.model_matmul_q import embed_q_ref
    from .step_words import fill_step, step_words

    qtype, K = check_int("qtype", qtype, minimum=0), check_int("K", K, minimum=1)
    if qtype not in FORMAT_BY_ID:
        raise ValueError(f"qtype {qtype} is not supported (supported: {sorted(FORMATS)})")
    V = np.asarray(raw).shape[0]
    raw = _check_tensor("raw", raw, qtype, (V, K))
    tokens = check_index_array("tokens", tokens, shape_doc="(T,)")
    if tokens.ndim != 1 or tokens.size == 0 or tokens.min() < 0 or tokens.max() >= V:
        raise ValueError(f"tokens must be a non-empty 1-D array of ids in [0, {V})")
    dev = get_device(device)
    if dev.is_cpu:
        return embed_q_ref(raw, qtype, K, tokens)
    T = tokens.size
    ws = dev.workspace(EMBED_SHADER)
    wb = ws.scratch.get("w", -(-raw.nbytes // 4), np.uint32)
    sb = ws.scratch.get("step", step_words(T), np.uint32)
    xb = ws.scratch.get("x", T * K)
    words = np.zeros(wb.n_words * 4, np.uint8)
    words[:raw.nbytes] = raw.reshape(-1)
    wb.write(words.view(np.uint32))
    max_chunk = (sb.n_words - 8) // 2
    sb.write(fill_step(np.zeros(sb.n_words, np.uint32), pos0=0, slots=np.zeros(T), tokens=tokens, n_scan=0))
    rec = Recording(dev).upload(wb, sb)
    record_embed_q(rec, WeightEntry(wb, 0, qtype, V, K), None, sb, xb, T=T, max_chunk=max_chunk)
    rec.download(xb).run()
    return xb.read(T * K).reshape(T, K)
