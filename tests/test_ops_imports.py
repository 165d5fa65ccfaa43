"""The shape of `langneuron_ext/ops/`: every module imports on its own in a fresh interpreter
(no import circle that only works in one order), no module of the package imports the test
helpers `ops.testing`, every implementation module registers itself, and the environment is
read only in `ops/settings.py`."""
import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "langneuron_ext"
OPS = PACKAGE / "ops"
MODULES = sorted(p.stem for p in OPS.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", MODULES)
def test_each_ops_module_imports_alone_in_a_fresh_interpreter(module):
    proc = subprocess.run([sys.executable, "-c", f"import langneuron_ext.ops.{module}"],
                          capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _imports(path: pathlib.Path):
    """(module text, names) of every import statement in `path`, resolved to dotted names."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            for alias in node.names:
                yield f"{module}.{alias.name}"


def test_no_module_of_the_package_imports_the_test_helpers():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if p != OPS / "testing.py"
                 and any(name == "langneuron_ext.ops.testing" for name in _imports(p))]
    assert offenders == []


def test_the_checker_sees_a_relative_import_of_the_test_helpers(tmp_path):
    """The check above resolves `from . import testing` inside ops/ (it can fail)."""
    fake = OPS / "_probe_imports.py"
    names = list(_imports_of_text(fake, "from . import testing\nfrom .testing import x\n"))
    assert "langneuron_ext.ops.testing" in names


def _imports_of_text(path, text):
    package = "langneuron_ext.ops"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
            yield module
            for alias in node.names:
                yield f"{module}.{alias.name}"


def test_every_implementation_module_registers_something():
    from langneuron_ext.ops import dispatch
    modules = {impl.fn.__module__ for op in dispatch.OPS for impl in dispatch.implementations(op)}
    expected = {f"langneuron_ext.ops.{m}" for m in MODULES if m.startswith(dispatch.IMPL_PREFIX)}
    # the reference's function lives in reference.py; impl_torch registers it
    modules = {m.replace("langneuron_ext.ops.reference", "langneuron_ext.ops.impl_torch")
               for m in modules}
    assert expected <= modules


def test_only_settings_reads_the_environment():
    readers = [p.name for p in OPS.glob("*.py")
               if p.name != "settings.py" and "os.environ" in p.read_text()]
    assert readers == []


def test_ops_modules_import_each_other_without_a_circle():
    """The graph of imports between ops modules (every import statement, inside functions
    too) has no cycle: the fresh-interpreter test above always runs the package's __init__
    first, so an order-dependent circle would not show there."""
    graph = {}
    for module in MODULES + ["__init__"]:
        names = set(_imports(OPS / f"{module}.py"))
        graph[module] = {m for m in MODULES if f"langneuron_ext.ops.{m}" in names
                         and m != module}
    state = {}

    def visit(node, path):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import circle: {' -> '.join(path + [node])}"
        state[node] = "open"
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        state[node] = "done"

    for module in graph:
        visit(module, [])
