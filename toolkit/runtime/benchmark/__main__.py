"""`python -m toolkit.runtime.benchmark --probe SPEC`: the ONNX Runtime cold-start probe (probe.py)."""
import sys

from toolkit.runtime.benchmark.probe import main

if __name__ == "__main__":  # importing this module (pkgutil.walk_packages does) runs nothing
    main(sys.argv[1:])
