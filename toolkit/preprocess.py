"""Image decoding and eval preprocessing in numpy + Pillow: the one source of truth.

Training evaluation, the export parity gate, INT8 calibration, the Predictor and serve-local all
call this module, so a model sees the same pixels wherever it runs. No torch here (see docs/architecture.md).

Hostile input is bounded here, for every caller: the pixel cap is checked before decoding, a JPEG's
scans are counted and sized from its markers before decoding (toolkit.jpeg_scans), any error Pillow
raises while decoding becomes an ImageError, a broken EXIF block leaves the image unrotated, and the
resize only computes the square it returns (a 1000000x1 image costs about what its pixels do, in every fit).
"""
from __future__ import annotations

import io
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from toolkit import contract
from toolkit.contract import (DECODE_MODES, FIT_MODES, INTERPOLATION_NAMES,  # noqa: F401 (public here too)
                              PreprocessSpec)
from toolkit.errors import UserError
from toolkit.jpeg_scans import JpegStructureError, check_jpeg
from toolkit.limits import DEFAULT_MAX_PIXELS, MAX_JPEG_SCANS, MAX_PREPROCESS_SIDE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What a classifier needs to decode. Servers use SERVE_FORMATS; image folders may hold a few more.
# MPO (the multi-picture JPEG many phone cameras write) counts as JPEG: its first frame is read.
SERVE_FORMATS = ("JPEG", "PNG", "WEBP")
FOLDER_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
# File names an image folder is listed by (data sets, predict's folders and globs): FOLDER_FORMATS' extensions.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

# Each resize filter the contract names -> Pillow's.
INTERPOLATIONS = {name: Image.Resampling[name.upper()] for name in INTERPOLATION_NAMES}
# How JPEGs are decoded by the eval transform (contract.DECODE_MODES): "draft" lets libjpeg scale by 1/2,
# 1/4 or 1/8 while decoding (the smallest scale whose short side still covers `resize`); "full" decodes
# every pixel. Model files without the key predate draft decoding and keep "full".
# Up to this aspect ratio (long side / short side) the eval resize resamples the whole image; beyond it,
# only the crop (see Preprocess.resize_crop). squash resizes in one call up to this many times crop rows.
WHOLE_RESIZE_ASPECT = 8

# EXIF orientation -> the transpose that makes the picture upright.
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(UserError):
    """An image that cannot be used. `kind` says why: empty, missing, unsupported, too_large or corrupt."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return "image"


def _file_object(source: Any, name: str) -> Any:
    """What Image.open reads for `source` (bytes, a path or a file object)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(f"{name}: empty body, expected JPEG, PNG or WebP bytes", "empty")
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            if os.path.exists(source):   # a FIFO would block the read for ever, a device never end
                raise ImageError(f"{name}: not a regular file ({_file_kind(source)}); expected an image file",
                                 "unsupported")
            raise ImageError(f"{name}: no such file", "missing")
        if os.path.getsize(source) == 0:
            raise ImageError(f"{name}: empty file, expected an image", "empty")
        return source
    if hasattr(source, "read"):
        return source
    raise ImageError(f"unsupported image input of type {type(source).__name__}; expected a path, "
                     "bytes, a PIL image or a numpy array", "unsupported")


def _file_kind(path: Any) -> str:
    mode = os.stat(path).st_mode
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


def _pixel_count(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n} pixels"   # not "a limit of 0.0"


def _check_cap(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} is {_pixel_count(width * height)}, over the limit of "
                         f"{_pixel_count(max_pixels)}", "too_large")


def _pil_image(img: Image.Image, name: str, max_pixels: int, min_side: int = 0) -> Image.Image:
    """A PIL image given directly, loaded: a closed one or one without pixels is an ImageError. One that
    Image.open left undecoded gets the pixel cap, the JPEG marker checks and the draft scale first, as a
    path does (so it decodes to the same pixels; draft is a no-op on an image already loaded)."""
    _check_cap(name, img.width, img.height, max_pixels)
    if getattr(img, "fp", None) is not None and img.format in ("JPEG", "MPO"):
        _check_jpeg_markers(img.fp, name)
        if min_side > 0:
            img.draft(img.mode, (min_side, min_side))
    try:
        img.load()
    except ValueError as exc:   # Pillow: "Operation on closed image"
        raise ImageError(f"{name}: the PIL image cannot be read ({exc}); was it closed?", "corrupt") from None
    except Exception as exc:  # noqa: BLE001 - a lazily opened file image decodes here
        raise ImageError(f"{name}: corrupt or truncated image ({type(exc).__name__}: {exc})"[:300],
                         "corrupt") from None
    if img.width < 1 or img.height < 1:
        raise ImageError(f"{name}: PIL image of {img.width}x{img.height} has no pixels", "corrupt")
    return img


def _sniffed_format(fp: Any) -> str | None:
    """The format Pillow's magic-byte checks give the first 16 bytes of `fp` (nothing is parsed), or None."""
    try:
        if isinstance(fp, (str, os.PathLike)):
            with open(fp, "rb") as f:
                prefix = f.read(16)
        else:
            fp.seek(0)
            prefix = fp.read(16)
    except (OSError, ValueError):
        return None
    Image.init()
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            if accept is not None and accept(prefix):
                return "JPEG" if fmt == "MPO" else fmt
        except Exception:  # noqa: BLE001 - a plugin's check that trips on 16 odd bytes: not that format
            continue
    return None


def _open_header(fp: Any, name: str, formats: tuple, max_pixels: int) -> Image.Image:
    """Image.open (the header only) plus the format and pixel-cap checks, before anything is decoded.
    Only the plugins of `formats` parse the header: a refused format (a GIF header bomb on serve) is
    named from its magic bytes and never parsed."""
    try:
        img = Image.open(fp, formats=formats)   # JPEG covers MPO (its factory returns one)
    except Image.DecompressionBombError as exc:  # Pillow's own cap (about 179 MP) fires inside open()
        raise ImageError(_over_pillow_cap(name, exc, max_pixels), "too_large") from None
    except UnidentifiedImageError:
        known = _sniffed_format(fp)
        if known is not None and known not in formats:
            raise ImageError(f"{name}: {known} images are not accepted, expected one of {', '.join(formats)}",
                             "unsupported") from None
        raise ImageError(f"{name}: not a recognised image, expected one of {', '.join(formats)}",
                         "unsupported") from None
    except Exception as exc:  # noqa: BLE001 - a malformed header raises whatever the plugin trips on
        raise ImageError(f"{name}: cannot read image ({type(exc).__name__}: {exc})"[:300], "corrupt") from None
    fmt = "JPEG" if img.format == "MPO" else img.format
    if fmt not in formats:
        raise ImageError(f"{name}: {img.format} images are not accepted, expected one of "
                         f"{', '.join(formats)}", "unsupported")
    width, height = img.size
    _check_cap(name, width, height, max_pixels)
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels", "corrupt")
    return img


def _over_pillow_cap(name: str, exc: Exception, max_pixels: int) -> str:
    """Pillow's DecompressionBombError in our words: the size against our cap, or against Pillow's where a
    caller's max_pixels is above it (Pillow refuses those before our check can run)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too many pixels"
    if max_pixels < 2 * (Image.MAX_IMAGE_PIXELS or 0):
        return f"{name}: {size}, over the limit of {_pixel_count(max_pixels)}"
    return (f"{name}: {size}, over Pillow's own limit of {2 * Image.MAX_IMAGE_PIXELS / 1e6:.1f} (PIL.Image."
            "MAX_IMAGE_PIXELS x 2), which applies before max_pixels")


def open_image(source: Any, max_pixels: int = DEFAULT_MAX_PIXELS,
               formats: Iterable[str] = FOLDER_FORMATS, min_side: int = 0) -> Image.Image:
    """Decode `source` into an RGB PIL image, the same way everywhere.

    `source` is a path, bytes, a binary file object, a PIL image or a numpy array (HxW, HxWx1,
    HxWx3 or HxWx4, uint8 or uint16). The pixel count is checked after `Image.open` (which only
    reads the header) and before `load()` (which decodes), so a decompression bomb costs nothing.
    With `min_side`, a JPEG decodes at the smallest DCT scale (1/2, 1/4, 1/8; Pillow's `draft`) whose
    short side is still >= min_side. Every failure is an ImageError, whatever Pillow raised.
    """
    name, formats = _describe(source), tuple(formats)
    if isinstance(source, Image.Image):
        return _rgb(_pil_image(source, name, max_pixels, min_side), name)
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_cap(name, source.shape[1], source.shape[0], max_pixels)
        return _rgb(_from_array(source, name), name)
    img = _open_header(_file_object(source, name), name, formats, max_pixels)
    if img.format in ("JPEG", "MPO"):
        _check_jpeg_markers(img.fp, name)
    try:
        if min_side > 0 and img.format in ("JPEG", "MPO"):
            img.draft(img.mode, (min_side, min_side))
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(_over_pillow_cap(name, exc, max_pixels), "too_large") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode a {img.width}x{img.height} image",
                         "too_large") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt body raises whatever the decoder trips on
        raise ImageError(f"{name}: corrupt or truncated image ({type(exc).__name__}: {exc})"[:300],
                         "corrupt") from None
    return _rgb(img, name)


def _check_jpeg_markers(fp: Any, name: str) -> None:
    """check_jpeg over the file Image.open read the header of (from offset 0, where the JPEG starts):
    the scan cap and the truncation bound, before libjpeg sees a byte. The position is put back."""
    where = fp.tell()
    try:
        check_jpeg(fp, MAX_JPEG_SCANS)
    except JpegStructureError as exc:   # worded as the decoder's own errors are, for every caller's checks
        message = f"corrupt or truncated image ({exc})" if exc.kind == "corrupt" else str(exc)
        raise ImageError(f"{name}: {message}", exc.kind) from None
    except (OSError, ValueError) as exc:   # a file that fails to read: the decoder would fail on it too
        raise ImageError(f"{name}: cannot read image ({type(exc).__name__}: {exc})"[:300], "corrupt") from None
    finally:
        fp.seek(where)


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: array of shape {arr.shape}; expected HxW, HxWx3 or HxWx4", "unsupported")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{name}: array of shape {arr.shape} has no pixels", "corrupt")
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageError(f"{name}: array of dtype {arr.dtype}; expected uint8 or uint16", "unsupported")
    return Image.fromarray(np.ascontiguousarray(arr))


def _rgb(img: Image.Image, name: str) -> Image.Image:
    """to_rgb, with a mode Pillow cannot convert (e.g. a LAB TIFF) as an ImageError."""
    try:
        return to_rgb(img)
    except (ValueError, OSError, TypeError) as exc:
        raise ImageError(f"{name}: {img.mode} images cannot be converted to RGB ({exc})"[:300],
                         "unsupported") from None


def upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says. A broken EXIF block is ignored: the pixels are
    still good, so the image is used as stored rather than refused."""
    try:
        method = _ORIENTATIONS.get(int(img.getexif().get(ExifTags.Base.Orientation, 1)))
    except Exception:  # noqa: BLE001 - EXIF parsing raises many types on malformed blocks
        return img
    return img.transpose(method) if method is not None else img


def _colour_key_mask(img: Image.Image) -> Image.Image | None:
    """The alpha a PNG's tRNS colour key gives an RGB or grey image (0 where a pixel equals the key),
    or None if it has no key. Palette images carry theirs into convert("RGBA") already."""
    key = img.info.get("transparency")
    if key is None or isinstance(key, bytes) or img.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "RGB"):
        return None
    keys = key if isinstance(key, tuple) else (key,)
    if len(keys) != (3 if img.mode == "RGB" else 1) or not all(isinstance(k, int) for k in keys):
        return None
    arr = np.asarray(img)
    if arr.dtype.kind in "ui" and not all(0 <= k <= np.iinfo(arr.dtype).max for k in keys):
        return None   # a 16-bit RGB key on pixels Pillow decoded to 8 bits: no pixel can equal it
    opaque = np.any(arr != np.asarray(keys, dtype=arr.dtype), axis=-1) if img.mode == "RGB" else arr != keys[0]
    return Image.fromarray(opaque.astype(np.uint8) * 255, "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, upright. Alpha (an alpha channel, a palette's transparency or a
    tRNS colour key) is composited onto white."""
    img = upright(img)
    key_mask = _colour_key_mask(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: scale to 8 bits instead of letting Pillow clip at 255.
        arr = np.clip(np.asarray(img, dtype=np.int64), 0, None)
        peak = 65535 if img.mode.startswith("I;16") or arr.max() > 255 else 255
        img = Image.fromarray((np.minimum(arr, peak) * 255 // peak).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if key_mask is not None:
        img = Image.composite(img, Image.new("RGB", img.size, (255, 255, 255)), key_mask)
    return img


@dataclass(frozen=True)
class Preprocess(PreprocessSpec):
    """Eval preprocessing: fit the image into a crop x crop square, scale to [0, 1], normalise.

    The fit (contract.FIT_MODES): crop resizes the shorter side to `resize` and centre-crops (the default,
    and what files without the key get); letterbox resizes the longer side to `crop`, keeping the aspect
    ratio, and pads the rest evenly with the mean colour (`pad_colour`, which normalises to about 0);
    squash resizes both sides to `crop`, whatever the aspect ratio. letterbox and squash keep the whole
    image and ignore `resize` (except that draft JPEG decoding still keeps the short side >= resize).

    The fields, their checks and `to_dict()` / `from_dict()` (what export writes into the ONNX metadata and
    reads back) are toolkit.contract.PreprocessSpec's; this class adds the defaults and the pixel work.
    Output is float32, channels RGB, layout CHW (NCHW for a batch).
    """

    resize: int = 256  # shorter side after the resize, pixels
    crop: int = 224  # the square center crop: the network's input
    interpolation: str = "bilinear"  # resize filter, one of INTERPOLATIONS
    mean: tuple = IMAGENET_MEAN  # per channel (R, G, B), of pixels scaled to [0, 1]
    std: tuple = IMAGENET_STD  # per channel (R, G, B)
    decode: str = "draft"  # how JPEGs decode: draft (DCT-scaled, short side >= resize) | full
    fit: str = "crop"  # how the image becomes the square: crop | letterbox | squash (FIT_MODES)

    @classmethod
    def from_spec(cls, spec: PreprocessSpec) -> "Preprocess":
        """The transform a checked spec states (e.g. toolkit.contract.read_file(path).preprocess)."""
        return cls(resize=spec.resize, crop=spec.crop, interpolation=spec.interpolation, mean=spec.mean,
                   std=spec.std, decode=spec.decode, fit=spec.fit)

    @property
    def pad_colour(self) -> tuple:
        """letterbox's padding, uint8 (R, G, B): the mean colour, round(mean x 255), so a padded pixel
        normalises to about 0 (ImageNet's mean gives (124, 116, 104))."""
        return tuple(int(min(255, max(0, round(m * 255)))) for m in self.mean)

    @classmethod
    def from_model(cls, path: str) -> "Preprocess":
        """The preprocessing stored in an exported model's metadata, read without opening a session (for
        clients of a model served elsewhere, e.g. by Triton). toolkit.contract.ContractError if the file
        is missing, unreadable or not a toolkit export."""
        return cls.from_spec(contract.read_file(path).preprocess)

    def open(self, source: Any, max_pixels: int = DEFAULT_MAX_PIXELS,
             formats: Iterable[str] = FOLDER_FORMATS) -> Image.Image:
        """`open_image`, decoding JPEGs the way this transform says (draft or full)."""
        return open_image(source, max_pixels, formats, min_side=self.resize if self.decode == "draft" else 0)

    def resize_crop(self, img: Image.Image) -> np.ndarray:
        """RGB image -> uint8 HxWx3 array of crop x crop pixels (what a raw-input model takes), as `fit`
        says: crop, letterbox or squash. The work is bounded by the input and the output, whatever the
        aspect ratio (a 1000000x1 image costs about what its pixels do)."""
        if self.fit == "letterbox":
            return self._letterbox(img)
        if self.fit == "squash":
            return self._squash(img)
        return self._centre_crop(img)

    def _centre_crop(self, img: Image.Image) -> np.ndarray:
        """fit crop: the short side resized to `resize`, then the centre crop.

        Up to WHOLE_RESIZE_ASPECT the whole image is resized, then cropped (at most that many times
        resize x resize pixels); a thinner image resamples only the crop's box in source coordinates
        (Image.resize's `box`), since resized whole a 1000000x1 image would be 256000000x256. The box path
        matches the whole path up to Pillow's float32 box coordinates (a sub-pixel shift), so it is kept
        for the images that need it."""
        width, height = img.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = max(self.resize, int(self.resize * long / short))
        new_w, new_h = (self.resize, new_long) if width <= height else (new_long, self.resize)
        left = int(round((new_w - self.crop) / 2.0))
        top = int(round((new_h - self.crop) / 2.0))
        crop = (left, top, left + self.crop, top + self.crop)
        if new_long <= WHOLE_RESIZE_ASPECT * self.resize:
            if (new_w, new_h) != (width, height):
                img = img.resize((new_w, new_h), INTERPOLATIONS[self.interpolation])
            img = img.crop(crop)
        else:
            sx, sy = width / new_w, height / new_h
            box = (crop[0] * sx, crop[1] * sy, min(width, crop[2] * sx), min(height, crop[3] * sy))
            img = img.resize((self.crop, self.crop), INTERPOLATIONS[self.interpolation], box=box)
        return np.asarray(img, dtype=np.uint8)

    def _letterbox(self, img: Image.Image) -> np.ndarray:
        """fit letterbox: the long side resized to `crop` (aspect kept, the short side at least 1 pixel),
        pasted in the middle of a crop x crop square of `pad_colour` (an odd margin puts the extra pixel
        right / below). Both resized sides are <= crop and, unless the image is smaller than the square,
        <= the source's, so Pillow's passes never hold more than the input or the output."""
        width, height = img.size
        scale = self.crop / max(width, height)
        new_w = min(self.crop, max(1, round(width * scale)))
        new_h = min(self.crop, max(1, round(height * scale)))
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), INTERPOLATIONS[self.interpolation])
        square = Image.new("RGB", (self.crop, self.crop), self.pad_colour)
        square.paste(img, ((self.crop - new_w) // 2, (self.crop - new_h) // 2))
        return np.asarray(square, dtype=np.uint8)

    def _squash(self, img: Image.Image) -> np.ndarray:
        """fit squash: both sides resized to `crop`, the aspect ratio not kept.

        Pillow resamples horizontally first, into crop x height pixels: for a tall thin image (height over
        WHOLE_RESIZE_ASPECT x crop, width under crop) that would be 224 x 1000000 for a 1x1000000 image, so
        such an image is resized vertically first (two calls; the same filter, rounded to uint8 between
        the passes)."""
        width, height = img.size
        size, method = (self.crop, self.crop), INTERPOLATIONS[self.interpolation]
        if height > WHOLE_RESIZE_ASPECT * self.crop and width < self.crop:
            img = img.resize((width, self.crop), method)
        if img.size != size:
            img = img.resize(size, method)
        return np.asarray(img, dtype=np.uint8)

    def pixels(self, source: Any, max_pixels: int = DEFAULT_MAX_PIXELS,
               formats: Iterable[str] = FOLDER_FORMATS) -> np.ndarray:
        """One image (any `open_image` source) -> uint8 crop x crop x 3: decode as this transform says,
        resize and crop. What every caller uses, so training eval, the parity gate, evaluate, predict
        and serve-local see the same pixels."""
        return self.resize_crop(self.open(source, max_pixels, formats))

    def check_batch(self, batch: np.ndarray, raw: bool) -> None:
        """UserError unless `batch` is what a model with this preprocessing takes: N x 3 x crop x crop
        (N x crop x crop x 3 for a raw-input model), every value finite (NaN would give NaN scores
        in an arbitrary order)."""
        c = self.crop
        if batch.ndim != 4 or tuple(batch.shape[1:]) != ((c, c, 3) if raw else (3, c, c)):
            layout = f"Nx{c}x{c}x3 uint8" if raw else f"Nx3x{c}x{c} float32"
            raise UserError(f"batch of shape {batch.shape}; expected {layout} (use Predictor.prepare)")
        if batch.dtype.kind in "fc" and not np.isfinite(batch).all():
            raise UserError("batch holds NaN or infinite values; expected finite inputs (use Predictor.prepare)")

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ...xHxWx3 -> float32 ...x3xHxW, scaled to [0, 1] then normalised: (x / 255 - mean) / std
        in float32, each step rounded as written. Channels first before the arithmetic, in place: in
        HxWx3 every operation broadcast over a last axis of 3 (6x slower for a 224 px image)."""
        x = np.moveaxis(pixels, -1, -3).astype(np.float32, order="C")
        x *= np.float32(1.0 / 255.0)
        x -= np.asarray(self.mean, np.float32)[:, None, None]
        x /= np.asarray(self.std, np.float32)[:, None, None]
        return x

    def __call__(self, source: Any, max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: Iterable[str] = FOLDER_FORMATS) -> np.ndarray:
        """One image (any `open_image` source) -> float32 3xHxW."""
        return self.normalize(self.pixels(source, max_pixels, formats))

    def batch(self, sources: list, **kwargs) -> np.ndarray:
        """A list of images -> float32 Nx3xHxW."""
        return np.stack([self(s, **kwargs) for s in sources]) if sources else \
            np.zeros((0, 3, self.crop, self.crop), np.float32)
