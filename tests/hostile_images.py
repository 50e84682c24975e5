"""Hostile image files written byte by byte (shared by the decoding tests, the serve tests and the
hostile-load benchmark)."""
import io
import struct
import zlib

from PIL import Image


def _segment(code: int, payload: bytes) -> bytes:
    return bytes((0xFF, code)) + struct.pack(">H", len(payload) + 2) + payload


def _entropy(bits: str) -> bytes:
    """A bit string -> entropy-coded bytes: padded with 1-bits, each 0xFF followed by a stuffed 0x00."""
    bits += "1" * (-len(bits) % 8)
    out = bytearray()
    for i in range(0, len(bits), 8):
        out.append(int(bits[i:i + 8], 2))
        if out[-1] == 0xFF:
            out.append(0)
    return bytes(out)


def scan_bomb(scans: int = 10_000, side: int = 6000) -> bytes:
    """A grey side x side progressive JPEG: one DC scan (every block mid-grey), then the same AC scan
    `scans` times, each coding all its blocks as end-of-band runs of 32767 (a few dozen bytes a scan).
    Every scan makes libjpeg pass over all (side/8)^2 blocks; 10,000 scans at 6000x6000 is ~700 KB."""
    blocks = (-(-side // 8)) ** 2
    # One Huffman code of length 1 in each table: DC symbol 0 (difference 0), AC symbol 0xE0 (EOB14).
    dht = bytes([0x00, 1] + [0] * 15 + [0x00]) + bytes([0x10, 1] + [0] * 15 + [0xE0])
    head = (b"\xff\xd8" + _segment(0xDB, b"\x00" + bytes([1] * 64))
            + _segment(0xC2, struct.pack(">BHHB", 8, side, side, 1) + b"\x01\x11\x00")
            + _segment(0xC4, dht))
    dc_scan = _segment(0xDA, b"\x01\x01\x00\x00\x00\x00") + b"\x00" * (blocks // 8) + _entropy("0" * (blocks % 8))
    runs = -(-blocks // 32767)
    ac_scan = _segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") + _entropy(("0" + "1" * 14) * runs)
    return head + dc_scan + ac_scan * scans + b"\xff\xd9"


def truncated_jpeg(size=(8000, 5000), keep: int = 4000) -> bytes:
    """A real JPEG whose header claims `size`, cut after `keep` bytes and given an end marker, as a
    careless writer leaves it: libjpeg pads the missing blocks with grey and only warns."""
    buf = io.BytesIO()
    Image.radial_gradient("L").resize(size).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()[:keep] + b"\xff\xd9"


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with almost no image data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
