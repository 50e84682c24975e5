"""A JPEG's structure read from its markers before anything is decoded: how many scans it has, and
whether each scan holds enough entropy-coded bytes for the blocks it must code.

Why: libjpeg's work is linear in scans x blocks, so a progressive JPEG that repeats one cheap scan
10,000 times stalls a decode for ~35 s while its size and pixel count look harmless. And when
a file ends early but carries an end marker, libjpeg pads the missing blocks with grey and reports it
only as a warning, which Pillow does not pass on. Walking the markers costs a regex search per scan.

The byte check is a lower bound, so it never refuses a whole file: a sequential scan codes every block
with at least one DC and one AC Huffman code, a progressive DC scan with at least one DC code (one bit
when refining). AC scans (end-of-band runs) and arithmetic or lossless coding have no useful bound.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

# A marker after entropy-coded data: 0xFF followed by neither a stuffed 0x00, a fill 0xFF nor RST0-7.
_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")
_SOF_HUFFMAN = {0xC0: "sequential", 0xC1: "sequential", 0xC2: "progressive", 0xC6: "progressive"}
_SOF_OTHER = {0xC3, 0xC5, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}   # lossless, hierarchical, arithmetic
_PARAMETERLESS = {0x01, *range(0xD0, 0xD9)}   # TEM, RST0-7, SOI
_CHUNK = 1 << 20


class JpegStructureError(ValueError):
    """The markers say the file cannot be decoded within bounds. `kind`: too_large or corrupt."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class _Frame:
    coding: str | None          # sequential | progressive | None (no bound: lossless, arithmetic, ...)
    width: int
    height: int
    components: dict            # component id -> (h, v) sampling factors

    def blocks(self, ids: list) -> dict:
        """8x8 blocks each component of a scan codes: padded to whole MCUs when the scan interleaves."""
        hmax = max(h for h, _ in self.components.values())
        vmax = max(v for _, v in self.components.values())
        if len(ids) == 1:
            h, v = self.components.get(ids[0], (hmax, vmax))
            cols = -(-(-(-self.width * h // hmax)) // 8)
            rows = -(-(-(-self.height * v // vmax)) // 8)
            return {ids[0]: cols * rows}
        mcus = -(-self.width // (8 * hmax)) * -(-self.height // (8 * vmax))
        return {c: mcus * self.components.get(c, (1, 1))[0] * self.components.get(c, (1, 1))[1] for c in ids}


def _frame(code: int, seg: bytes) -> _Frame:
    height, width, count = int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big"), seg[5]
    comps = {seg[6 + 3 * i]: (max(1, seg[7 + 3 * i] >> 4), max(1, seg[7 + 3 * i] & 15))
             for i in range(count) if 8 + 3 * i <= len(seg)}
    return _Frame(_SOF_HUFFMAN.get(code), width, height, comps or {1: (1, 1)})


def _shortest_codes(seg: bytes, tables: dict) -> None:
    """DHT: for each table (class, id), the length of its shortest code."""
    pos = 0
    while pos + 17 <= len(seg):
        counts = seg[pos + 1:pos + 17]
        tables[(seg[pos] >> 4, seg[pos] & 15)] = next((i + 1 for i, n in enumerate(counts) if n), 1)
        pos += 17 + sum(counts)


def _bits_needed(frame: _Frame | None, seg: bytes, tables: dict) -> int:
    """The fewest entropy-coded bits the scan whose SOS header is `seg` can hold (0: no bound)."""
    if frame is None or frame.coding is None or frame.height == 0 or not seg:
        return 0
    count = seg[0]
    ids = [seg[1 + 2 * i] for i in range(count) if 2 + 2 * i < len(seg)]
    selectors = {seg[1 + 2 * i]: seg[2 + 2 * i] for i in range(count) if 2 + 2 * i < len(seg)}
    spectral_start = seg[1 + 2 * count] if 1 + 2 * count < len(seg) else 0
    refining = (seg[3 + 2 * count] >> 4) if 3 + 2 * count < len(seg) else 0
    total = 0
    for comp, blocks in frame.blocks(ids).items():
        dc, ac = tables.get((0, selectors[comp] >> 4), 1), tables.get((1, selectors[comp] & 15), 1)
        if frame.coding == "sequential":
            total += blocks * (dc + ac)
        elif spectral_start == 0:
            total += blocks * (1 if refining else dc)
    return total


def _marker_after(fp, pos: int) -> int | None:
    """Offset of the first marker at or after `pos` (entropy-coded data skipped), None if none is left.
    Reads 64 KB, then twice as much each time up to 1 MB: a file is never held whole, nor mapped (a
    file cut while mapped is SIGBUS), and many short scans cost little each."""
    carry, size = b"", _CHUNK // 16
    while True:
        fp.seek(pos)
        chunk = fp.read(size)
        if not chunk:
            return None
        found = _MARKER.search(carry + chunk)
        if found is not None:
            return pos - len(carry) + found.start()
        carry, pos, size = chunk[-1:], pos + len(chunk), min(2 * size, _CHUNK)   # a 0xFF may start a marker


def check_jpeg(source, max_scans: int) -> int:
    """Walk the markers of the JPEG in `source` (bytes, or a seekable binary file at its SOI at offset 0)
    up to its first EOI; the scan count. JpegStructureError when it has over `max_scans` scans, or a scan
    too short for its blocks."""
    fp = source if hasattr(source, "read") else io.BytesIO(source)
    frame, tables, scans, pos = None, {}, 0, 2
    while True:
        fp.seek(pos)
        head = fp.read(4)
        if len(head) < 2:
            break
        if head[0] != 0xFF or head[1] in (0x00, 0xFF):
            pos = _marker_after(fp, pos + 1)   # libjpeg skips stray bytes up to the next marker too
            if pos is None:
                break
            continue
        code = head[1]
        if code == 0xD9:
            break
        if code in _PARAMETERLESS:
            pos += 2
            continue
        length = int.from_bytes(head[2:4], "big")
        seg = fp.read(max(0, length - 2))
        pos += 2 + max(length, 2)
        if code in _SOF_HUFFMAN or code in _SOF_OTHER:
            frame = _frame(code, seg) if len(seg) >= 6 else None
        elif code == 0xC4:
            _shortest_codes(seg, tables)
        elif code == 0xDA:
            scans += 1
            if scans > max_scans:
                raise JpegStructureError(f"a JPEG of over {max_scans} scans (each scan costs a pass over "
                                         "every block); a progressive JPEG has about 10", "too_large")
            end = _marker_after(fp, pos)
            end = fp.seek(0, io.SEEK_END) if end is None else end
            needed = _bits_needed(frame, seg, tables)
            if (end - pos) * 8 < needed:
                raise JpegStructureError(f"truncated JPEG: scan {scans} holds {end - pos} bytes, fewer than "
                                         f"the {-(-needed // 8)} its {frame.width}x{frame.height} pixels need",
                                         "corrupt")
            pos = end
    return scans
