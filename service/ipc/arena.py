"""A shared-memory block of fixed-size slots, written by one process and read in place by another."""

from __future__ import annotations

import math
from multiprocessing import shared_memory

import numpy as np

SLOT_BYTES = 256 * 1024  # a 64-row MNIST batch of FP32 (200 KB) fits one slot; larger tensors travel inline
SLOTS = 128


class Arena:
    """The writer's side: slots taken for a request's tensors and given back when its answer arrives."""

    def __init__(self, slots: int = SLOTS, slot_bytes: int = SLOT_BYTES) -> None:
        self.shm = shared_memory.SharedMemory(create=True, size=slots * slot_bytes)
        self._memory = np.ndarray((slots * slot_bytes,), dtype=np.uint8, buffer=self.shm.buf)
        self.slot_bytes = slot_bytes
        self._free = list(range(slots - 1, -1, -1))

    @property
    def name(self) -> str:
        """The block's name, for the reader to attach."""
        return self.shm.name

    def put(self, array: np.ndarray) -> int | None:
        """Copy a contiguous numeric array into a free slot; its offset, or None (no slot free, or too large)."""
        if array.nbytes > self.slot_bytes or not self._free:
            return None
        offset = self._free.pop() * self.slot_bytes
        self._memory[offset : offset + array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        return offset

    def release(self, offset: int) -> None:
        """Give a slot back once the reader is done with it."""
        self._free.append(offset // self.slot_bytes)

    def close(self) -> None:
        """Unmap and remove the block."""
        del self._memory
        self.shm.close()
        self.shm.unlink()


class Reader:
    """The reader's side: arrays as views into the writer's block, without copying."""

    def __init__(self, name: str) -> None:
        # The supervisor's processes share one resource tracker, which knows the block from its writer: the
        # writer removes it, and the tracker does if the writer dies first.
        self.shm = shared_memory.SharedMemory(name=name)
        self._memory = np.ndarray((self.shm.size,), dtype=np.uint8, buffer=self.shm.buf)

    def view(self, offset: int, dtype: np.dtype[np.generic], shape: tuple[int, ...]) -> np.ndarray:
        """The array stored at `offset`."""
        count = math.prod(shape)
        return self._memory[offset : offset + count * dtype.itemsize].view(dtype).reshape(shape)

    def close(self) -> None:
        """Unmap the block (the writer removes it)."""
        del self._memory
        self.shm.close()
