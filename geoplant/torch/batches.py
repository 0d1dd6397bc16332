"""Packed batches: every tensor of a batch is a view of one byte buffer, reused when freed.

Why: a batch of 64 surveys is ~4.5 MB of uint8 patches plus small arrays. torch's DataLoader
worker path would give each tensor its own new shared-memory block (created, page-faulted,
its file descriptor passed over a socket, unmapped), which costs more than gathering the
data. Here a batch is one buffer (:class:`PackedBatch`), taken from a small per-process
arena of buffers (:class:`_Arena`): a buffer goes back to the arena when the last view of
its batch is freed, so steady-state batches reuse memory that is already mapped and faulted
in. A buffer made in a DataLoader worker is shared memory that crosses to the main process
once; afterwards only its slot number travels, and the main process marks the slot free in a
small shared flag array when the batch dies. When every slot is busy (the caller keeps
batches), a fresh buffer is made, so nothing ever waits.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import torch

from geoplant.files import pid_alive

__all__ = ["PackedBatch", "pack"]

#: Byte alignment of each tensor inside a packed buffer.
_ALIGN: Final = 64
#: Most buffers of a process arena. A worker needs about prefetch_factor + 2 (in flight, and
#: held by the main process); they are made only when all others are busy.
_SLOTS: Final = 16

Spec = Sequence[tuple[str, np.dtype[Any], tuple[int, ...]]]


def _new_buffer(nbytes: int, shared: bool) -> torch.Tensor:
    proto = torch.empty(0, dtype=torch.uint8)
    if shared:  # as torch's default_collate does in workers: allocate, never copy, to shm
        return proto.new(proto._typed_storage()._new_shared(max(nbytes, 1)))
    return torch.empty(max(nbytes, 1), dtype=torch.uint8)


def _tracked_view(buffer: torch.Tensor, nbytes: int, release: Any, *args: Any) -> torch.Tensor:
    """The first ``nbytes`` of ``buffer`` as a tensor whose death calls ``release(*args)``.

    The tensor is built over a numpy view: its storage keeps that view alive, so the view is
    collected (and the finalizer runs) exactly when the last tensor sharing the storage is.
    """
    holder = buffer.numpy()[:nbytes]
    weakref.finalize(holder, release, *args).atexit = False  # nothing to free at exit
    return torch.from_numpy(holder)


class _Lease:
    """One use of an arena slot by a batch."""

    __slots__ = ("arena", "nbytes", "sent", "slot")

    def __init__(self, arena: _Arena, slot: int, nbytes: int) -> None:
        self.arena = arena
        self.slot = slot
        self.nbytes = nbytes
        self.sent = False


def _release_local(lease: _Lease) -> None:
    # in a worker, a batch sent to the main process is released by the main process
    if not lease.sent:
        lease.arena.flags[lease.slot] = 1


class _Arena:
    """Reusable batch buffers of one process (shared memory inside DataLoader workers)."""

    def __init__(self, shared: bool) -> None:
        self.shared = shared
        self.token = secrets.token_hex(8)
        self.pid = os.getpid()
        flags = _new_buffer(_SLOTS, shared)[:_SLOTS]
        self.flags_tensor = flags
        self.flags = flags.numpy()
        self.flags[:] = 1  # 1: free
        self.flags_sent = False
        self.buffers: list[torch.Tensor] = []
        self.unsent: set[int] = set()

    def lease(self, nbytes: int) -> tuple[torch.Tensor, _Lease | None]:
        """A buffer of ``nbytes`` (a slot when one is free, else a one-off buffer)."""
        free = [k for k in range(len(self.buffers)) if self.flags[k]]
        fits = [k for k in free if self.buffers[k].numel() >= nbytes]
        if fits:
            k = fits[0]
        elif len(self.buffers) < _SLOTS or free:
            k = free[0] if free else len(self.buffers)
            buffer = _new_buffer(nbytes, self.shared)
            if k == len(self.buffers):
                self.buffers.append(buffer)
            else:
                self.buffers[k] = buffer
            self.unsent.add(k)
        else:
            return _new_buffer(nbytes, self.shared)[:nbytes], None
        self.flags[k] = 0
        lease = _Lease(self, k, nbytes)
        return _tracked_view(self.buffers[k], nbytes, _release_local, lease), lease


_ARENAS: dict[tuple[int, bool], _Arena] = {}


def _arena(shared: bool) -> _Arena:
    # keyed by pid: a forked worker inherits its parent's dict but must not use its arena
    key = (os.getpid(), shared)
    arena = _ARENAS.get(key)
    if arena is None:
        arena = _ARENAS[key] = _Arena(shared)
    return arena


class _Remote:
    """The main process's view of one worker's arena."""

    def __init__(self, pid: int, flags: torch.Tensor) -> None:
        self.pid = pid
        self.flags_tensor = flags
        self.flags = flags.numpy()
        self.buffers: dict[int, torch.Tensor] = {}

    def release(self, slot: int) -> None:
        self.flags[slot] = 1


_REMOTES: dict[str, _Remote] = {}


def _view_offset(tensor: torch.Tensor, flat: torch.Tensor) -> int | None:
    """Byte offset of ``tensor`` inside ``flat`` when it is a contiguous view of it."""
    if (tensor.device != flat.device or not tensor.is_contiguous()
            or tensor.untyped_storage().data_ptr() != flat.untyped_storage().data_ptr()):
        return None
    return int(tensor.storage_offset()) * tensor.element_size()


def _views(flat: torch.Tensor, parts: Sequence[tuple[Any, ...]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        if len(part) == 2:  # a tensor outside the buffer, as is
            out[part[0]] = part[1]
            continue
        key, offset, dtype, shape = part
        nbytes = math.prod(shape) * dtype.itemsize
        out[key] = flat[offset : offset + nbytes].view(dtype).view(shape)
    return out


def _unpack(flat: torch.Tensor, parts: Sequence[tuple[Any, ...]]) -> PackedBatch:
    """Rebuild a :class:`PackedBatch` (the receiving side of pickling)."""
    return PackedBatch(flat, _views(flat, parts))


def _unpack_slot(token: str, pid: int, slot: int, buffer: torch.Tensor | None,
                 flags: torch.Tensor | None, nbytes: int,
                 parts: Sequence[tuple[Any, ...]]) -> PackedBatch:
    """Rebuild a batch a worker wrote into its arena slot ``slot`` (main process side)."""
    if flags is not None:  # a new worker: forget the arenas of workers that are gone
        for old in [t for t, r in _REMOTES.items() if not pid_alive(r.pid)]:
            del _REMOTES[old]
        _REMOTES[token] = _Remote(pid, flags)
    remote = _REMOTES[token]
    if buffer is not None:
        remote.buffers[slot] = buffer
    flat = _tracked_view(remote.buffers[slot], nbytes, remote.release, slot)
    return PackedBatch(flat, _views(flat, parts))


class PackedBatch(dict[str, torch.Tensor]):
    """A batch dict whose tensors are views of one byte buffer.

    It is a plain ``dict`` for everything that reads it. Pickled from a DataLoader worker it
    travels as one shared-memory buffer (after the first time, as a slot number of the
    worker's arena); :meth:`pin_memory` (called by the DataLoader with ``pin_memory=True``)
    pins it with one copy and :meth:`to` moves it with one copy. Keys replaced by tensors
    outside the buffer (e.g. by a transform) travel on their own.

    Attributes
    ----------
    flat
        The ``uint8`` buffer the views share.
    """

    def __init__(self, flat: torch.Tensor, tensors: Mapping[str, torch.Tensor],
                 lease: _Lease | None = None) -> None:
        super().__init__(tensors)
        self.flat = flat
        self._lease = lease

    def _parts(self) -> list[tuple[Any, ...]]:
        parts: list[tuple[Any, ...]] = []
        for key, value in self.items():
            offset = _view_offset(value, self.flat)
            parts.append((key, value) if offset is None else
                         (key, offset, value.dtype, tuple(value.shape)))
        return parts

    def __reduce__(self) -> tuple[Any, ...]:
        lease = self._lease
        if lease is None or not lease.arena.shared or lease.sent:
            return _unpack, (self.flat, self._parts())
        # from a worker's arena: send the buffer and the flags only the first time
        arena = lease.arena
        lease.sent = True
        buffer = arena.buffers[lease.slot] if lease.slot in arena.unsent else None
        arena.unsent.discard(lease.slot)
        flags = None if arena.flags_sent else arena.flags_tensor
        arena.flags_sent = True
        return _unpack_slot, (arena.token, arena.pid, lease.slot, buffer, flags, lease.nbytes,
                              self._parts())

    def pin_memory(self, device: Any = None) -> PackedBatch:
        """The batch in page-locked memory (one copy of the buffer), for fast, asynchronous
        (``non_blocking``) host-to-device copies."""
        parts = self._parts()
        flat = self.flat.pin_memory()
        pinned = [p if len(p) == 4 else (p[0], p[1].pin_memory()) for p in parts]
        return PackedBatch(flat, _views(flat, pinned))

    def to(self, device: torch.device | str, non_blocking: bool = False
           ) -> dict[str, torch.Tensor]:
        """The batch on ``device`` as a plain dict: one copy of the buffer (plus one per
        tensor outside it)."""
        parts = self._parts()
        flat = self.flat.to(device, non_blocking=non_blocking)
        moved = [p if len(p) == 4 else (p[0], p[1].to(device, non_blocking=non_blocking))
                 for p in parts]
        return _views(flat, moved)


@functools.cache
def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def pack(spec: Spec, shared: bool) -> tuple[PackedBatch, dict[str, np.ndarray]]:
    """Uninitialised tensors for ``spec`` (key, dtype, shape), views of one buffer from the
    process's arena, and their numpy views (to fill).

    Parameters
    ----------
    spec
        ``(key, numpy dtype, shape)`` of each tensor, in batch order.
    shared
        In shared memory (inside a DataLoader worker), so that sending the batch to the main
        process needs no copy.
    """
    offsets = []
    sizes = []
    total = 0
    for _, dtype, shape in spec:
        offsets.append(total)
        sizes.append(math.prod(shape) * dtype.itemsize)
        total += -(-sizes[-1] // _ALIGN) * _ALIGN
    flat, lease = _arena(shared).lease(total)
    tensors: dict[str, torch.Tensor] = {}
    for (key, dtype, shape), offset, nbytes in zip(spec, offsets, sizes, strict=True):
        tensors[key] = flat[offset : offset + nbytes].view(_torch_dtype(dtype)).view(shape)
    batch = PackedBatch(flat, tensors, lease)
    return batch, {k: v.numpy() for k, v in tensors.items()}
