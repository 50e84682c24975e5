"""toolkit: fine-tune an ImageNet CNN on a small image set and ship it as one verified ONNX file."""

__version__ = "0.1.0"

import os as _os

# albumentations asks PyPI for a newer version on import; toolkit never touches the network by itself.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
