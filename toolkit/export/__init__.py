"""Export: a training run -> one verified, self-describing ONNX file (+ FP16 / INT8 twins, Triton layout)."""
