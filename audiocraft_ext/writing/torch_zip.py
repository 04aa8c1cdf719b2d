"""The zip container of torch.save, written in one pass with its hashes computed on the way.

The layout is the one torch's own writer (PyTorchStreamWriter over miniz) produces: records
stored uncompressed under ``<archive>/``, each local header padded with an ``FB`` extra field
so that the record's bytes start on a 64-byte boundary (``torch.load(mmap=True)`` maps storages
in place), a data descriptor after each record, zip64 fields where an offset or a size needs
them, and a zip64 end record. torch.load on every supported torch reads it, and so does
torch's ``calculate_storage_offsets``, which predicts record offsets from that layout.

Every byte written goes through one place, which feeds it to the file's sha256 (on a second
thread: hashlib and zlib release the GIL) while the main thread writes it: a release is read
once from its source and written once, never read back.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .libc import start_writeback

ALIGNMENT = 64  # torch.save's storage alignment
WRITEBACK_EVERY = 64 << 20  # bytes written between two starts of their writeback
_U32 = 0xFFFFFFFF
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_UTF8, _DESCRIPTOR = 0x0800, 0x0008  # flags: UTF-8 names; sizes in a descriptor after the data


@dataclass(frozen=True)
class Record:
    offset: int  # of the record's bytes in the file
    size: int
    crc: int


@dataclass
class WrittenZip:
    """What was written: the file's size and sha256, and each record by name."""

    size: int
    sha256: str
    records: dict[str, Record] = field(repr=False)


class TorchZipWriter:
    """Write a torch zip archive at ``path`` (a new file), record after record.

    ``archive`` is the folder name inside the zip (torch.save uses the file's stem). Chunks
    are hashed on another thread while they are written: the memory of a chunk may be reused
    once ``IN_FLIGHT`` more chunks have been handed over, or after :meth:`wait`.
    """

    IN_FLIGHT = 2

    def __init__(self, path: Path, archive: str) -> None:
        self.path = path
        self._prefix = archive + "/"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._offset = 0
        self._written_back = 0
        self._sha = hashlib.sha256()
        self._crc = 0
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="release-hash")
        self._pending: deque[Future[None]] = deque()
        self._central: list[bytes] = []
        self.records: dict[str, Record] = {}

    def __enter__(self) -> TorchZipWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            self._hasher.shutdown(wait=True)
            os.close(self._fd)
            self._fd = -1

    def write_record(self, name: str, data: bytes) -> None:
        """A small record held in memory."""
        self.write_chunks(name, len(data), [memoryview(data)])

    def write_chunks(self, name: str, size: int, chunks: Iterable[memoryview]) -> int:
        """Write record ``name`` of ``size`` bytes from ``chunks``; return its CRC-32."""
        full = self._prefix + name
        encoded = full.encode()
        header_at = self._offset
        zip64 = _zip64_extra(size, header_at)
        start = header_at + _LOCAL.size + len(encoded) + 4 + len(zip64)
        padding = -start % ALIGNMENT
        extra = zip64 + b"FB" + struct.pack("<H", padding) + b"Z" * padding
        flags = _UTF8 | (_DESCRIPTOR if size else 0)  # miniz: an empty record has none
        self._emit(_LOCAL.pack(0x04034B50, 0, flags, 0, 0, 0, 0, 0, 0, len(encoded),
                               len(extra)) + encoded + extra)
        data_at, done = self._offset, 0
        self._crc = 0
        for chunk in chunks:
            self._emit(chunk, crc=True)
            done += len(chunk)
        if done != size:
            raise ValueError(f"record {name!r}: {done} bytes written, {size} declared")
        actual = self._crc
        if size:
            self._emit(struct.pack("<IIQQ" if zip64 else "<IIII", 0x08074B50, actual, size,
                                   size))
        self.records[full] = Record(data_at, size, actual)
        self._central.append(
            _CENTRAL.pack(0x02014B50, 0, 0, flags, 0, 0, 0, actual, min(size, _U32),
                          min(size, _U32), len(encoded), len(zip64), 0, 0, 0, 0,
                          min(header_at, _U32)) + encoded + zip64)
        return actual

    def wait(self) -> None:
        """Wait until every chunk handed over so far is hashed."""
        while self._pending:
            self._pending.popleft().result()

    def finish(self) -> WrittenZip:
        """Write ``version`` and the directory, fsync, and return what was written."""
        self.write_record("version", b"3\n")
        directory_at = self._offset
        directory = b"".join(self._central)
        entries = len(self._central)
        end64_at = directory_at + len(directory)
        self._emit(directory + struct.pack(
            "<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 0x002D, 0, 0, entries, entries,
            len(directory), directory_at) + struct.pack("<IIQI", 0x07064B50, 0, end64_at, 1)
            + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(entries, 0xFFFF),
                          min(entries, 0xFFFF), min(len(directory), _U32),
                          min(directory_at, _U32), 0))
        self.wait()
        os.fsync(self._fd)
        return WrittenZip(self._offset, self._sha.hexdigest(), dict(self.records))

    def _emit(self, data: bytes | memoryview, crc: bool = False) -> None:
        """Write ``data`` at the end of the file. The hasher thread (one, so in order) adds it
        to the file's sha256 meanwhile; a record's CRC-32, three times faster, is computed
        here, which balances the two threads."""
        self._pending.append(self._hasher.submit(self._sha.update, data))
        if crc:
            self._crc = zlib.crc32(data, self._crc)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._offset += len(data)
        if self._offset - self._written_back >= WRITEBACK_EVERY:
            start_writeback(self._fd, self._written_back, self._offset - self._written_back)
            self._written_back = self._offset
        while len(self._pending) > self.IN_FLIGHT:
            self._pending.popleft().result()


def _zip64_extra(size: int, header_at: int) -> bytes:
    """miniz's zip64 extra field: the sizes when the size, the header's offset when that
    offset, does not fit 32 bits (torch's offset prediction counts on exactly these)."""
    fields = ([size, size] if size >= _U32 else []) + ([header_at] if header_at >= _U32 else [])
    if not fields:
        return b""
    return struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields)
