"""A bounded fuzz test of the decoder: mutated PNG, JPEG, WebP, GIF, BMP, TIFF and MPO bytes (thin images,
huge declared sizes, broken EXIF among the seeds) go through the eval transform.

The oracle: every input is decoded to a valid crop x crop array, or raises toolkit.preprocess.ImageError.
Nothing else may escape: no other exception type, no MemoryError. A few hundred cases run in the default
tier, thousands under `slow`.
"""
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from toolkit.preprocess import FOLDER_FORMATS, ImageError, Preprocess, open_image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

CROP = 16
TRANSFORMS = (Preprocess(resize=20, crop=CROP), Preprocess(resize=20, crop=CROP, decode="full"))
MAX_PIXELS = 4_000_000  # a mutated header may declare anything up to this; keeps each case fast


def _encode(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _png_chunks_fixed(data: bytes) -> bytes:
    """The same PNG with every chunk CRC recomputed, so a mutation reaches past Pillow's CRC check."""
    out, pos = bytearray(data[:8]), 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        body = data[pos + 4:end]
        out += data[pos:end] + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        pos = end + 4
    return bytes(out + data[pos:])


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (valid CRC) over the data of a 4x4 image."""
    data = bytearray(_encode(Image.new("RGB", (4, 4), (9, 99, 199)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    return _png_chunks_fixed(bytes(data))


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(_encode(Image.new("RGB", (8, 8), (200, 10, 10)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _seeds() -> dict:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    bad_exif = b"Exif\x00\x00" + b"\xff" * 40  # ImageOps.exif_transpose raised SyntaxError on it (a 500)
    seeds = {
        "png": _encode(img, "PNG"), "png_la": _encode(img.convert("LA"), "PNG"),
        "png_16bit": _encode(Image.fromarray(rng.integers(0, 65535, (9, 12), dtype=np.uint16)), "PNG"),
        "png_palette": _encode(img.convert("P"), "PNG", transparency=0),
        "jpeg": _encode(img, "JPEG"), "jpeg_progressive": _encode(img, "JPEG", progressive=True),
        "jpeg_cmyk": _encode(img.convert("CMYK"), "JPEG"), "jpeg_grey": _encode(img.convert("L"), "JPEG"),
        "jpeg_exif_rotated": _encode(img, "JPEG", exif=exif.tobytes()),
        "jpeg_bad_exif": _encode(img, "JPEG", exif=bad_exif), "webp_bad_exif": _encode(img, "WEBP", exif=bad_exif),
        "png_bad_exif": _encode(img, "PNG", exif=bad_exif),
        "webp": _encode(img, "WEBP"), "webp_lossless": _encode(img, "WEBP", lossless=True),
        "gif": _encode(img.convert("P"), "GIF"),
        "gif_animated": _encode(img.convert("P"), "GIF", save_all=True, append_images=[img.rotate(90).convert("P")]),
        "bmp": _encode(img, "BMP"), "tiff": _encode(img, "TIFF"),
        "tiff_lzw": _encode(img, "TIFF", compression="tiff_lzw"),
        "mpo": _encode(img, "MPO", save_all=True, append_images=[img.rotate(180)]),
        # resized whole, these were MemoryErrors (or gigabytes and seconds): only the crop is resampled now
        "thin_png": _encode(Image.new("RGB", (1_000_000, 1), (5, 50, 150)), "PNG"),
        "tall_png": _encode(Image.new("L", (1, 1_000_000), 77), "PNG"),
        "png_declares_huge": _png_declaring(100_000, 100_000),
        "png_declares_thin": _png_declaring(3_000_000, 1),
        "jpeg_declares_huge": _jpeg_declaring(65_000, 65_000),
        "jpeg_declares_thin": _jpeg_declaring(60_000, 1),
    }
    return seeds


SEEDS = _seeds()
NAMES = sorted(SEEDS)


@st.composite
def mutated(draw):
    """A seed, then 1-6 edits: byte flips, overwrites, inserts, deletes, a truncation, a copied run; the
    positions lean towards the header, where the sizes and the chunk layout live."""
    name = draw(st.sampled_from(NAMES))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 6))):
        n = len(data)
        if n == 0:
            break
        pos = draw(st.one_of(st.integers(0, min(n - 1, 80)), st.integers(0, n - 1)))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "copy"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        else:
            start = draw(st.integers(0, n - 1))
            data[pos:pos] = data[start:start + draw(st.integers(1, 64))]
    if name.startswith("png") and draw(st.booleans()):
        data = bytearray(_png_chunks_fixed(bytes(data)))
    return name, bytes(data)


def check_decodes_or_refuses(data: bytes) -> None:
    """The oracle: a valid crop x crop result from every transform, or an ImageError and nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF and big images; that is allowed
        for pre in TRANSFORMS:
            try:
                x = pre(data, max_pixels=MAX_PIXELS, formats=FOLDER_FORMATS)
            except ImageError as exc:
                assert exc.kind in ("empty", "missing", "unsupported", "too_large", "corrupt")
                continue
            assert x.shape == (3, CROP, CROP) and x.dtype == np.float32 and np.isfinite(x).all()


@pytest.mark.parametrize("name", NAMES)
def test_every_seed_decodes_or_is_refused(name):
    check_decodes_or_refuses(SEEDS[name])


def test_the_seeds_reach_what_they_are_meant_to():
    ok = {name for name in NAMES if not _refused(SEEDS[name])}
    assert {"png", "jpeg", "webp", "gif", "bmp", "tiff", "mpo", "thin_png", "tall_png", "jpeg_bad_exif",
            "webp_bad_exif", "png_bad_exif"} <= ok
    assert open_image(SEEDS["jpeg_exif_rotated"]).size == (9, 12)
    for name in ("png_declares_huge", "jpeg_declares_huge"):
        with pytest.raises(ImageError) as e:
            open_image(SEEDS[name])  # the default 40 MP cap, before any decoding
        assert e.value.kind == "too_large"


def _refused(data: bytes) -> bool:
    try:
        TRANSFORMS[0](data)
        return False
    except ImageError:
        return True


_FUZZ = dict(deadline=None, database=None, derandomize=True, print_blob=True,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=300, **_FUZZ)
@given(mutated())
def test_fuzzed_images_decode_or_raise_image_error(case):
    check_decodes_or_refuses(case[1])


@pytest.mark.slow
@settings(max_examples=6000, **{**_FUZZ, "derandomize": False})
@given(mutated())
def test_fuzzed_images_decode_or_raise_image_error_long(case):
    check_decodes_or_refuses(case[1])
