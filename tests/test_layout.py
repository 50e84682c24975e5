"""The package layout is the architecture: imports flow one way, and the edge side never needs torch.

Layers, lowest first (docs/architecture.md draws them):
    core (toolkit/*.py) <- recipe <- datasets <- runtime <- train <- export <- cli
A module imports only from its own layer or lower ones. The four lowest layers are torch-free.
Runs without torch too: CI's base-install tier runs this file beside tests/runtime/.
"""
import ast
import io
import json
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYERS = ["core", "recipe", "datasets", "runtime", "train", "export", "cli"]
TORCH_FREE = {"core", "recipe", "datasets", "runtime"}
HEAVY = {"torch", "torchvision", "albumentations", "cv2", "openvino"}
# The one public re-export (the documented import for edge apps): its layer is that of what it re-exports.
SHIMS = {"toolkit/inference.py": "runtime"}
# The names docs/architecture.md lists for library use ("Public import names").
DOCUMENTED_NAMES = ["toolkit.inference.Predictor", "toolkit.inference.predict_command",
                    "toolkit.inference.time_cold_start", "toolkit.preprocess.Preprocess",
                    "toolkit.preprocess.ImageError", "toolkit.errors.UserError", "toolkit.recipe.load",
                    "toolkit.recipe.from_dict", "toolkit.runtime.onnx_eval.evaluate_onnx",
                    "toolkit.runtime.benchmark.run_benchmark", "toolkit.runtime.benchmark.validate_record",
                    "toolkit.runtime.benchmark.SCHEMAS"]
TORCH_SIDE_NAMES = ["toolkit.train.data.measure_pipeline", "toolkit.train.data.make_loader",
                    "toolkit.export.export_run"]
# Imports inside a function, each with its reason. The layer rule needs them: the feature is torch-side
# (or needs openvino) and runs only when asked for, or the module must load without the heavy side.
# (module, imported) -> why; (module, "*"): every in-function import of that module.
LAZY_ALLOWED = {
    ("toolkit/datasets/sources.py", "torchvision.datasets"): "data.source: flowers102 downloads with torchvision",
    ("toolkit/datasets/fashion.py", "torchvision.datasets"): "data.source: fashion_mnist with data.download: true",
    ("toolkit/runtime/engines/openvino_core.py", "openvino"): "engine openvino: imported only when asked for",
    ("toolkit/cli.py", "*"): "each command imports its code when it runs: `toolkit --help` and the edge "
                             "install's commands load no torch",
    ("toolkit/export/__init__.py", "toolkit.export.pipeline"): "toolkit.export's public names load on use, so "
                                                               "toolkit.export.triton stays torch-free",
    ("toolkit/export/__init__.py", "toolkit.export.options"): "as above",
    ("toolkit/export/__init__.py", "toolkit.export.triton"): "as above",
    ("toolkit/export/web.py", "toolkit.export.pipeline"): "the CLI reads WebOptions for export's flags and help: "
                                                          "importing this module loads no torch",
    ("toolkit/export/web.py", "toolkit.export.web_check"): "as above",
    ("toolkit/train/report/__init__.py", "toolkit.train.report.build"): "the builder loads on use: ReportOptions "
                                                                  "(report's flags and help) needs no torch",
    ("toolkit/train/evaluate.py", "toolkit.train.data"): "evaluate MODEL.onnx runs on the torch-free install; "
                                                         "a checkpoint's evaluation loads the torch side",
    ("toolkit/train/evaluate.py", "toolkit.train.model"): "as above",
    ("toolkit/train/evaluate.py", "toolkit.train.device"): "as above",
    ("toolkit/train/evaluate.py", "toolkit.train.model.fold"): "as above (collect_logits runs torch models only)",
    ("toolkit/runtime/benchmark/backends.py", "toolkit.runtime.predictor"): "importing the benchmark loads no "
        "onnxruntime (the CLI reads BenchmarkOptions for its flags); the cold-start probe times this import",
    ("toolkit/runtime/cold_start.py", "toolkit.runtime.predictor"): "time_cold_start's fresh interpreter times "
        "this import (import_s), so the module it runs from must load without it",
    ("toolkit/train/torch_backend.py", "toolkit.train.model"): "the fresh-process probe times the torch side's "
                                                               "import (import_s): this module loads without torch",
    ("toolkit/export/tflite.py", "toolkit.runtime.session"): "the CLI reads TfliteOptions for its flags: "
        "importing this module loads no onnxruntime (quiet_litert borrows the session's output capture)",
    ("toolkit/runtime/serve/server.py", "toolkit.runtime.serve.protocol"): "serve-local's HTTP protocol is built on "
        "uvicorn's h11 classes, which the [serve] extra brings: loaded when serving, so the edge install's "
        "toolkit.runtime.serve imports (and says which extra is missing) without them",
}
# Known offenders allowed for a while, as (file, imported module) for an in-function import without a reason
# or (file, module._name) for a private name used across modules. Empty: there are none;
# test_pending_offenders_are_still_there fails on an entry whose offence is gone.
EXPECTED_PENDING: set = set()


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


def top_level_ids(tree: ast.Module) -> set:
    """ids of the nodes that run at import. Function bodies run later (lazy imports); everything else,
    class bodies included, runs at import."""
    top = set()
    for node in tree.body:
        statements = node.body if isinstance(node, ast.ClassDef) else [node]
        for stmt in statements:
            if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                top.update(id(sub) for sub in ast.walk(stmt))
    return top


def imports(tree: ast.Module):
    """(module name, at module level?) for every import in the file."""
    top = top_level_ids(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, id(node) in top
            if node.module == "toolkit":
                for alias in node.names:
                    yield f"toolkit.{alias.name}", id(node) in top


def sources(root: pathlib.Path = ROOT):
    for path in sorted((root / "toolkit").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
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


# ------------------------------------------------------------------------------------------------
# The import graph between toolkit modules, in-function imports included (issue 17): no cycle, no
# in-function import without a listed reason, no private name reaching into another module.

@dataclass(frozen=True)
class Edge:
    """One toolkit-internal import: `rel` (file) line `line` imports module `target` (its names `names`)."""
    rel: str
    line: int
    target: str
    names: tuple
    at_top: bool


def module_of(rel: str) -> str:
    """toolkit/train/model/__init__.py -> toolkit.train.model."""
    return rel[:-3].replace("/", ".").removesuffix(".__init__")


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - (node.level - (1 if is_package else 0))]
    return ".".join(base + ([node.module] if node.module else []))


def edges(root: pathlib.Path = ROOT) -> list:
    """Every toolkit-internal import of every module under root/toolkit. `from toolkit.x import y`
    counts as an import of toolkit.x.y when y is a module, else of toolkit.x."""
    files = {rel: tree for rel, tree in sources(root)}
    modules = {module_of(rel) for rel in files}
    found = []
    for rel, tree in files.items():
        module, top = module_of(rel), top_level_ids(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(alias.name, ()) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, module, rel.endswith("__init__.py"))
                targets = [(f"{base}.{a.name}", ()) if f"{base}.{a.name}" in modules else (base, (a.name,))
                           for a in node.names]
            else:
                continue
            for target, names in targets:
                if target.split(".")[0] == "toolkit":
                    found.append(Edge(rel, node.lineno, target, names, id(node) in top))
    return found


def import_cycles(found: list) -> list:
    """The strongly connected groups of two or more modules, each as its edges ("file:line -> module")."""
    graph: dict = {}
    for e in found:
        source, parts = module_of(e.rel), e.target.split(".")
        # Importing toolkit.a.b runs toolkit.a's __init__ first: an edge to each package on the way, too.
        for target in (".".join(parts[:n]) for n in range(2, len(parts) + 1)):
            if target != source and not source.startswith(target + "."):  # a package's own __init__: no cycle
                graph.setdefault(source, {}).setdefault(target, []).append(e)
    index: dict = {}
    low: dict = {}
    stack: list = []
    groups = []

    def strong(node):  # Tarjan: the graph is ~150 modules, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                strong(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while not group or node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(sorted({f"{e.rel}:{e.line} -> {e.target}" for a in group
                                      for b, es in graph.get(a, {}).items() if b in group for e in es}))

    for node in list(graph):
        if node not in index:
            strong(node)
    return groups


def lazy_offenders(found: list) -> list:
    """(file, module, "file:line") of each toolkit-internal in-function import that no reason covers."""
    return [(e.rel, e.target, f"{e.rel}:{e.line}") for e in found if not e.at_top
            and (e.rel, e.target) not in LAZY_ALLOWED and (e.rel, "*") not in LAZY_ALLOWED]


def private_offenders(root: pathlib.Path = ROOT, found: list | None = None) -> list:
    """(file, module._name, "file:line") of each underscore name that crosses modules: imported
    (`from toolkit.x import _y`) or reached as an attribute of an imported module (`x_mod._y`)."""
    found = edges(root) if found is None else found
    out = [(e.rel, f"{e.target}.{n}", f"{e.rel}:{e.line}") for e in found for n in e.names if _private(n)]
    bound: dict = {}  # file -> {local name: module}, for the attribute check
    for e in found:
        if not e.names:
            bound.setdefault(e.rel, {})[e.target.rpartition(".")[2]] = e.target
    for rel, tree in sources(root):
        aliases = dict(bound.get(rel, {}))
        for node in ast.walk(tree):  # `import toolkit.x as y` and `from toolkit import x as y` bind other names
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    if alias.asname and alias.name.rpartition(".")[2] in aliases:
                        aliases[alias.asname] = aliases[alias.name.rpartition(".")[2]]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and _private(node.attr)):
                out.append((rel, f"{aliases[node.value.id]}.{node.attr}", f"{rel}:{node.lineno}"))
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _open(offenders: list) -> list:
    """The offenders not in EXPECTED_PENDING, as "file:line module" lines."""
    return sorted({f"{where}: {name}" for rel, name, where in offenders if (rel, name) not in EXPECTED_PENDING})


def test_no_import_cycle_between_modules():
    """Imports between toolkit modules, in-function ones included, form no cycle (each is listed by its
    edges, file:line)."""
    cycles = import_cycles(edges())
    assert not cycles, "import cycles:\n" + "\n\n".join("\n".join(c) for c in cycles)


def test_a_cycle_through_a_package_init_is_seen(tmp_path):
    """toolkit.a.x imports toolkit.b.y, and toolkit.b's __init__ imports toolkit.a.x: importing toolkit.b.y
    runs toolkit.b's __init__ first, so that is a cycle though neither module names the other back."""
    files = {"toolkit/__init__.py": "", "toolkit/a/__init__.py": "", "toolkit/a/x.py": "from toolkit.b import y\n",
             "toolkit/b/__init__.py": "from toolkit.a import x\n", "toolkit/b/y.py": ""}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    cycle = ["toolkit/a/x.py:1 -> toolkit.b.y", "toolkit/b/__init__.py:1 -> toolkit.a.x"]
    assert import_cycles(edges(tmp_path)) == [cycle]
    (tmp_path / "toolkit/b/__init__.py").write_text("")
    assert import_cycles(edges(tmp_path)) == []


def test_in_function_imports_have_a_reason():
    """A toolkit module imports another inside a function only for a reason listed in LAZY_ALLOWED."""
    problems = _open(lazy_offenders(edges()))
    assert not problems, ("in-function imports with no reason in LAZY_ALLOWED (move them to the top of the "
                          "module, or list why they must wait):\n" + "\n".join(problems))


def test_no_private_name_crosses_modules():
    """`_name` is private to its module: no other module imports it or reaches it as `module._name`."""
    problems = _open(private_offenders())
    assert not problems, ("underscore names used across modules (make them public, or keep the use inside "
                          "their module):\n" + "\n".join(problems))


def test_allowed_lazy_imports_exist():
    """The allow-list names real imports, so it can't keep a stale exception alive."""
    found = {(rel, name) for rel, tree in sources() for name, top in imports(tree) if not top}
    found |= {(e.rel, e.target) for e in edges() if not e.at_top}
    found |= {(rel, "*") for rel, _ in found}
    assert set(LAZY_ALLOWED) <= found, set(LAZY_ALLOWED) - found


def test_only_the_documented_re_export_is_left():
    """Of the top-level re-export modules only toolkit/inference.py stays: a name has one home."""
    top_files = [(rel, tree) for rel, tree in sources() if rel.count("/") == 1
                 and rel not in ("toolkit/__init__.py", "toolkit/__main__.py")]
    # A re-export module: imports, __all__ and a docstring, nothing of its own.
    reexports = [rel for rel, tree in top_files
                 if all(isinstance(n, (ast.ImportFrom, ast.Assign, ast.Expr)) for n in tree.body)
                 and any(isinstance(n, ast.ImportFrom) for n in tree.body)]
    assert reexports == ["toolkit/inference.py"], reexports


def test_pending_offenders_are_still_there():
    """EXPECTED_PENDING only shrinks: an entry whose offence is gone must leave the list."""
    found = edges()
    current = {(rel, name) for rel, name, _ in lazy_offenders(found) + private_offenders(found=found)}
    assert EXPECTED_PENDING <= current, sorted(EXPECTED_PENDING - current)


def graph_counts(root: pathlib.Path = ROOT) -> dict:
    """The numbers issue 17 reports: import cycles (in-function imports included), toolkit-internal
    in-function import statements, and underscore names imported across modules (+ attribute uses)."""
    found = edges(root)
    private = private_offenders(root, found)
    return {"cycles": len(import_cycles(found)),
            "in_function_imports": len({(e.rel, e.line) for e in found if not e.at_top}),
            "in_function_imports_without_reason": len({where for _, _, where in lazy_offenders(found)}),
            "underscore_imports": sum(1 for _, name, where in private if _imported(found, where, name)),
            "underscore_attribute_uses": sum(1 for _, name, where in private if not _imported(found, where, name))}


def _imported(found: list, where: str, name: str) -> bool:
    rel, _, line = where.rpartition(":")
    return any(e.rel == rel and e.line == int(line) and name == f"{e.target}.{n}" for e in found for n in e.names)


TORCH_FREE_IMPORT_SCRIPT = """
import importlib
import io, json, pkgutil, sys
import toolkit
optional = {"fastapi", "uvicorn", "starlette", "multipart", "python_multipart", "matplotlib", "tritonclient"}
names, skipped = [], []
for pkg in ("toolkit.recipe", "toolkit.datasets", "toolkit.runtime"):
    mod = importlib.import_module(pkg)
    names += [pkg] + [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
names += ["toolkit." + m.name for m in pkgutil.iter_modules(toolkit.__path__) if not m.ispkg
          and m.name != "__main__"] + ["toolkit.cli"]
# Torch-side packages' modules that LAZY_ALLOWED says load without torch.
names += ["toolkit.export", "toolkit.export.triton", "toolkit.train.evaluate"]
for name in names:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name.split(".")[0] in optional:
            skipped.append(name)
            continue
        raise
# Every command's --help reads only its options dataclasses: help works on the base install.
import contextlib, io
from toolkit import cli
helped = []
for command in cli.COMMANDS:
    with contextlib.redirect_stdout(io.StringIO()) as text:
        cli.main([command, "--help"])
    helped += [command] if text.getvalue().startswith(f"usage: toolkit {command}") else []
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "torchvision", "albumentations", "cv2",
                                                               "openvino"})
print(json.dumps({"imported": names, "skipped": skipped, "heavy": heavy, "helped": helped}))
"""


def test_torch_free_layers_import_without_torch():
    """Every module of the torch-free layers (and the torch-side modules whose LAZY_ALLOWED reason is that
    they load without torch), imported in a fresh interpreter, loads none of torch, torchvision,
    albumentations or OpenCV (where torch is not installed, an import of it would fail here); nor does
    `toolkit COMMAND --help` of any command (export's and report's needed torch)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE_IMPORT_SCRIPT], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "toolkit.runtime.predictor" in result["imported"]
    assert result["heavy"] == [], result
    from toolkit import cli

    assert result["helped"] == list(cli.COMMANDS)


def test_documented_import_names_still_resolve():
    """The names documented for library use resolve (toolkit.inference's through its re-export)."""
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


if __name__ == "__main__":  # python tests/test_layout.py [ROOT]: the counts, for a before/after
    print(json.dumps(graph_counts(pathlib.Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT)))


def test_no_undefined_names():
    """A name used but never defined or imported (datasets/load.py's from_here: a NameError traceback for a
    run whose data folder had moved) fails here, not in a user's hands. Unused imports are left alone: some
    are the documented re-exports and the probes of optional packages."""
    pyflakes_api = pytest.importorskip("pyflakes.api")
    from pyflakes import messages
    from pyflakes.reporter import Reporter

    class Collect(Reporter):
        def __init__(self):
            super().__init__(io.StringIO(), io.StringIO())
            self.found = []

        def flake(self, message):
            if not isinstance(message, (messages.UnusedImport, messages.RedefinedWhileUnused,
                                        messages.ImportStarUsed, messages.UnusedVariable)):
                self.found.append(str(message))

    reporter = Collect()
    pyflakes_api.checkRecursive([str(ROOT / "toolkit")], reporter)
    assert reporter.found == []
