"""Fast patch reads: Blosc2 chunks taken straight from the cache file and decompressed in a thread pool.

HDF5's filter pipeline decompresses one chunk at a time under h5py's global lock and, for a patch that cuts
chunks, copies every chunk twice. Here the chunk index (file offset and size of every chunk) is read once per
dataset through HDF5 itself (``chunk_iter``); after that a patch read maps the chunks it touches in the
memory-mapped file, decompresses each with ``blosc2.decompress2`` (which releases the GIL) into a small
per-thread buffer and copies the part inside the patch into the output, with the chunks spread over threads.

Only datasets whose filter pipeline is exactly Blosc2 (hdf5plugin id 32026), optionally followed by Fletcher32,
are read this way; anything else (and a file this code does not understand) goes back to h5py. The Fletcher32
trailer is NOT checked on this path: checksums are checked by ``prism-data verify`` (which reads through HDF5)
and by ``CacheReader(..., checksums=True)``. A chunk whose Blosc2 frame holds a special value (an all-zero
chunk is stored without data) or whose chunk is split into several Blosc2 blocks (stored block by block, not in
C order) is decoded through ``blosc2.ndarray_from_cframe``; all-zero chunks are remembered and their part of the
output is filled with zeros instead (the output is never zeroed first: every part of it is written once).

The first time a reader decodes a floating-point chunk it checks that every value is finite (NaN or Inf raise
:class:`NonFiniteChunk`, naming the rows of the first axis, an image's modalities); the chunk is then remembered as
checked, so the check costs one pass per chunk and process, not one per read.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import product

import blosc2
import h5py
import numpy as np

BLOSC2_FILTER_ID = 32026
FLETCHER32_FILTER_ID = 3
_FRAME_MAGIC = b"b2frame\x00"
_UNKNOWN, _DATA, _ZERO, _SPECIAL = 0, 1, 2, 3

blosc2.set_releasegil(True)
blosc2.set_nthreads(1)  # parallelism comes from decompressing several chunks at once


class NonFiniteChunk(ValueError):
    """A floating-point chunk holds NaN or Inf; ``first_axis`` lists the indices along the dataset's first axis
    (an image's modalities) where they are. Each chunk is checked the first time a reader decodes it."""

    def __init__(self, chunk: tuple[int, ...], first_axis: tuple[int, ...]) -> None:
        super().__init__(f"chunk {list(chunk)} holds NaN or Inf")
        self.chunk = chunk
        self.first_axis = first_axis


@dataclass
class ChunkIndex:
    """Where every chunk of one dataset lies in the file, and what kind of Blosc2 frame holds it."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    offsets: np.ndarray  # int64 [grid], file offset of each chunk (-1: never written)
    sizes: np.ndarray  # int64 [grid], stored bytes (Fletcher32 trailer included)
    trailer: int  # bytes after the Blosc2 frame (4 with Fletcher32, else 0)
    kinds: np.ndarray = field(init=False)  # uint8 [grid]: unknown / data at the frame's header end / zero / other
    heads: np.ndarray = field(init=False)  # int64 [grid]: where a _DATA chunk's data starts inside its frame
    nbytes: int = field(init=False)  # decoded bytes of one chunk

    def __post_init__(self) -> None:
        self.kinds = np.zeros(self.offsets.shape, np.uint8)
        self.heads = np.zeros(self.offsets.shape, np.int64)
        self.nbytes = int(np.prod(self.chunks)) * self.dtype.itemsize


def chunk_index(ds: h5py.Dataset) -> ChunkIndex | None:
    """The chunk index of a Blosc2 dataset (None if its layout or filters are not what this reader handles)."""
    if ds.chunks is None or ds.dtype.kind not in "fiub":
        return None
    plist = ds.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if filters not in ([BLOSC2_FILTER_ID], [BLOSC2_FILTER_ID, FLETCHER32_FILTER_ID]):
        return None
    grid = tuple(-(-n // c) for n, c in zip(ds.shape, ds.chunks, strict=True))
    offsets = np.full(grid, -1, np.int64)
    sizes = np.zeros(grid, np.int64)
    masked = []

    def visit(info: h5py.h5d.StoreInfo) -> None:
        idx = tuple(o // c for o, c in zip(info.chunk_offset, ds.chunks, strict=True))
        offsets[idx], sizes[idx] = info.byte_offset, info.size
        if info.filter_mask:
            masked.append(idx)

    ds.id.chunk_iter(visit)
    if masked:  # a chunk stored with some filter skipped: leave it to HDF5
        return None
    trailer = 4 if FLETCHER32_FILTER_ID in filters else 0
    return ChunkIndex(tuple(ds.shape), tuple(ds.chunks), np.dtype(ds.dtype), offsets, sizes, trailer)


def _axis_pieces(lo: int, hi: int, c: int) -> list[tuple[int, slice, slice]]:
    """Per chunk along one axis: (chunk number, slice inside the chunk, slice inside the output)."""
    pieces = []
    for k in range(lo // c, (hi - 1) // c + 1):
        a, b = max(lo, k * c), min(hi, (k + 1) * c)
        pieces.append((k, slice(a - k * c, b - k * c), slice(a - lo, b - lo)))
    return pieces


class DirectChunkReader:
    """Reads boxes of Blosc2-compressed datasets of one HDF5 file with a pool of ``threads`` threads."""

    def __init__(self, path: str | os.PathLike[str], threads: int) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = memoryview(self._map)
        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None
        self._local = threading.local()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._fh.close()
        try:
            self._view.release()
            self._map.close()
        except BufferError:  # a slice is still referenced (e.g. by a traceback): the map closes when it goes
            pass

    def _buffer(self, nbytes: int) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.nbytes < nbytes:
            buf = self._local.buf = np.empty(nbytes, np.uint8)
        return buf[:nbytes]

    def _decode(self, index: ChunkIndex, idx: tuple[int, ...]) -> np.ndarray | None:
        """One chunk as an array of the chunk shape (None: all zero); the array is reused by the next call."""
        kind = index.kinds[idx]
        if kind == _ZERO:
            return None
        nbytes = index.nbytes
        out = self._buffer(nbytes)
        off = int(index.offsets[idx])
        if off < 0:  # never written: HDF5 returns the fill value, zero for prism caches
            return None
        end = off + int(index.sizes[idx]) - index.trailer
        if kind == _DATA:  # the common case, kept short: the data's start inside the frame is remembered
            blosc2.decompress2(self._view[off + int(index.heads[idx]):end], dst=out)
            return out.view(index.dtype).reshape(index.chunks)
        frame = self._view[off:end]
        first = kind == _UNKNOWN
        if first:
            kind = self._classify(frame, nbytes)
        if kind == _DATA:
            head = int.from_bytes(frame[11:15], "big")
            blosc2.decompress2(frame[head:], dst=out)
        else:  # special values or several blocks (then the chunk is stored block by block): let b2nd lay it out
            decoded = np.asarray(blosc2.ndarray_from_cframe(bytes(frame))[()]).reshape(index.chunks)
            np.copyto(out.view(index.dtype).reshape(index.chunks), decoded.view(index.dtype))
            kind = _SPECIAL if out.any() else _ZERO
        chunk = out.view(index.dtype).reshape(index.chunks)
        if first and index.dtype.kind == "f" and kind != _ZERO and not np.isfinite(chunk).all():
            rows = np.flatnonzero(~np.isfinite(chunk.reshape(chunk.shape[0], -1)).all(axis=1))
            raise NonFiniteChunk(idx, tuple(int(idx[0] * index.chunks[0] + r) for r in rows))
        if kind == _DATA:
            index.heads[idx] = int.from_bytes(frame[11:15], "big")
        index.kinds[idx] = kind  # checked once: later reads of this chunk skip the check
        return None if kind == _ZERO else chunk

    @staticmethod
    def _classify(frame: memoryview, nbytes: int) -> int:
        """_DATA when the frame's data chunk follows its header as one block (C order), else _UNKNOWN."""
        if len(frame) < 64 or frame[2:10] != _FRAME_MAGIC or frame[10] != 0xD2 or frame[15] != 0xCF:
            return _UNKNOWN
        head = int.from_bytes(frame[11:15], "big")
        if int.from_bytes(frame[16:24], "big") != len(frame) or head + 32 > len(frame):
            return _UNKNOWN
        chunk = frame[head:head + 32]
        chunk_nbytes = int.from_bytes(chunk[4:8], "little")
        blocksize = int.from_bytes(chunk[8:12], "little")
        chunk_cbytes = int.from_bytes(chunk[12:16], "little")
        special = (chunk[31] >> 4) & 7 if chunk[0] >= 3 else 0
        if chunk_nbytes != nbytes or blocksize != nbytes or chunk_cbytes > len(frame) - head or special:
            return _UNKNOWN
        return _DATA

    def read(self, index: ChunkIndex, lo: Sequence[int], hi: Sequence[int], out: np.ndarray | None = None
             ) -> np.ndarray:
        """The box ``[lo, hi)`` (inside the dataset), written into ``out`` when given (C-contiguous, of the box's
        shape and the dataset's dtype; e.g. a reused or pinned buffer), else into a new array.

        The output is never zero-filled first: every chunk's part is written, all-zero and never-written chunks
        by a fill, so a new array costs no extra pass over memory.
        """
        shape = tuple(b - a for a, b in zip(lo, hi, strict=True))
        if out is None:
            out = np.empty(shape, index.dtype)
        elif out.shape != shape or out.dtype != index.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous {index.dtype} of shape {shape}, got {out.dtype} {out.shape}")
        pieces = [_axis_pieces(a, b, c) for a, b, c in zip(lo, hi, index.chunks, strict=True)]
        jobs = list(product(*pieces))

        def run(part: list[tuple[tuple[int, slice, slice], ...]]) -> None:
            for job in part:
                chunk = self._decode(index, tuple(p[0] for p in job))
                dst = tuple(p[2] for p in job)
                if chunk is None:
                    out[dst] = 0
                else:
                    out[dst] = chunk[tuple(p[1] for p in job)]

        if self._pool is None or len(jobs) < 2 * self.threads:
            run(jobs)
            return out
        parts = [jobs[i::self.threads] for i in range(self.threads)]
        futures = [self._pool.submit(run, part) for part in parts[1:]]
        run(parts[0])
        for fut in futures:
            fut.result()
        return out
