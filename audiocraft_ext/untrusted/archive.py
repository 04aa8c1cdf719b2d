"""Reading records out of a torch zip checkpoint, checked, with explicit reads.

Records are read with ``pread`` into memory the caller provides and CRC-checked as they are
read. No map of the file is kept: a checkpoint truncated or rewritten while it is read (a
training job still saving, a sync tool) gives an :class:`ExportError`, never a SIGBUS.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import ExportError, first_line, shown

_CHUNK = 8 << 20  # bytes per read: large enough for the disk, small for the CRC's cache


class CheckpointArchive:
    """An open torch zip checkpoint (torch.save's format since torch 1.6)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = open(path, "rb")
        except OSError as exc:
            raise ExportError(f"cannot read {path}: {exc.strerror or exc}") from exc
        self._identity = _identity(os.fstat(self._file.fileno()))
        try:
            self._zip = zipfile.ZipFile(self._file)
        # Only zipfile runs here, and a damaged zip directory fails it in many ways.
        except Exception as exc:
            raise ExportError(f"{path} is a damaged checkpoint archive: {first_line(exc)}"
                              ) from exc
        pickles = [n for n in self._zip.namelist() if n.count("/") == 1
                   and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ExportError(f"{path} is a zip file but not a torch checkpoint (no data.pkl)")
        self.prefix = pickles[0][: -len("data.pkl")]
        if self.has_record("byteorder") and self.read_bytes("byteorder") != b"little":
            raise ExportError(f"{path} was saved on a big-endian machine; not supported")

    def has_record(self, record: str) -> bool:
        return self.prefix + record in self._zip.NameToInfo

    def record_size(self, record: str) -> int | None:
        """The size of ``record``, or None when the archive has no such record.

        Raises ExportError for a compressed record: torch.save stores records as they are, and
        a compressed one can declare any size (a few kilobytes inflating to terabytes).
        """
        info = self._zip.NameToInfo.get(self.prefix + record)
        if info is not None and info.compress_type != zipfile.ZIP_STORED:
            raise ExportError(f"{self.path}: its record {shown(record)} is compressed; torch "
                              "checkpoints store records uncompressed (was it re-zipped?)")
        return None if info is None else info.file_size

    @contextmanager
    def _reading(self, record: str) -> Iterator[None]:
        """Turn a failure to read ``record`` (bad CRC, damaged header, unknown compression,
        the file changing underneath) into one ExportError naming it."""
        try:
            yield
        except ExportError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, KeyError,
                zlib.error, struct.error) as exc:
            self.check_unchanged()
            raise ExportError(f"{self.path} is damaged: cannot read its record {shown(record)}: "
                              f"{first_line(exc)}") from exc

    def check_unchanged(self) -> None:
        """Raise if the file was truncated or rewritten since it was opened."""
        if _identity(os.fstat(self._file.fileno())) != self._identity:
            raise ExportError(f"{self.path} changed while it was being read (its size or "
                              "modification time differs): a job may still be writing it; "
                              "export it once it is complete")

    def read_bytes(self, record: str) -> bytes:
        """A whole small record (``data.pkl``, ``byteorder``), CRC-checked."""
        size = self.record_size(record)
        if size is not None and size > os.fstat(self._file.fileno()).st_size:
            raise ExportError(f"{self.path} is damaged: its record {shown(record)} claims "
                              f"{size} bytes, more than the file holds")
        with self._reading(record):
            return self._zip.read(self.prefix + record)

    def read_into(self, record: str, out: torch.Tensor) -> None:
        """Read ``record`` into the flat uint8 tensor ``out`` (exactly its size), checking its
        CRC-32 against the archive's directory."""
        nbytes = out.numel()
        with self._reading(record):
            start = self._located(record, nbytes)
            view = out.numpy().data.cast("B") if nbytes else memoryview(b"")
            crc = 0
            for done in range(0, nbytes, _CHUNK):
                chunk = view[done:done + _CHUNK]
                self._pread_exactly(start + done, chunk)
                crc = zlib.crc32(chunk, crc)
        self.check_crc(record, crc)

    def chunks(self, record: str, nbytes: int, slots: Iterator[memoryview]
               ) -> Iterator[memoryview]:
        """The bytes of ``record`` (``nbytes``), each chunk read into the next of ``slots``
        (equal-sized buffers, e.g. a cycle of them). The consumer computes the CRC-32 on the
        way and hands it to :meth:`check_crc`."""
        with self._reading(record):
            start = self._located(record, nbytes)
            done = 0
            while done < nbytes:
                slot = next(slots)
                chunk = slot[: min(len(slot), nbytes - done)]
                self._pread_exactly(start + done, chunk)
                done += len(chunk)
                yield chunk

    def check_crc(self, record: str, crc: int) -> None:
        """Raise unless ``crc`` (of the bytes just read) is ``record``'s CRC-32 in the
        directory, and the file is unchanged."""
        if crc != self._zip.getinfo(self.prefix + record).CRC:
            self.check_unchanged()
            raise ExportError(f"{self.path} is damaged: its record {shown(record)} does "
                              "not match its CRC-32")
        self.check_unchanged()

    def crc(self, record: str) -> int:
        """``record``'s CRC-32 as the directory records it."""
        return self._zip.getinfo(self.prefix + record).CRC

    def data_offset(self, record: str) -> int:
        """Where the bytes of ``record`` start in the file."""
        with self._reading(record):
            return self._data_offset(self._zip.getinfo(self.prefix + record))

    def _located(self, record: str, nbytes: int) -> int:
        """Where ``record`` starts, after checking it holds ``nbytes``."""
        info = self._zip.getinfo(self.prefix + record)
        if info.file_size != nbytes:
            raise ExportError(f"{self.path} is damaged: its record {shown(record)} holds "
                              f"{info.file_size} bytes, its tensor needs {nbytes}")
        return self._data_offset(info)

    def _pread_exactly(self, start: int, view: memoryview) -> None:
        fd, done = self._file.fileno(), 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], start + done)
            if n <= 0:
                raise EOFError("the file ends inside this record")
            done += n

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where the stored bytes of ``info`` start: after its local header."""
        header = os.pread(self._file.fileno(), 30, info.header_offset)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile("bad local header")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino
