"""The edge runtime: everything that runs an exported ONNX file. Never imports torch (tests/test_layout.py)."""
