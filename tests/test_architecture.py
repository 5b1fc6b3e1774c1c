"""Dependencies point one way: adapters are pure; shim's layers import only downward
(vocabulary < parity < cutover < serving < ops < cli); only the serving layer's process
model, protocol and supervisor import uvicorn; the product never imports the reference
backends; no module grows past one job's size."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS_MAY_IMPORT = {
    "__future__",
    "adapters",
    "numpy",
    "re",
    "collections",
    "dataclasses",
    "typing",
    "math",
    "json",  # stdlib, pure: the declared endpoints' example diffs
    "difflib",
}
# The C jq (PyPI `jq`) runs the route table's programs: in memory, no I/O, no threads, like
# numpy's kernels; only the module of declared endpoints may use it.
ADAPTER_MAY_ALSO_IMPORT = {"declared.py": {"jq"}}


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_adapters_import_only_the_stdlib_basics_and_numpy() -> None:
    for path in (ROOT / "adapters").glob("*.py"):
        allowed = ADAPTERS_MAY_IMPORT | ADAPTER_MAY_ALSO_IMPORT.get(path.name, set())
        assert imports(path) <= allowed, path.name


# The layers of shim/, lowest first. A module may import its own layer and those below it,
# never one above: the vocabulary (flat modules) knows no layer; parity knows the
# vocabulary; the cutover knows parity (the gate reads verdicts); serving knows the
# cutover (the proxy reads flags); the operator's surface knows serving (readyz asks the
# backends); the CLI is the top. `shim.app` is the composition root: it assembles the
# layers below the CLI and only the process model names it (as uvicorn's factory string).
LAYERS = ("vocabulary", "parity", "cutover", "serving", "ops", "cli")
ROOT_MODULE = "shim.app"
STAND_IN = "shim.reference"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The layer a `shim.*` module belongs to (its sub-package; flat modules: vocabulary)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "vocabulary"


def shim_imports(path: Path) -> set[str]:
    """Every `shim.*` module `path` imports, at the top, in a function or for typing only."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("shim."))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "shim":
                found.update(f"shim.{a.name}" for a in node.names if a.name != "__version__")
            elif node.module.startswith("shim."):
                found.add(node.module)  # `from shim.ops import views`: the layer's package
    return found


def product_modules() -> list[Path]:
    return [
        p
        for p in (ROOT / "shim").rglob("*.py")
        if ROOT / "shim" / "reference" not in p.parents and p.name != "__main__.py"
    ]


def test_every_module_sits_in_a_known_place() -> None:
    unknown = {
        module_name(p)
        for p in product_modules()
        if len(module_name(p).split(".")) > 2 and module_name(p).split(".")[1] not in LAYERS
    }
    assert not unknown, f"a sub-package that is not a layer: {sorted(unknown)}"


def test_layers_import_only_downward() -> None:
    upward = []
    for path in product_modules():
        importer = module_name(path)
        for imported in shim_imports(path):
            if imported == STAND_IN or imported.startswith(STAND_IN + "."):
                continue  # the one door is held by the test below
            if imported == ROOT_MODULE:
                upward.append(f"{importer} imports the composition root {imported}")
                continue
            if importer == ROOT_MODULE:
                if layer_of(imported) == "cli":
                    upward.append(f"{importer} imports the CLI ({imported})")
                continue
            mine, theirs = LAYERS.index(layer_of(importer)), LAYERS.index(layer_of(imported))
            if theirs > mine:
                upward.append(f"{importer} ({LAYERS[mine]}) imports {imported} ({LAYERS[theirs]})")
    assert not upward, "\n".join(sorted(upward))


def test_the_layer_rule_can_fail() -> None:
    """The rule above reads real imports: a module of a lower layer naming a higher one is
    caught (the check is not vacuous)."""
    assert "shim.serving.proxy" in shim_imports(ROOT / "shim" / "app.py")
    assert LAYERS.index(layer_of("shim.serving.proxy")) > LAYERS.index(layer_of("shim.routes"))
    assert layer_of("shim.cutover.flags") == "cutover" and layer_of("shim.errors") == "vocabulary"
    assert layer_of("shim.ops") == "ops"  # `from shim.ops import views` names the layer too


def test_only_the_serving_layer_imports_uvicorn() -> None:
    users = {module_name(p) for p in (ROOT / "shim").rglob("*.py") if "uvicorn" in imports(p)}
    assert users == {"shim.serving.process", "shim.serving.protocol", "shim.serving.supervisor"}
    app_side = {
        module_name(p)
        for p in (ROOT / "shim").rglob("*.py")
        if "shim.serving.protocol" in shim_imports(p)
    }
    assert app_side == {"shim.serving.process"}
    assert "shim.serving.supervisor" not in shim_imports(ROOT / "shim" / "app.py")


def test_types_module_imports_nothing_of_the_shim() -> None:
    assert "shim" not in imports(ROOT / "shim" / "types.py")


MAX_MODULE_LINES = 460  # "no module over ~450 lines": one job a module


def test_no_module_is_over_its_size() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for folder in ("shim", "adapters", "benchmarks")
        for p in (ROOT / folder).rglob("*.py")
    }
    assert {f: n for f, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def reference_imports(path: Path) -> list[str]:
    """Where `path` imports the reference backends: the enclosing function's name, or
    "<module>" for an import at the top."""
    tree = ast.parse(path.read_text())
    enclosing = {
        id(inner): node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "shim.reference" or name.startswith("shim.reference.") for name in names):
            found.append(enclosing.get(id(node), "<module>"))
    return found


def test_the_product_never_imports_the_reference_backends() -> None:
    """The reference backends are a stand-in for the real gateways: they may use the product
    (the route table gives them their paths), never the reverse. The one door is the
    `shim reference` command, which serves them."""
    users = {
        str(path.relative_to(ROOT)): where
        for path in (*(ROOT / "shim").rglob("*.py"), *(ROOT / "adapters").rglob("*.py"))
        if ROOT / "shim" / "reference" not in path.parents and (where := reference_imports(path))
    }
    assert all(where == ["run_reference"] for where in users.values()), users
