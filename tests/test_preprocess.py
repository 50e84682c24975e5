"""toolkit.preprocess: bounded resize, draft JPEG decoding, EXIF that cannot break a decode, MPO, and the
checks on the eval transform's values (no torch needed)."""
import io

import numpy as np
import pytest
from PIL import Image

from toolkit.errors import UserError
from toolkit.preprocess import (DECODE_MODES, FIT_MODES, INTERPOLATIONS, SERVE_FORMATS, WHOLE_RESIZE_ASPECT, ImageError,
                                Preprocess, open_image)


def _photo(width, height, seed=0) -> Image.Image:
    """Smooth colour fields plus noise: compresses and resamples like a picture."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)).astype(int)
    return Image.fromarray(np.clip(img + rng.integers(-10, 11, img.shape), 0, 255).astype(np.uint8))


def _encoded(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _resize_whole_then_crop(pre: Preprocess, img: Image.Image) -> np.ndarray:
    """The eval transform as it always was: the whole image resized (short side -> resize), then cropped."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_long = max(pre.resize, int(pre.resize * long / short))
    size = (pre.resize, new_long) if w <= h else (new_long, pre.resize)
    if size != img.size:
        img = img.resize(size, INTERPOLATIONS[pre.interpolation])
    left, top = int(round((size[0] - pre.crop) / 2.0)), int(round((size[1] - pre.crop) / 2.0))
    return np.asarray(img.crop((left, top, left + pre.crop, top + pre.crop)))


# ------------------------------------------------------------------------------------------------
# Normalisation: channels first, bit for bit the arithmetic as written

@pytest.mark.parametrize("shape", [(224, 224, 3), (2, 32, 32, 3), (1, 1, 3), (7, 5, 3)])
def test_normalize_is_bit_identical_to_the_formula_in_float32(shape):
    """(x / 255 - mean) / std in float32 on HxWx3 then moved to 3xHxW, as it always was computed: the same
    bits (calibration, parity and saved reports depend on them), C-contiguous, from any uint8 batch."""
    pre = Preprocess(resize=36, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    x = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    expected = np.ascontiguousarray(np.moveaxis(x, -1, -3))
    got = pre.normalize(pixels)
    assert got.dtype == np.float32 and got.shape == expected.shape and got.flags.c_contiguous
    assert got.tobytes() == expected.tobytes()
    assert pixels.shape == shape and pixels.dtype == np.uint8   # the input is left as it was


# ------------------------------------------------------------------------------------------------
# The resize: identical pixels for ordinary images, bounded work for thin ones

@pytest.mark.parametrize("size", [(640, 480), (480, 640), (300, 300), (36, 36), (1, 1), (7, 50), (50, 7),
                                  (800, 100), (30, 40)])
@pytest.mark.parametrize("interpolation", list(INTERPOLATIONS))
def test_ordinary_images_keep_exactly_the_pixels_of_resize_then_crop(size, interpolation):
    pre = Preprocess(resize=40, crop=32, interpolation=interpolation)
    img = _photo(*size)
    assert max(size) / min(size) <= WHOLE_RESIZE_ASPECT
    assert np.array_equal(pre.resize_crop(img), _resize_whole_then_crop(pre, img))


@pytest.mark.parametrize("size", [(1_000_000, 1), (1, 1_000_000), (10_000_000, 1), (300_000, 3)])
def test_thin_images_cost_what_their_crop_costs(size):
    """Resized whole, 1000000x1 would be 256000000x256 pixels (Pillow: MemoryError); 10000x1 took 5 s and
    2.6 GB. Only the crop is resampled now, so each is an ordinary 224x224 result."""
    width, height = size
    ramp = np.linspace(0, 255, width * height).astype(np.uint8).reshape(height, width)
    arr = np.stack([ramp] * 3, axis=-1)
    x = Preprocess()(_encoded(Image.fromarray(arr), "PNG"))
    assert x.shape == (3, 224, 224) and np.isfinite(x).all()


def test_the_crop_box_path_matches_the_whole_resize_up_to_a_sub_pixel_shift():
    img = _photo(4000, 300, seed=3)  # 13:1, beyond WHOLE_RESIZE_ASPECT
    pre = Preprocess(resize=64, crop=48)
    diff = np.abs(pre.resize_crop(img).astype(int) - _resize_whole_then_crop(pre, img).astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 8


# ------------------------------------------------------------------------------------------------
# Fit modes: crop (above), letterbox and squash keep the whole image

def _framed(width, height) -> Image.Image:
    """A mid-grey picture with a 4-pixel red frame on its edges: where the edges land shows the geometry."""
    arr = np.full((height, width, 3), 128, np.uint8)
    for edge in (np.s_[:4, :], np.s_[-4:, :], np.s_[:, :4], np.s_[:, -4:]):
        arr[edge] = (255, 0, 0)
    return Image.fromarray(arr)


def _red(pixels: np.ndarray) -> np.ndarray:
    return (pixels[..., 0] > 200) & (pixels[..., 1] < 60)


def test_crop_cuts_the_edges_that_letterbox_and_squash_keep():
    img = _framed(64, 32)  # 2:1
    crop = Preprocess(resize=40, crop=32).pixels(img)
    assert not _red(crop[8:24, 0]).any() and not _red(crop[8:24, -1]).any()  # the left and right edges are cut
    for fit in ("letterbox", "squash"):
        out = Preprocess(resize=40, crop=32, fit=fit).pixels(img)
        assert _red(out[12:20, 0]).all() and _red(out[12:20, -1]).all(), fit  # both side edges are in the picture


def test_letterbox_keeps_the_aspect_and_pads_with_the_mean_colour():
    pre = Preprocess(resize=40, crop=32, fit="letterbox")
    assert pre.pad_colour == (124, 116, 104)  # round(ImageNet mean x 255)
    out = pre.pixels(_framed(64, 32))  # 32x16 picture, 8 rows of padding above and below
    assert out.shape == (32, 32, 3)
    assert (out[:8] == (124, 116, 104)).all() and (out[-8:] == (124, 116, 104)).all()
    assert _red(out[8]).all() and _red(out[23]).all()  # the top and bottom edges, right by the pad
    tall = pre.pixels(_framed(22, 64))  # 11x32: 10 columns of pad left, 11 right
    assert (tall[:, :10] == (124, 116, 104)).all() and (tall[:, 21:] == (124, 116, 104)).all()
    assert _red(tall[:, 10]).all() and _red(tall[:, 20]).all()
    grey = Preprocess(resize=40, crop=32, fit="letterbox", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert grey.pad_colour == (128, 128, 128) and (grey.pixels(_framed(64, 16))[0] == 128).all()
    assert np.abs(pre(_framed(64, 32))[:, :8]).max() < 0.01  # the pad normalises to about 0


def test_squash_fills_the_square_and_a_square_image_is_the_same_in_letterbox_and_squash():
    pre = Preprocess(resize=40, crop=32, fit="squash")
    out = pre.pixels(_framed(64, 32))
    assert out.shape == (32, 32, 3) and _red(out[0]).all() and _red(out[-1]).all()
    assert _red(out[:, 0]).all() and _red(out[:, -1]).all()  # 2:1 stretched to 1:1: every edge on the border
    img = _photo(300, 300)
    assert np.array_equal(pre.pixels(img), Preprocess(resize=40, crop=32, fit="letterbox").pixels(img))
    assert np.array_equal(pre.pixels(img), np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR)))


@pytest.mark.parametrize("fit", ["letterbox", "squash"])
@pytest.mark.parametrize("size", [(1_000_000, 1), (1, 1_000_000), (300_000, 3), (3, 300_000)])
def test_thin_images_stay_cheap_in_every_fit(fit, size, monkeypatch):
    """squash would resample a 1x1000000 image into 224x1000000 pixels first (Pillow's horizontal pass):
    it is resized vertically first instead; letterbox's passes never outgrow the input."""
    resize, passes = Image.Image.resize, []

    def recorded(img, new_size, *args, **kwargs):
        passes.append(new_size[0] * img.height)  # what Pillow's horizontal pass holds
        return resize(img, new_size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recorded)
    width, height = size
    ramp = np.linspace(0, 255, width * height).astype(np.uint8).reshape(height, width)
    x = Preprocess(fit=fit)(np.stack([ramp] * 3, axis=-1))
    assert x.shape == (3, 224, 224) and np.isfinite(x).all()
    assert passes and max(passes) <= max(width * height, WHOLE_RESIZE_ASPECT * 224 * 224)


def test_the_tall_squash_path_matches_the_one_call_resize_to_rounding():
    img = _photo(20, 3000, seed=4)  # taller than WHOLE_RESIZE_ASPECT x crop, narrower than crop
    pre = Preprocess(resize=40, crop=32, fit="squash")
    assert img.height > WHOLE_RESIZE_ASPECT * pre.crop
    one_call = np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(pre.pixels(img).astype(int) - one_call).max() <= 1


def test_the_fit_round_trips_old_dicts_crop_and_a_bad_fit_is_one_clear_error():
    for fit in FIT_MODES:
        pre = Preprocess(resize=40, crop=32, fit=fit)
        assert Preprocess.from_dict(pre.to_dict()) == pre and pre.to_dict()["fit"] == fit
    old = {k: v for k, v in Preprocess(resize=40, crop=32).to_dict().items() if k != "fit"}
    assert Preprocess.from_dict(old).fit == "crop"
    with pytest.raises(UserError, match="preprocess.fit: 'pad'; expected one of crop, letterbox, squash"):
        Preprocess(fit="pad")


# ------------------------------------------------------------------------------------------------
# Draft decoding of JPEGs

def test_draft_decodes_jpegs_at_the_smallest_scale_that_covers_the_resize():
    jpeg = _encoded(_photo(2048, 1536), "JPEG", quality=90)
    assert Preprocess(resize=256, crop=224, decode="full").open(jpeg).size == (2048, 1536)
    assert Preprocess(resize=256, crop=224).open(jpeg).size == (512, 384)  # 1/6 would do: libjpeg has 1/4
    assert Preprocess(resize=192, crop=160).open(jpeg).size == (256, 192)  # 1/8
    assert Preprocess(resize=1000, crop=224).open(jpeg).size == (2048, 1536)  # no scale keeps 1000
    png = _encoded(_photo(2048, 1536), "PNG")
    assert Preprocess(resize=256, crop=224).open(png).size == (2048, 1536)  # only JPEGs have a draft mode


def test_draft_and_full_decode_give_nearly_the_same_pixels():
    jpeg = _encoded(_photo(2048, 1536, seed=1), "JPEG", quality=90)
    draft = Preprocess(resize=256, crop=224).pixels(jpeg).astype(int)
    full = Preprocess(resize=256, crop=224, decode="full").pixels(jpeg).astype(int)
    diff = np.abs(draft - full)
    assert draft.shape == full.shape == (224, 224, 3)
    assert 0 < diff.mean() < 3 and diff.max() < 40


def test_the_decode_mode_round_trips_and_old_dicts_decode_in_full():
    pre = Preprocess(resize=40, crop=32)
    assert pre.decode == "draft" and Preprocess.from_dict(pre.to_dict()) == pre
    full = Preprocess(resize=40, crop=32, decode="full")
    assert Preprocess.from_dict(full.to_dict()) == full
    old = {k: v for k, v in pre.to_dict().items() if k != "decode"}
    assert Preprocess.from_dict(old).decode == "full"


# ------------------------------------------------------------------------------------------------
# EXIF and MPO

def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
def test_a_broken_exif_block_leaves_the_image_unrotated(fmt):
    img = _photo(40, 30)
    blob = _encoded(img, fmt, exif=b"Exif\x00\x00" + b"\xff" * 40)  # ImageOps.exif_transpose: SyntaxError
    assert open_image(blob).size == (40, 30)
    assert open_image(_encoded(img, fmt, exif=_exif(6))).size == (30, 40)  # a good one still turns it


def test_exif_orientation_is_applied_before_the_draft_sized_resize():
    jpeg = _encoded(_photo(1600, 1200), "JPEG", exif=_exif(6))
    assert Preprocess(resize=256, crop=224).open(jpeg).size == (300, 400)  # decoded at 1/4, then turned


def test_mpo_phone_photos_are_read_as_jpeg_first_frame():
    first, second = _photo(64, 48, seed=1), _photo(64, 48, seed=2)
    mpo = _encoded(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    got = np.asarray(open_image(mpo, formats=SERVE_FORMATS)).astype(int)
    want = np.asarray(open_image(_encoded(first, "JPEG"))).astype(int)
    assert np.abs(got - want).mean() < 1.0  # the first frame, not the second
    assert Preprocess(resize=40, crop=32).pixels(mpo, formats=SERVE_FORMATS).shape == (32, 32, 3)


# ------------------------------------------------------------------------------------------------
# Errors stay ImageErrors

def test_a_pillow_error_of_any_type_is_an_image_error():
    jpeg = _encoded(_photo(64, 48), "JPEG")
    with pytest.raises(ImageError) as e:
        open_image(jpeg[: len(jpeg) // 2])
    assert e.value.kind == "corrupt"
    with pytest.raises(ImageError) as e:
        open_image(np.zeros((0, 5, 3), np.uint8))
    assert e.value.kind == "corrupt"
    with pytest.raises(ImageError, match="La images cannot be converted") as e:
        open_image(Image.new("La", (8, 8)))  # Pillow: ValueError, conversion from La to L not supported
    assert e.value.kind == "unsupported"


@pytest.mark.parametrize("kwargs, message", [
    ({"std": (0.2, float("nan"), 0.2)}, r"preprocess\.std"),
    ({"std": (0.2, 0.0, 0.2)}, r"preprocess\.std"),
    ({"mean": (float("inf"), 0.4, 0.4)}, r"preprocess\.mean"),
    ({"resize": 9000, "crop": 224}, r"preprocess\.resize: 9000; expected a whole number of pixels from 1 to 8192"),
    ({"resize": 100, "crop": 120}, r"preprocess\.crop: 120 with resize 100"),
    ({"decode": "quick"}, r"preprocess\.decode"),
])
def test_out_of_range_values_are_one_clear_error(kwargs, message):
    with pytest.raises(UserError, match=message):
        Preprocess(**kwargs)


# ------------------------------------------------------------------------------------------------
# The JPEG's markers, read before decoding: the scan cap and the truncation bound

def test_a_progressive_scan_bomb_is_refused_before_decoding():
    """A grey 6000x6000 progressive JPEG repeating one cheap AC scan 10,000 times (~700 KB, ~35 s of
    libjpeg work): refused from its markers, for bytes, paths, file objects and unloaded PIL images."""
    from hostile_images import scan_bomb
    from toolkit.limits import MAX_JPEG_SCANS

    bomb = scan_bomb(10_000)
    assert len(bomb) < 1_000_000 and Image.open(io.BytesIO(bomb)).size == (6000, 6000)
    for source in (bomb, io.BytesIO(bomb), Image.open(io.BytesIO(bomb))):
        with pytest.raises(ImageError, match=f"over {MAX_JPEG_SCANS} scans") as e:
            Preprocess().pixels(source)
        assert e.value.kind == "too_large"
    with pytest.raises(ImageError, match="scans"):
        Preprocess(decode="full").pixels(scan_bomb(MAX_JPEG_SCANS))   # one DC scan + MAX_JPEG_SCANS AC scans


def test_pillows_own_pixel_cap_is_said_in_our_words(recwarn):
    """A header of 10,000 MP trips Pillow's cap inside Image.open, before ours: its message named Pillow's
    179 MP limit, not the caller's; a max_pixels above Pillow's cannot be honoured, and says so."""
    from hostile_images import png_header

    with pytest.raises(ImageError, match=r"^image: 10000.0 megapixels, over the limit of 40.0 megapixels$") as e:
        Preprocess().pixels(png_header(100_000, 100_000))
    assert e.value.kind == "too_large"
    with pytest.raises(ImageError, match=r"over Pillow's own limit of 179.0 .* which applies before max_pixels"):
        Preprocess().pixels(png_header(100_000, 100_000), max_pixels=300_000_000)
    with pytest.raises(ImageError, match=r"12000x12000 is 144.0 megapixels, over the limit of 40.0 megapixels"):
        Preprocess().pixels(png_header(12_000, 12_000))


def test_the_scan_cap_is_exact_and_ordinary_jpegs_pass(tmp_path):
    from hostile_images import scan_bomb
    from toolkit.jpeg_scans import check_jpeg
    from toolkit.limits import MAX_JPEG_SCANS

    at_cap = scan_bomb(MAX_JPEG_SCANS - 1, side=64)
    assert check_jpeg(at_cap, MAX_JPEG_SCANS) == MAX_JPEG_SCANS
    assert np.asarray(open_image(at_cap)).mean() == pytest.approx(128, abs=1)
    path = tmp_path / "bomb.jpg"
    path.write_bytes(scan_bomb(MAX_JPEG_SCANS, side=64))
    with pytest.raises(ImageError, match="scans"):
        open_image(str(path))
    photo = _photo(640, 480)
    for mode, save, scans in (("RGB", {}, 1), ("RGB", {"progressive": True}, 10), ("L", {"progressive": True}, 6),
                              ("CMYK", {"progressive": True}, 18), ("RGB", {"subsampling": 0, "optimize": True}, 1)):
        data = _encoded(photo.convert(mode), "JPEG", **save)
        assert check_jpeg(data, MAX_JPEG_SCANS) == scans, (mode, save)
        open_image(data)
    flat = _encoded(Image.new("L", (4000, 3000), 200), "JPEG", optimize=True)   # ~2 bits a block: the bound
    assert open_image(flat).size == (4000, 3000)


def test_a_jpeg_cut_short_with_an_end_marker_is_refused_not_padded_with_grey():
    """Header 8000x5000, 4 KB of data, then EOI: libjpeg would pad the rest with grey and only warn."""
    from hostile_images import truncated_jpeg

    for decode in DECODE_MODES:
        with pytest.raises(ImageError, match="truncated JPEG") as e:
            Preprocess(decode=decode).pixels(truncated_jpeg())
        assert e.value.kind == "corrupt"
    progressive = _encoded(_photo(2000, 1500), "JPEG", progressive=True)
    with pytest.raises(ImageError, match="truncated JPEG"):
        open_image(progressive[:3000] + b"\xff\xd9")   # cut inside the first (DC) scan


# ------------------------------------------------------------------------------------------------
# Transparency: a tRNS colour key is composited on white like every other kind of alpha

@pytest.mark.parametrize("mode, key, other", [("RGB", (10, 20, 30), (200, 0, 0)), ("L", 7, 90), ("I;16", 5000, 1000)])
def test_a_png_colour_key_is_composited_on_white(mode, key, other):
    img = Image.new(mode, (4, 2), key)
    img.putpixel((0, 0), other)
    png = _encoded(img, "PNG", transparency=key)
    assert Image.open(io.BytesIO(png)).info["transparency"] == key
    got = np.asarray(open_image(png))
    assert (got[0, 1:] == 255).all() and (got[1] == 255).all()   # the keyed pixels: white
    assert (got[0, 0] != 255).any()                               # the other one: its own colour
    unkeyed = np.asarray(open_image(_encoded(img, "PNG")))
    assert (got[0, 0] == unkeyed[0, 0]).all()


# ------------------------------------------------------------------------------------------------
# Sources that cannot be images: one ImageError each

def test_unusable_sources_are_one_image_error_each(tmp_path):
    import os

    closed = Image.new("RGB", (10, 10))
    closed.close()
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    cases = [(Image.new("RGB", (0, 0)), "0x0 has no pixels"), (Image.new("L", (5, 0)), "has no pixels"),
             (closed, "was it closed"), (str(fifo), r"not a regular file \(a FIFO\)"),
             (str(tmp_path), r"not a regular file \(a folder\)"), (str(tmp_path / "none.png"), "no such file")]
    for source, message in cases:
        with pytest.raises(ImageError, match=message):
            Preprocess().pixels(source)


def test_a_lazily_opened_jpeg_decodes_as_its_path_does(tmp_path):
    """Image.open(path) given to the transform decoded every pixel while the path itself was draft-decoded:
    the model saw other pixels than the ones it was validated on."""
    path = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)).save(path, quality=90)
    pre = Preprocess(resize=256, crop=224)
    from_path = pre.pixels(str(path))
    assert np.array_equal(pre.pixels(Image.open(path)), from_path)
    loaded = Image.open(path)
    loaded.load()   # decoded in full already: draft cannot apply, the full pixels are used
    assert pre.pixels(loaded).shape == from_path.shape
