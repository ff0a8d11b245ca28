"""The house rules, read from the source (see CONTRIBUTING.md): which way imports run, no import
circles, and rooms small enough to read."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# peers/ in floors: a module imports only from its own floor or lower ones
FLOORS = {"peers.ops": 0, "peers.network": 1, "peers.node": 2, "peers.behaviours": 3, "peers.validator_behaviours": 3, "peers.peer": 3,
          "peers.validator": 3, "peers.sim": 4, "peers.cli": 5}
PURE = ("gauntlet.sparseloco", "gauntlet.uniqueness", "gauntlet.scoring", "gauntlet.rating")  # maths only
MAX_FUNCTION_LINES = 60


def modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (functions included)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def floor(module: str) -> int | None:
    for prefix, level in FLOORS.items():
        if module == prefix or module.startswith(prefix + "."):
            return level
    return None


ALL = {**modules("peers"), **modules("gauntlet")}
GRAPH = {name: imports(name, path, set(ALL)) for name, path in ALL.items()}


def test_every_module_of_peers_has_a_floor():
    assert [m for m in ALL if m.startswith("peers.") and floor(m) is None] == []


def test_peers_imports_only_run_downwards():
    upward = [(m, t) for m, targets in GRAPH.items() if m.startswith("peers.") for t in targets
              if t.startswith("peers.") and floor(t) > floor(m)]
    assert upward == []


def test_the_library_never_imports_the_nodes_and_the_maths_does_no_io():
    assert [(m, t) for m, ts in GRAPH.items() if m.startswith("gauntlet") for t in ts if t.startswith("peers")] == []
    io = ("gauntlet.storage", "gauntlet.chain")
    assert [(m, t) for m, ts in GRAPH.items() if m.startswith(PURE) for t in ts if t.startswith(io)] == []


def test_there_is_no_import_circle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if target.startswith(module + "."):
                continue  # a package's __init__ importing its own modules is not a circle
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_checker_finds_an_upward_import_and_a_circle(tmp_path):
    """The rules above can fail: a fake network module importing a node module is caught."""
    fake = tmp_path / "bad.py"
    fake.write_text("from peers.node.engine import ModelEngine\n")
    found = imports("peers.network.bad", fake, set(ALL) | {"peers.network.bad"})
    assert found == {"peers.node.engine"} and floor("peers.node.engine") > floor("peers.network.bad")


def functions():
    for name, path in ALL.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_a_screen():
    assert [(where, n) for where, n in functions() if n > MAX_FUNCTION_LINES] == []


def test_the_validators_window_reads_as_a_list_of_phases():
    lengths = dict(functions())
    (where,) = [w for w in lengths if w.startswith("peers/validator.py") and w.endswith(" evaluate_window")]
    assert lengths[where] < 30


def test_no_private_name_is_imported_across_packages():
    crossing = []
    for name, path in ALL.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                same = node.module.split(".")[:2] == name.split(".")[:2]
                crossing += [(name, node.module, a.name) for a in node.names if a.name.startswith("_") and not a.name.endswith("__") and not same]
    assert crossing == []


@pytest.mark.parametrize("package", ["peers", "gauntlet"])
def test_attributes_are_declared_not_probed(package):
    """Every attribute a class uses is set in its __init__: no getattr(self, "_x", default)."""
    probes = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in (ROOT / package).rglob("*.py")
              for n in ast.walk(ast.parse(p.read_text()))
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr"
              and n.args and isinstance(n.args[0], ast.Name) and n.args[0].id == "self"]
    assert probes == []


def test_an_import_inside_a_function_says_why_it_waits():
    """Imports inside functions are for optional extras or a quick start-up, and each block says which."""
    silent = []
    for name, path in ALL.items():
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    first = node.lineno - 1  # the first line of the block of imports this one belongs to
                    while first > 0 and (lines[first - 1].strip().startswith(("import ", "from ")) or not lines[first - 1].strip()):
                        first -= 1
                    block = lines[first - 1:node.end_lineno] if first > 0 else lines[:node.end_lineno]
                    if not any("#" in line for line in block):
                        silent.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert silent == []


def test_every_folder_of_code_is_a_package():
    """A folder without __init__.py would be left out of `pip install .` (setuptools finds packages)."""
    folders = {p.parent for package in ("peers", "gauntlet") for p in (ROOT / package).rglob("*.py")}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()) == []
