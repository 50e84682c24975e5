"""Image decoding and eval preprocessing in numpy + Pillow: the one source of truth.

Training evaluation, the export parity gate, INT8 calibration, the Predictor and serve-local all
call this module, so a model sees the same pixels wherever it runs. No torch here (see docs/architecture.md).
"""
from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from toolkit.errors import UserError
from toolkit.limits import DEFAULT_MAX_PIXELS  # noqa: F401  (re-exported: decoding's default)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What a classifier needs to decode. Servers use SERVE_FORMATS; image folders may hold a few more.
SERVE_FORMATS = ("JPEG", "PNG", "WEBP")
FOLDER_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
# File names an image folder is listed by (data sets, predict's folders and globs): FOLDER_FORMATS' extensions.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageError(UserError):
    """An image that cannot be used. `kind` says why: empty, unsupported, too_large or corrupt."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return "image"


def open_image(source: Any, max_pixels: int = DEFAULT_MAX_PIXELS,
               formats: Iterable[str] = FOLDER_FORMATS) -> Image.Image:
    """Decode `source` into an RGB PIL image, the same way everywhere.

    `source` is a path, bytes, a binary file object, a PIL image or a numpy array (HxW, HxWx1,
    HxWx3 or HxWx4, uint8 or uint16). The pixel count is checked after `Image.open` (which only
    reads the header) and before `load()` (which decodes), so a decompression bomb costs nothing.
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return to_rgb(_from_array(source, name))
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(f"{name}: empty body, expected JPEG, PNG or WebP bytes", "empty")
        fp: Any = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise ImageError(f"{name}: no such file", "missing")
        if os.path.getsize(source) == 0:
            raise ImageError(f"{name}: empty file, expected an image", "empty")
        fp = source
    elif hasattr(source, "read"):
        fp = source
    else:
        raise ImageError(f"unsupported image input of type {type(source).__name__}; expected a path, "
                         "bytes, a PIL image or a numpy array", "unsupported")
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError as exc:  # Pillow's own cap (about 179 MP) fires inside open()
        raise ImageError(f"{name}: {exc}", "too_large") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image, expected one of {', '.join(formats)}",
                         "unsupported") from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"{name}: cannot read image ({exc})", "corrupt") from None
    if img.format not in formats:
        raise ImageError(f"{name}: {img.format} images are not accepted, expected one of "
                         f"{', '.join(formats)}", "unsupported")
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} is {width * height / 1e6:.1f} megapixels, over the "
                         f"limit of {max_pixels / 1e6:.1f}", "too_large")
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels", "corrupt")
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: {exc}", "too_large") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})", "corrupt") from None
    return to_rgb(img)


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: array of shape {arr.shape}; expected HxW, HxWx3 or HxWx4", "unsupported")
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageError(f"{name}: array of dtype {arr.dtype}; expected uint8 or uint16", "unsupported")
    return Image.fromarray(np.ascontiguousarray(arr))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, upright. Alpha is composited onto white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: scale to 8 bits instead of letting Pillow clip at 255.
        arr = np.asarray(img, dtype=np.uint32)
        peak = 65535 if img.mode.startswith("I;16") or arr.max() > 255 else 255
        img = Image.fromarray((arr * 255 // peak).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


@dataclass(frozen=True)
class Preprocess:
    """Eval preprocessing: resize the shorter side, center-crop a square, scale to [0, 1], normalise.

    Output is float32, channels RGB, layout CHW (NCHW for a batch). `to_dict()` is what export writes
    into the ONNX metadata, and `from_dict()` is how a Predictor rebuilds it from that file alone.
    """

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    channel_order: str = field(default="RGB", init=False)
    layout: str = field(default="NCHW", init=False)
    value_range: tuple = field(default=(0.0, 1.0), init=False)

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"preprocess.interpolation: {self.interpolation!r}; expected one of "
                            f"{', '.join(INTERPOLATIONS)}")
        if not (0 < self.crop <= self.resize):
            raise UserError(f"preprocess: crop {self.crop} must be positive and at most resize {self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UserError("preprocess: mean and std need three values each, std positive")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"], d["value_range"] = list(self.mean), list(self.std), list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        if d.get("channel_order", "RGB") != "RGB" or d.get("layout", "NCHW") != "NCHW":
            raise UserError(f"preprocess: unsupported channel order/layout {d.get('channel_order')}/"
                            f"{d.get('layout')}; expected RGB/NCHW")
        return cls(resize=int(d["resize"]), crop=int(d["crop"]), interpolation=d["interpolation"],
                   mean=tuple(d["mean"]), std=tuple(d["std"]))

    @classmethod
    def from_model(cls, path: str) -> "Preprocess":
        """The preprocessing stored in an exported model's metadata, read without opening a session (for
        clients of a model served elsewhere, e.g. by Triton). toolkit.contract.ContractError if the file
        is missing, unreadable or not a toolkit export."""
        from toolkit import contract

        return cls.from_dict(contract.read_file(path).preprocess)

    def resize_crop(self, img: Image.Image) -> np.ndarray:
        """RGB image -> uint8 HxWx3 array of crop x crop pixels (what a raw-input model takes)."""
        width, height = img.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = max(self.resize, int(self.resize * long / short))
        size = (self.resize, new_long) if width <= height else (new_long, self.resize)
        if size != img.size:
            img = img.resize(size, INTERPOLATIONS[self.interpolation])
        width, height = img.size
        left = int(round((width - self.crop) / 2.0))
        top = int(round((height - self.crop) / 2.0))
        img = img.crop((left, top, left + self.crop, top + self.crop))
        return np.asarray(img, dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ...xHxWx3 -> float32 ...x3xHxW, scaled to [0, 1] then normalised."""
        x = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def __call__(self, source: Any, max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: Iterable[str] = FOLDER_FORMATS) -> np.ndarray:
        """One image (any `open_image` source) -> float32 3xHxW."""
        return self.normalize(self.resize_crop(open_image(source, max_pixels, formats)))

    def batch(self, sources: list, **kwargs) -> np.ndarray:
        """A list of images -> float32 Nx3xHxW."""
        return np.stack([self(s, **kwargs) for s in sources]) if sources else \
            np.zeros((0, 3, self.crop, self.crop), np.float32)
