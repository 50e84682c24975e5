"""Input limits shared by decoding, training and serving. Standard library only, so the CLI can show
them as defaults without importing numpy or Pillow."""

# Decoded image cap (width x height), checked before decoding. Pillow only warns between 89 and 179
# megapixels; the toolkit refuses earlier.
DEFAULT_MAX_PIXELS = 40_000_000
