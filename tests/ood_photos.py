"""A folder of "none of these" photos for `--ood DIR` that no test uses (not a test).

The sources, all offline: the desktop backgrounds of two Debian packages (photos of nature, animals,
cities and a few abstract renders) and scikit-learn's two sample photos:

    apt-get install mate-backgrounds ukui-wallpapers        # /usr/share/backgrounds
    python tests/ood_photos.py OUT_DIR                      # -> OUT_DIR/*.png

`--skimage` writes the other folder docs/evaluate.md uses, SKIMAGE_DIR (the one `export --ood` picks
the score on): scikit-image's bundled sample images (SKIMAGE_NAMES, 22), whole and as quarters.

Each image is written whole and as its four quarters (so a model sees both scenes and close-ups), every
one scaled to at most MAX_SIDE pixels on its longer side. A background shipped at several sizes
(Elephants.jpg, Elephants_3840x2160.jpg, ...) is taken once. The Fashion-MNIST numbers in
docs/evaluate.md were measured on the folder this writes (210 images).
"""
import argparse
import os
import re
import sys

import numpy as np
from PIL import Image

BACKGROUNDS = "/usr/share/backgrounds"
MAX_SIDE = 512
SIZE_SUFFIX = re.compile(r"_\d+x\d+$")  # Elephants_3840x2160: another size of Elephants


# every sample image scikit-image ships in its wheel (no download), but `cat` (chelsea again)
SKIMAGE_NAMES = ("astronaut", "brick", "camera", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
                 "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
                 "microaneurysms", "moon", "page", "retina", "rocket", "text")


def background_files(root: str = BACKGROUNDS) -> list:
    """Every .jpg/.png under `root`, one per image (the copies at other sizes left out), sorted."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            stem, ext = os.path.splitext(name)
            if ext.lower() in (".jpg", ".jpeg", ".png"):
                found.setdefault(os.path.join(folder, SIZE_SUFFIX.sub("", stem)), os.path.join(folder, name))
    return sorted(found.values())


def sources(root: str = BACKGROUNDS) -> list:
    """(name, RGB image) of every source photo: the backgrounds, then scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    out = []
    for path in background_files(root):
        with Image.open(path) as img:
            out.append((os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "-"), img.convert("RGB")))
    sample = load_sample_images()
    out += [(f"sklearn-{os.path.splitext(os.path.basename(f))[0]}", Image.fromarray(np.asarray(a)))
            for f, a in zip(sample.filenames, sample.images)]
    return out


def skimage_sources() -> list:
    """(name, RGB image) of scikit-image's sample images (greyscale, boolean and RGBA ones made RGB)."""
    import skimage.data

    out = []
    for name in SKIMAGE_NAMES:
        pixels = np.asarray(getattr(skimage.data, name)())
        if pixels.dtype == bool:
            pixels = pixels.astype(np.uint8) * 255
        out.append((f"skimage-{name}", Image.fromarray(pixels).convert("RGB")))
    return out


def pieces(img: Image.Image) -> list:
    """The image whole and its four quarters, each at most MAX_SIDE on its longer side."""
    w, h = img.size
    crops = [img] + [img.crop((x, y, x + w // 2, y + h // 2)) for y in (0, h // 2) for x in (0, w // 2)]
    out = []
    for crop in crops:
        crop = crop.copy()
        crop.thumbnail((MAX_SIDE, MAX_SIDE), Image.BICUBIC)
        out.append(crop)
    return out


def write_folder(out_dir: str, root: str = BACKGROUNDS, use_skimage: bool = False) -> int:
    found = skimage_sources() if use_skimage else sources(root)
    if not use_skimage and len(found) <= 2:
        raise SystemExit(f"no backgrounds under {root}: apt-get install mate-backgrounds ukui-wallpapers")
    os.makedirs(out_dir, exist_ok=True)
    count = 0
    for name, img in found:
        for i, piece in enumerate(pieces(img)):
            piece.save(os.path.join(out_dir, f"{name}-{'whole' if i == 0 else f'q{i}'}.png"))
            count += 1
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--root", default=BACKGROUNDS, help="where the backgrounds are installed")
    parser.add_argument("--skimage", action="store_true", help="scikit-image's sample images instead")
    args = parser.parse_args(argv)
    print(f"wrote {write_folder(args.out_dir, args.root, args.skimage)} images to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
