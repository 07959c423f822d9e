"""Device-resident buffers of 32-bit words, float16 packing, and reusable scratch space.

kp 0.9.0 has no 16-bit tensors, so float16 data is stored two values per uint32 word (element
``2i`` in the low half, ``2i+1`` in the high half, as GLSL's ``unpackHalf2x16`` reads it).
"""
from __future__ import annotations

import itertools
import weakref
from typing import TYPE_CHECKING

import numpy as np

from .errors import BackendError

if TYPE_CHECKING:
    from .device import VulkanDevice

WORD_DTYPES = (np.dtype(np.float32), np.dtype(np.uint32))
_uids = itertools.count(1)


def pack_f16(x: np.ndarray) -> np.ndarray:
    """Pack any float array to float16, two per uint32 word: shape ``(ceil(x.size/2),)``."""
    h = np.ascontiguousarray(x, dtype=np.float16).reshape(-1)
    if h.size % 2:
        h = np.concatenate([h, np.zeros(1, np.float16)])
    return h.view(np.uint32)


def unpack_f16(words: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_f16`: the first ``count`` float16 values, as float32."""
    return np.ascontiguousarray(words, dtype=np.uint32).view(np.float16)[:count].astype(np.float32)


class Buffer:
    """A device-local array of ``n_words`` 32-bit words (a kp tensor) with a host staging copy.

    ``write()`` fills the staging copy on the host; an upload recorded in a
    :class:`~grilly_kv.backend.sequence.Recording` (or :meth:`upload_now`) copies it to the
    device. ``read()`` returns the staging copy after a recorded download.

    Args:
        device: the Vulkan device.
        n_words: capacity in 32-bit words (>= 1).
        word_dtype: ``np.float32`` or ``np.uint32`` (float16 data uses uint32 words).
        host_visible: False for scratch that the host never reads or writes (no staging copy).
    """

    def __init__(self, device: "VulkanDevice", n_words: int, word_dtype=np.float32, *,
                 host_visible: bool = True):
        word_dtype = np.dtype(word_dtype)
        if word_dtype not in WORD_DTYPES:
            raise TypeError(f"word_dtype must be float32 or uint32, got {word_dtype}")
        if n_words < 1:
            raise ValueError(f"n_words must be >= 1, got {n_words}")
        if n_words * 4 >= 2**32:
            raise ValueError(f"a buffer must hold < 4 GiB (kp sizes are uint32), got {n_words} words")
        self.device = device
        self.n_words = int(n_words)
        self.word_dtype = word_dtype
        self.host_visible = host_visible
        self.uid = next(_uids)
        kp = device.kp
        kind = kp.TensorTypes.device if host_visible else kp.TensorTypes.storage
        try:
            with device._lock:   # kp's Manager is not thread-safe
                self.tensor = device.manager.tensor_t(np.zeros(self.n_words, word_dtype), kind)
        except Exception as exc:
            raise BackendError(f"allocating {self.n_words * 4} bytes on {device.name} failed: {exc}") from exc
        device._count_buffer(self.uid, self.nbytes)
        # freed by release(), or when this Buffer is garbage-collected (the finalizer holds the
        # kp tensor, never the Buffer); not at interpreter exit, where kp's Manager frees all
        self._finalizer = weakref.finalize(self, _free_tensor, device, self.uid, self.tensor)
        self._finalizer.atexit = False
        # raw 32-bit words: typed reads and writes go through views, never value conversion
        self._host = self.tensor.data().view(np.uint32) if host_visible else None

    @property
    def nbytes(self) -> int:
        return self.n_words * 4

    def _staging(self) -> np.ndarray:
        if self._host is None:
            if self.released:
                raise BackendError(f"{self!r} was released (its owner was closed)")
            raise BackendError("this buffer is device-only (host_visible=False)")
        return self._host

    def write(self, data: np.ndarray, offset_words: int = 0) -> None:
        """Copy ``data`` into the staging copy at ``offset_words``.

        float16 arrays are packed two per word; float32, int32 and uint32 arrays are copied bit
        for bit; anything else is first converted to the buffer's word dtype.
        """
        data = np.asarray(data)
        if data.dtype == np.float16:
            words = pack_f16(data)
        elif data.dtype in (np.float32, np.int32, np.uint32):
            words = np.ascontiguousarray(data).reshape(-1).view(np.uint32)
        else:
            words = np.ascontiguousarray(data, dtype=self.word_dtype).reshape(-1).view(np.uint32)
        end = offset_words + words.size
        if offset_words < 0 or end > self.n_words:
            raise ValueError(f"write of {words.size} words at {offset_words} overflows a buffer of "
                             f"{self.n_words} words")
        self._staging()[offset_words:end] = words

    def read(self, count: int | None = None, dtype=None, offset_words: int = 0) -> np.ndarray:
        """A copy of the staging data: ``count`` values of ``dtype`` (float16 is unpacked to float32)."""
        host = self._staging()
        dtype = np.dtype(dtype or self.word_dtype)
        if dtype == np.float16:
            count = (self.n_words - offset_words) * 2 if count is None else count
            return unpack_f16(host[offset_words:offset_words + (count + 1) // 2].view(np.uint32), count)
        count = self.n_words - offset_words if count is None else count
        return host[offset_words:offset_words + count].view(dtype).copy()

    def upload_now(self) -> None:
        """Copy the staging data to the device in a submission of its own."""
        from .sequence import Recording

        Recording(self.device).upload(self).run()

    def download_now(self) -> None:
        """Copy the device data to the staging copy in a submission of its own."""
        from .sequence import Recording

        Recording(self.device).download(self).run()

    def release(self) -> None:
        """Free the device memory now: forget the pipelines bound to this buffer and destroy its
        kp tensor (also done when the Buffer is garbage-collected). Recordings that bind it can
        no longer run (they raise BackendError); the Buffer is unusable after. Idempotent."""
        self._host = None
        self.tensor = None
        self._finalizer()

    @property
    def released(self) -> bool:
        """True once :meth:`release` freed the device memory."""
        return self.tensor is None

    def __repr__(self) -> str:
        return f"<Buffer #{self.uid} {self.n_words} x {self.word_dtype}>"


def _free_tensor(device: "VulkanDevice", uid: int, tensor) -> None:
    """Release one buffer's device memory and its pipelines (a finalizer: holds no Buffer)."""
    with device._lock:
        device.pipelines.forget_uid(uid)
        try:
            tensor.destroy()
        finally:
            device._uncount_buffer(uid)


class Scratch:
    """Named buffers that are reused across calls and grow geometrically when too small.

    An op keeps one Scratch; asking for a buffer of a size it already has returns the same
    Buffer, so the pipelines bound to it (cached by buffer identity) are reused too.
    """

    def __init__(self, device: "VulkanDevice"):
        self.device = device
        self._bufs: dict[str, Buffer] = {}

    def get(self, name: str, n_words: int, word_dtype=np.float32, *, host_visible=True) -> Buffer:
        """A buffer of at least ``n_words`` words; ``word_dtype`` is the default of ``read()``."""
        buf = self._bufs.get(name)
        n_words = max(int(n_words), 1)
        if buf is None or buf.n_words < n_words or buf.host_visible != host_visible:
            cap = n_words if buf is None else max(n_words, 2 * buf.n_words)
            # an outgrown buffer is freed once no recording binds it (its finalizer)
            buf = Buffer(self.device, cap, word_dtype, host_visible=host_visible)
            self._bufs[name] = buf
        buf.word_dtype = np.dtype(word_dtype)
        return buf

    def buffers(self) -> list[Buffer]:
        """The buffers held now."""
        return list(self._bufs.values())

    def release(self) -> None:
        """Free every buffer now (recordings that bind them must be dropped first)."""
        bufs, self._bufs = self._bufs, {}
        for buf in bufs.values():
            buf.release()
