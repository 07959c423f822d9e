"""Device-owning objects: ``close()``, ``with``, and one lock per object.

:class:`DeviceObject` is a mixin for the classes that own device memory (KV caches, modules,
models). A subclass gets:

* ``close()``: frees the device memory it owns now (every :class:`Buffer` reachable from its
  attributes, the scratch and recordings that bind them, and nested DeviceObjects); a later call
  that needs that memory raises :class:`BackendError` (the buffer "was released"), never reads
  freed memory. Idempotent. A subclass may define its own
  ``close()``; it is then called once, under the lock, and the object is marked closed after.
* ``with obj: ...`` closes it on exit.
* Garbage collection frees the same memory without ``close()``: each Buffer carries a
  ``weakref.finalize`` that destroys its device memory and evicts the pipelines bound to it.
* Thread safety: every public method (and ``__call__``) of the subclass runs under the object's
  re-entrant lock, so one object can be shared by several threads: calls are serialised, each
  one sees and leaves a consistent state (the write of inputs, the submission and the read-back
  of one call are never interleaved with another call's).

The ops themselves are thread-safe without it: :meth:`VulkanDevice.workspace` gives each thread
its own scratch buffers and recordings.
"""
from __future__ import annotations

import functools
import threading
import types

import numpy as np

from .buffers import Buffer, Scratch

_LOCK_ATTR = "_grilly_kv_lock"
_CLOSED_ATTR = "_grilly_kv_closed"
_WRAPPED = "__grilly_kv_locked__"
_locks_lock = threading.Lock()


def object_lock(obj) -> threading.RLock:
    """The re-entrant lock of ``obj`` (created on first use)."""
    lock = obj.__dict__.get(_LOCK_ATTR)
    if lock is None:
        with _locks_lock:
            lock = obj.__dict__.setdefault(_LOCK_ATTR, threading.RLock())
    return lock


def _locked(fn, *, is_close: bool = False):
    if getattr(fn, _WRAPPED, False):
        return fn

    if is_close:
        @functools.wraps(fn)
        def close(self, *args, **kwargs):
            with object_lock(self):
                if self.__dict__.get(_CLOSED_ATTR):
                    return None
                try:
                    return fn(self, *args, **kwargs)
                finally:
                    self.__dict__[_CLOSED_ATTR] = True
        setattr(close, _WRAPPED, True)
        return close

    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        with object_lock(self):
            return fn(self, *args, **kwargs)
    setattr(method, _WRAPPED, True)
    return method


class DeviceObject:
    """Mixin: ``close()``, context manager, per-object lock around public methods (see module)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, attr in list(vars(cls).items()):
            if not isinstance(attr, types.FunctionType):
                continue   # properties, static and class methods stay as they are
            if name == "close":
                setattr(cls, name, _locked(attr, is_close=True))
            elif not name.startswith("_") or name == "__call__":
                setattr(cls, name, _locked(attr))

    def close(self) -> None:
        """Free this object's device memory now (see :func:`release_reachable`)."""
        release_reachable(self)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return bool(self.__dict__.get(_CLOSED_ATTR))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


DeviceObject.close = _locked(DeviceObject.close, is_close=True)


def release_reachable(root) -> int:
    """Free the device memory reachable from ``root``'s attributes; returns the buffers freed.

    Walks attributes, dicts, lists, tuples and sets, and grilly_kv objects inside them (never a
    Device, whose op workspaces are shared, nor modules, functions or arrays): drops recordings,
    releases Buffers and Scratch, and closes nested DeviceObjects. Call it only on an object
    that owns what it references.
    """
    from .device import Device, Workspace
    from .sequence import Recording

    seen: set[int] = set()
    freed = 0
    stack = [v for v in vars(root).values()]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool,
                                                              np.ndarray, Device, type,
                                                              types.ModuleType,
                                                              types.FunctionType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, Buffer):
            if not obj.released:
                obj.release()
                freed += 1
        elif isinstance(obj, DeviceObject) and obj is not root:
            obj.close()
        elif isinstance(obj, Recording):
            obj._seq = None   # frees its command buffer and pipelines; the buffers it binds
            # are freed only if the object reaches them otherwise (a recording may bind shared ones)
        elif isinstance(obj, (Scratch, Workspace)):
            stack.extend(vars(obj).values())
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, set, tuple, frozenset)):
            stack.extend(obj)
        elif type(obj).__module__.startswith("grilly_kv") and hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return freed
