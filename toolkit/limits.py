"""Input limits shared by decoding, training and serving. Standard library only, so the CLI can show
them as defaults without importing numpy or Pillow."""

# Decoded image cap (width x height), checked before decoding. Pillow only warns between 89 and 179
# megapixels; the toolkit refuses earlier.
DEFAULT_MAX_PIXELS = 40_000_000

# Scans a JPEG may have, counted from its markers before decoding. libjpeg's work is linear in scans,
# each a pass over every block (3-8 ms for 6000x6000 on this project's 2-core CPU), so a progressive
# JPEG repeating one cheap scan 10,000 times took ~35 s. Encoders write 1 (baseline) to about 10
# (libjpeg's progressive script: 6 grey, 10 colour, 18 CMYK); at 100, a 36 MP bomb decodes in ~0.8 s.
MAX_JPEG_SCANS = 100

# The largest preprocess.resize / preprocess.crop a model file or recipe may ask for, in pixels. The
# resize work is bounded by the crop (see Preprocess.resize_crop), but a crop of 8192 is already
# 200 MB of float32 input per image.
MAX_PREPROCESS_SIDE = 8192

# Bounds on an ONNX file's metadata, checked before any value is JSON-decoded (toolkit.contract).
MAX_METADATA_CHARS = 16 * 1024 * 1024  # one metadata value (a recipe or a label list is far smaller)
MAX_METADATA_DEPTH = 64  # nesting of lists/objects in one value (a recipe needs under 10)
MAX_LABELS = 100_000  # class names in `labels` (ImageNet-21k has 21,841)
MAX_LABEL_CHARS = 1_000  # one class name
