"""Streaming copies: every byte once, hashed, in bounded chunks, and errors from either side."""

from __future__ import annotations

import hashlib
import io

import pytest

from qfleet.storage.transfer import CHUNK_SIZE, copy_stream


class Reads(io.BytesIO):
    """A source that records the size of every read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.asked.append(-1 if size is None else size)
        return super().read(size)


def test_copies_hashes_and_reports_progress_in_bounded_chunks() -> None:
    data = bytes(range(256)) * (CHUNK_SIZE // 128 + 7)  # two chunks and a bit
    source, target, progress = Reads(data), io.BytesIO(), []
    size, digest = copy_stream(source, target, progress=progress.append)
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert target.getvalue() == data
    assert set(source.asked) == {CHUNK_SIZE} and sum(progress) == len(data) and max(progress) <= CHUNK_SIZE


def test_an_empty_source_is_an_empty_file() -> None:
    target = io.BytesIO()
    assert copy_stream(io.BytesIO(b""), target) == (0, hashlib.sha256(b"").hexdigest())


class FullDisk(io.BytesIO):
    def write(self, data: bytes) -> int:  # type: ignore[override]
        raise OSError(28, "No space left on device")


def test_a_write_error_reaches_the_caller_and_stops_reading() -> None:
    source = Reads(b"x" * (10 * CHUNK_SIZE))
    with pytest.raises(OSError, match="No space left"):
        copy_stream(source, FullDisk())
    assert len(source.asked) < 10  # it stopped early instead of reading the whole source


class Broken(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= CHUNK_SIZE:
            raise ConnectionResetError("peer reset")
        return super().read(size)


def test_a_read_error_reaches_the_caller_and_the_writer_ends() -> None:
    with pytest.raises(ConnectionResetError):
        copy_stream(Broken(b"y" * (3 * CHUNK_SIZE)), io.BytesIO())
