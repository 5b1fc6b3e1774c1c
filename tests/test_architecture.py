"""Dependencies point one way: adapters are pure, only the serving pieces (the process
model of `shim serve`, its HTTP protocol and supervisor) import uvicorn; the CLI calls them."""

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


def test_only_the_serving_pieces_import_uvicorn() -> None:
    users = {p.name for p in (ROOT / "shim").rglob("*.py") if "uvicorn" in imports(p)}
    assert users == {"serve.py", "protocol.py", "supervisor.py"}  # serving pieces only
    app_side = {
        p.name
        for p in (ROOT / "shim").rglob("*.py")
        if "shim.protocol" in p.read_text() and p.name != "protocol.py"
    }
    assert app_side == {"serve.py"}
    assert "shim.supervisor" not in (ROOT / "shim" / "app.py").read_text()


def test_types_module_imports_nothing_of_the_shim() -> None:
    assert "shim" not in imports(ROOT / "shim" / "types.py")


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
