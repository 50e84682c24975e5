"""The package layout is the architecture: imports flow one way, and the edge side never needs torch.

Layers, lowest first (docs/architecture.md draws them):
    core (toolkit/*.py) <- recipe <- datasets <- runtime <- train <- export <- cli
A module imports only from its own layer or lower ones. The four lowest layers are torch-free.
Runs without torch too: CI's base-install tier runs this file beside tests/runtime/.
"""
import ast
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "toolkit"
LAYERS = ["core", "recipe", "datasets", "runtime", "train", "export", "cli"]
TORCH_FREE = {"core", "recipe", "datasets", "runtime"}
HEAVY = {"torch", "torchvision", "albumentations", "cv2", "openvino"}
# Public import names kept stable for users; each re-exports one module from its real home.
SHIMS = {"toolkit/inference.py": "runtime", "toolkit/onnx_eval.py": "runtime", "toolkit/benchmark.py": "runtime",
         "toolkit/benchmark_report.py": "runtime", "toolkit/data.py": "train"}
# Every name an earlier README documented for library use, as it was spelled then.
DOCUMENTED_NAMES = ["toolkit.inference.Predictor", "toolkit.inference.predict_command",
                    "toolkit.inference.time_cold_start", "toolkit.preprocess.Preprocess",
                    "toolkit.preprocess.ImageError", "toolkit.errors.UserError", "toolkit.recipe.load",
                    "toolkit.recipe.from_dict", "toolkit.onnx_eval.evaluate_onnx",
                    "toolkit.benchmark.run_benchmark", "toolkit.benchmark_report.validate_record",
                    "toolkit.benchmark_report.SCHEMAS"]
TORCH_SIDE_NAMES = ["toolkit.data.measure_pipeline", "toolkit.data.make_loader", "toolkit.export.export_run"]
# Imports inside a function that reach up a layer or into torch on purpose: the feature itself is torch-side
# and runs only when asked for. (module, imported) -> why.
LAZY_ALLOWED = {
    ("toolkit/datasets/sources.py", "torchvision.datasets"): "data.source: flowers102 downloads with torchvision",
    ("toolkit/datasets/fashion.py", "torchvision.datasets"): "data.source: fashion_mnist with data.download: true",
    ("toolkit/runtime/engines/openvino_core.py", "openvino"): "engine openvino: imported only when asked for",
}


def layer_of(rel: str) -> str:
    if rel in SHIMS:
        return SHIMS[rel]
    parts = rel.split("/")
    if len(parts) == 2:
        return "cli" if parts[1] in ("cli.py", "__main__.py") else "core"
    return {"recipe": "recipe", "datasets": "datasets", "runtime": "runtime", "train": "train",
            "export": "export", "cli": "cli"}[parts[1]]


def layer_of_module(name: str) -> str:
    """toolkit.runtime.predictor -> runtime; toolkit.errors -> core."""
    parts = name.split(".")
    if len(parts) == 1:
        return "core"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    if parts[1] in LAYERS:
        return parts[1]
    rel = "toolkit/" + parts[1] + ".py"
    return SHIMS.get(rel, "core")


def imports(tree: ast.Module):
    """(module name, at module level?) for every import in the file. Function bodies run later (lazy
    imports); everything else, class bodies included, runs at import."""
    top = set()
    for node in tree.body:
        statements = node.body if isinstance(node, ast.ClassDef) else [node]
        for stmt in statements:
            if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                top.update(id(sub) for sub in ast.walk(stmt))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, id(node) in top
            if node.module == "toolkit":
                for alias in node.names:
                    yield f"toolkit.{alias.name}", id(node) in top


def sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        yield rel, ast.parse(path.read_text(encoding="utf-8"), filename=rel)


def test_imports_flow_one_way():
    problems = []
    for rel, tree in sources():
        own = LAYERS.index(layer_of(rel))
        for name, at_top in imports(tree):
            if name.split(".")[0] in HEAVY and layer_of(rel) in TORCH_FREE:
                if at_top or (rel, name) not in LAZY_ALLOWED:
                    problems.append(f"{rel}: imports {name} ({'module level' if at_top else 'in a function'}); "
                                    f"the {layer_of(rel)} layer is torch-free")
            if name.split(".")[0] != "toolkit":
                continue
            target = LAYERS.index(layer_of_module(name))
            if target > own and (at_top or (rel, name) not in LAZY_ALLOWED) and layer_of(rel) != "cli":
                problems.append(f"{rel} ({LAYERS[own]}) imports {name} ({LAYERS[target]}), a higher layer")
    assert not problems, "\n".join(problems)


def test_no_import_cycle_between_modules():
    """Module-level imports between toolkit modules form no cycle."""
    graph = {}
    for rel, tree in sources():
        name = rel[:-3].replace("/", ".").removesuffix(".__init__")
        graph[name] = {n for n, top in imports(tree) if top and n.startswith("toolkit.") and n != name}
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt in graph and not node.startswith(nxt + "."):  # a package's own __init__ is not a cycle
                visit(nxt)
        stack.pop()

    for node in graph:
        visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_allowed_lazy_imports_exist():
    """The allow-list names real imports, so it can't keep a stale exception alive."""
    found = {(rel, name) for rel, tree in sources() for name, top in imports(tree) if not top}
    assert set(LAZY_ALLOWED) <= found, set(LAZY_ALLOWED) - found


TORCH_FREE_IMPORT_SCRIPT = """
import importlib, json, pkgutil, sys
import toolkit
optional = {"fastapi", "uvicorn", "starlette", "multipart", "python_multipart", "matplotlib", "tritonclient"}
names, skipped = [], []
for pkg in ("toolkit.recipe", "toolkit.datasets", "toolkit.runtime"):
    mod = importlib.import_module(pkg)
    names += [pkg] + [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
names += ["toolkit." + m.name for m in pkgutil.iter_modules(toolkit.__path__) if not m.ispkg
          and m.name not in ("data", "__main__")] + ["toolkit.cli"]
for name in names:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name.split(".")[0] in optional:
            skipped.append(name)
            continue
        raise
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "torchvision", "albumentations", "cv2",
                                                               "openvino"})
print(json.dumps({"imported": names, "skipped": skipped, "heavy": heavy}))
"""


def test_torch_free_layers_import_without_torch():
    """Every module of the torch-free layers, imported in a fresh interpreter, loads none of torch,
    torchvision, albumentations or OpenCV (where torch is not installed, an import of it would fail here)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE_IMPORT_SCRIPT], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "toolkit.runtime.predictor" in result["imported"]
    assert result["heavy"] == [], result


def test_documented_import_names_still_resolve():
    """Moving a module must not break a user's import: the old spellings stay as re-exports."""
    import importlib
    import importlib.util

    names = DOCUMENTED_NAMES + (TORCH_SIDE_NAMES if importlib.util.find_spec("torch") else [])
    missing = [dotted for dotted in names
               if not hasattr(importlib.import_module(dotted.rpartition(".")[0]), dotted.rpartition(".")[2])]
    assert not missing, missing


# The engine seam (docs/architecture.md, "The engine interface"): what an engine can do is asked of its
# adapter, so only the adapters and the names table may compare a value with an engine's name.
ENGINE_NAMES = {"onnxruntime", "openvino"}
ENGINE_NAME_ALLOWED = {"toolkit/runtime/engines/names.py", "toolkit/runtime/engines/onnxruntime_adapter.py",
                       "toolkit/runtime/engines/openvino_adapter.py", "toolkit/runtime/engines/openvino_core.py",
                       "toolkit/runtime/engines/openvino_bench.py"}


def engine_name_checks(tree: ast.Module) -> list[int]:
    """Lines that compare with an engine's name ("x == 'openvino'", "'openvino' in engines", a tuple of
    names) or ask a session what engine it is by duck typing (hasattr(s, "inference_precision"))."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            consts = [c for op in operands for c in (op, *getattr(op, "elts", ()))]
            if any(isinstance(c, ast.Constant) and c.value in ENGINE_NAMES for c in consts):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hasattr":
            if any(isinstance(a, ast.Constant) and a.value == "inference_precision" for a in node.args):
                lines.append(node.lineno)
    return lines


def test_engine_names_are_compared_only_in_the_adapters():
    found = [f"{rel}:{line}" for rel, tree in sources() if rel not in ENGINE_NAME_ALLOWED
             for line in engine_name_checks(tree)]
    assert not found, f"engine-name checks outside the adapters (ask the adapter instead): {found}"
    # the check itself sees the forms it forbids
    probe = ast.parse('a = e == "openvino"\nb = "onnxruntime" in names\nc = e in ("x", "openvino")\n'
                      'd = hasattr(s, "inference_precision")\ne = {"openvino": 1}\n')
    assert engine_name_checks(probe) == [1, 2, 3, 4]
