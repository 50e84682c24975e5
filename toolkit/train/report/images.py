"""The report's pictures as data: URIs (the page is one file): JPEG thumbnails of images, PNG of figures."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from toolkit.preprocess import IMAGE_EXTENSIONS as EXTENSIONS, ImageError, open_image

THUMB = 128  # the longest side of a thumbnail, pixels


def name_of(source, where: str) -> str:
    """A source's name in the report: its path, or for an in-memory image (digits) where it is."""
    return source if isinstance(source, str) else f"(in-memory image: {where})"


def data_uri(pixels: np.ndarray, size: int = THUMB) -> str:
    """uint8 H x W x 3 -> a JPEG data: URI, the longest side `size` (small images are scaled up, sharp)."""
    img = Image.fromarray(np.ascontiguousarray(pixels, np.uint8))
    scale = size / max(img.size)
    resample = Image.NEAREST if scale > 1 else Image.BILINEAR
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_uri(path, max_pixels: int, size: int = THUMB // 2) -> str | None:
    """A thumbnail of an image file, or None when it can't be read (the page shows the name alone)."""
    if not isinstance(path, str):
        return None
    try:
        img = open_image(path, max_pixels)
    except (ImageError, OSError, ValueError):
        return None
    img.thumbnail((size, size))
    return data_uri(np.asarray(img.convert("RGB")), size=max(img.size))


def figure_uri(fig) -> str:
    """A matplotlib figure -> a PNG data: URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_file_uri(path: str) -> str:
    with open(path, "rb") as fh:
        return "data:image/png;base64," + base64.b64encode(fh.read()).decode("ascii")
