"""The watch stream's line splitter: any chunking gives the same lines."""

from __future__ import annotations

import random
from typing import Any

from qfleet.operator.kube import _lines


class Chunks:
    """Stands in for aiohttp's StreamReader: ``iter_any`` yields the given chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_any(self) -> Any:
        for chunk in self.chunks:
            yield chunk


async def lines_of(chunks: list[bytes]) -> list[bytes]:
    return [line async for line in _lines(Chunks(chunks))]  # type: ignore[arg-type]


async def test_lines_come_out_whole_however_the_stream_is_cut() -> None:
    long_line = b'{"object": "' + b"x" * 100_000 + b'"}'
    stream = b'{"a": 1}\n\n' + long_line + b'\n{"b": 2}\n  \n{"c": 3}'  # blank lines dropped, no final \n
    want = [b'{"a": 1}', long_line, b'{"b": 2}', b'{"c": 3}']
    assert await lines_of([stream]) == want
    assert await lines_of([bytes([byte]) for byte in stream[:200]] + [stream[200:]]) == want
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), 30))
        chunks = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert await lines_of(chunks) == want
    assert await lines_of([]) == []
    assert await lines_of([b"\n", b"\n"]) == []
