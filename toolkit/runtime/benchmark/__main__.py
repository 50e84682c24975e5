"""`python -m toolkit.runtime.benchmark --probe SPEC`: the ONNX backends' cold-start probe (backends.probe_onnx)."""
import sys

from toolkit.runtime.benchmark.backends import main, probe_onnx

if __name__ == "__main__":  # importing this module (pkgutil.walk_packages does) runs nothing
    main(sys.argv[1:], probe_onnx)
