"""Reading a large job's items: parsed right, and read in large blocks, not byte by byte."""

from __future__ import annotations

import io

from nimbus.storage import UnreadableItem, parse_items


class CountingReader(io.BufferedIOBase):
    """A stand-in for google-cloud-storage's BlobReader: a readable stream that counts calls."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        self.calls += 1
        return self._data.read(size)

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)


def test_json_lines_are_read_in_a_few_large_blocks() -> None:
    lines = [b'{"a": %d, "b": 0.5}' % i for i in range(20_000)]
    reader = CountingReader(b"\n".join(lines[:10]) + b"\n\nnot json\n" + b"\n".join(lines[10:]))

    items = list(parse_items(reader, is_csv=False))

    assert len(items) == 20_001
    assert items[0] == {"a": 0, "b": 0.5} and items[-1] == {"a": 19_999, "b": 0.5}
    assert items[10] == UnreadableItem("line 12 is not valid JSON")
    assert reader.calls < 10  # about 400 kB: one or two blocks, not a call per byte


def test_csv_cells_are_numbers_and_empty_cells_are_missing() -> None:
    reader = CountingReader(b"a,b,c\n" + b"1,2.5,\n3,x,4\n" * 5000)

    items = list(parse_items(reader, is_csv=True))

    assert len(items) == 10_000
    assert items[:2] == [{"a": 1.0, "b": 2.5}, {"a": 3.0, "b": "x", "c": 4.0}]
    assert reader.calls < 10
