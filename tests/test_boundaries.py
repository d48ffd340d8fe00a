"""DESIGN rules on imports: the training core is pure PyTorch; prefect and mlflow stay at the edges."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "ratchet"
FLOWS = ROOT / "flows"

CORE_THIRD_PARTY = {"torch", "torchvision", "numpy"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

MLFLOW_FILES = {PKG / "registry.py", PKG / "serving.py", PKG / "pyfunc_entry.py"}


def module_file(name: str) -> Path | None:
    """ratchet.a.b -> its source file (module or package __init__), or None if not a ratchet module."""
    parts = name.split(".")
    if parts[0] != "ratchet":
        return None
    base = FLOWS if parts[1:2] == ["flows"] else PKG
    rest = parts[2:] if parts[1:2] == ["flows"] else parts[1:]
    candidate = base.joinpath(*rest)
    if candidate.with_suffix(".py").is_file():
        return candidate.with_suffix(".py")
    if (candidate / "__init__.py").is_file():
        return candidate / "__init__.py"
    return None


def module_name(path: Path) -> str:
    if path.is_relative_to(FLOWS):
        rel = ("flows", *path.relative_to(FLOWS).with_suffix("").parts)
    else:
        rel = path.relative_to(PKG).with_suffix("").parts
    parts = ["ratchet", *rel]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, module_level_only: bool = False) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) of every import in the file.

    `from x import y` yields x and also x.y (y may be a submodule). module_level_only skips the
    bodies of functions (lazy imports): what runs when the module is imported.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]

    def visit(node: ast.AST) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child.lineno
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join([*base, child.module] if child.module else base)
                else:
                    mod = child.module or ""
                yield mod, child.lineno
                for alias in child.names:
                    yield f"{mod}.{alias.name}", child.lineno
            yield from visit(child)

    yield from visit(tree)


def with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def core_files() -> list[Path]:
    # recursive: the strategy units are core too (the loop reaches them by name, not by import)
    return sorted((PKG / "train").rglob("*.py")) + [PKG / "evaluate.py"]


def core_violations() -> list[str]:
    """Imports outside torch/torchvision/numpy/stdlib/ratchet, reached from the training core."""
    bad: list[str] = []
    todo: list[tuple[Path, bool]] = [(f, False) for f in core_files()]
    for f in core_files():  # importing ratchet.train.x runs ratchet/__init__ and ratchet/train/__init__
        todo += [(module_file(p), True) for p in with_parents(module_name(f))[:-1]]  # type: ignore[misc]
    checked: set[tuple[Path, bool]] = set()
    while todo:
        path, module_level_only = todo.pop()
        if (path, module_level_only) in checked:
            continue
        checked.add((path, module_level_only))
        # core files: every import, lazy ones included; ratchet modules they pull in: what runs at
        # import time (so ratchet.config may import yaml inside load_params, the core never calls it)
        for mod, line in imports(path, module_level_only):
            root = mod.split(".")[0]
            if root == "ratchet":
                for dep in with_parents(mod):
                    dep_file = module_file(dep)
                    if dep_file is not None:  # x.y where y is a name, not a module: nothing to follow
                        is_core = dep_file in core_files()
                        todo.append((dep_file, not is_core))
            elif root not in CORE_THIRD_PARTY and root not in STDLIB:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    return sorted(set(bad))


def test_the_import_scanner_sees_relative_lazy_and_from_imports() -> None:
    # guard: the rule tests below are only as good as this scanner
    found = {m for m, _ in imports(PKG / "train" / "loop.py")}
    assert {"torch", "numpy", "ratchet.config", "ratchet.train.model", "torch.nn.functional"} <= found
    lazy_all = {m for m, _ in imports(PKG / "config.py")}
    lazy_top = {m for m, _ in imports(PKG / "config.py", module_level_only=True)}
    assert "yaml" in lazy_all and "yaml" not in lazy_top
    registry = {m for m, _ in imports(PKG / "registry.py")}
    assert "mlflow" in registry  # only imported inside methods: still seen
    assert module_file("ratchet.train.loop") == PKG / "train" / "loop.py"
    assert module_file("ratchet.train") == PKG / "train" / "__init__.py"
    assert module_file("ratchet.flows.retrain") == FLOWS / "retrain.py"
    assert module_file("ratchet.train.loop.fit") is None


def test_training_core_imports_only_torch_numpy_stdlib_and_clean_ratchet_modules() -> None:
    assert core_violations() == []


def test_training_core_import_pulls_in_no_heavy_dependencies() -> None:
    code = (
        "import ratchet.train.loop, ratchet.evaluate, sys; "
        "bad=[m for m in ('mlflow','prefect','dvc','yaml','pandas') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr


def all_source_files() -> list[Path]:
    return sorted(PKG.rglob("*.py")) + sorted(FLOWS.rglob("*.py"))


def importers_of(root: str) -> set[Path]:
    return {
        f
        for f in all_source_files()
        if any(m.split(".")[0] == root for m, _ in imports(f, module_level_only=False))
    }


def test_only_flows_import_prefect() -> None:
    importers = importers_of("prefect")
    assert importers, "the scan found no prefect import at all: it is broken"
    assert sorted(str(f.relative_to(ROOT)) for f in importers if not f.is_relative_to(FLOWS)) == []


def test_only_registry_serving_and_pyfunc_entry_import_mlflow() -> None:
    importers = importers_of("mlflow")
    assert importers, "the scan found no mlflow import at all: it is broken"
    assert sorted(str(f.relative_to(ROOT)) for f in importers - MLFLOW_FILES) == []


@pytest.mark.parametrize("module", ["ratchet.cli", "ratchet.config", "ratchet.workspace", "ratchet.gate"])
def test_importing_light_modules_has_no_heavy_side_effects(module: str) -> None:
    code = f"import sys, {module}; print([m for m in ('torch','mlflow','prefect','dvc') if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr


ORCHESTRATION = (
    "ratchet.cycle",
    "ratchet.app",
    "ratchet.cli",
    "ratchet.demo",
    "ratchet.flows",
    "ratchet.intake",
    "ratchet.replay",
)


def test_stages_import_nothing_from_orchestration() -> None:
    stages = sorted((PKG / "stages").glob("*.py"))
    assert stages
    bad = [
        f"{f.relative_to(ROOT)} imports {m}"
        for f in stages
        for m, _ in imports(f)
        if m.startswith(ORCHESTRATION)
    ]
    assert bad == []


def import_graph() -> dict[Path, set[Path]]:
    """file -> the ratchet files it imports, lazy and type-only imports included."""
    graph: dict[Path, set[Path]] = {}
    for f in all_source_files():
        deps = {module_file(m) for m, _ in imports(f) if m.split(".")[0] == "ratchet"}
        graph[f] = {d for d in deps if d is not None and d != f}
    return graph


def test_the_import_graph_has_no_circles() -> None:
    graph = import_graph()
    assert graph[PKG / "cli.py"], "the scan found no imports in cli.py: it is broken"
    circles: list[str] = []
    state: dict[Path, int] = {}  # 1: on the current path, 2: done

    def visit(node: Path, path: list[Path]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                loop = path[path.index(dep) :] + [dep]
                circles.append(" -> ".join(str(p.relative_to(ROOT)) for p in loop))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == []


def serving_closure() -> tuple[set[Path], set[str]]:
    """The ratchet files a loaded model runs (from pyfunc_entry.py, every import, lazy ones included,
    and the packages above each module) and the third-party packages they import."""
    files: set[Path] = set()
    packages: set[str] = set()
    todo = [PKG / "pyfunc_entry.py"]
    while todo:
        path = todo.pop()
        for mod, _ in imports(path):
            root = mod.split(".")[0]
            if root == "ratchet":
                for dep in with_parents(mod):
                    dep_file = module_file(dep)
                    if dep_file is not None and dep_file not in files:
                        files.add(dep_file)
                        todo.append(dep_file)
            elif root not in STDLIB:
                packages.add(root)
    return files, packages


def test_the_model_carries_exactly_the_ratchet_modules_serving_reaches_and_declares_their_packages() -> None:
    from ratchet.registry import SERVING_MODULES, SERVING_PACKAGES

    files, packages = serving_closure()
    assert PKG / "train" / "checkpoint.py" in files, "the scan did not follow serving's lazy imports"
    assert sorted(str(f.relative_to(PKG)) for f in files) == sorted(SERVING_MODULES)
    assert "torch" in packages and packages <= set(SERVING_PACKAGES)
