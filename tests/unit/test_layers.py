"""The import rules that keep the architecture visible: faces -> present -> domain -> settings, no circles."""
import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Lowest first. A module may import its own package or any package listed before it, never one after it.
LAYERS = ["settings", "data", "models", "safety", "runs", "training", "present"]
FACES = {"core.cli", "core.__main__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of the Lab that a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in ("core", "app_pages", "streamlit_app", "benchmarks")}


def _core_modules() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted((ROOT / "core").rglob("*.py"))}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def backward_imports(modules: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, imported in modules.items():
        for target in imported:
            if not target.startswith("core"):
                wrong.append(f"{module} imports {target}: core is imported by the faces, never the other way")
            elif target in FACES and module not in FACES:
                wrong.append(f"{module} imports the CLI {target}: the CLI is a face over core")
            elif module not in FACES and module != "core" and _layer(module) is None:
                wrong.append(f"{module} is outside every layer package")
            elif _layer(target) is not None and _layer(module) is not None and _layer(target) > _layer(module):
                wrong.append(f"{module} ({LAYERS[_layer(module)]}) imports {target} ({LAYERS[_layer(target)]})")
    return wrong


def cycles(modules: dict[str, set[str]]) -> list[list[str]]:
    """Import circles between modules, lazy imports included: each found once, as a path back to its start."""
    graph = defaultdict(set)
    for module, imported in modules.items():
        for target in imported:
            # `from core.x import y` may name a submodule y or a name in core.x; the module is what counts.
            graph[module].add(target if target in modules else target.rsplit(".", 1)[0])
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
    return found


def test_core_imports_point_down_the_layers():
    assert backward_imports(_core_modules()) == []


def test_core_has_no_import_circles():
    assert cycles(_core_modules()) == []


def test_every_layer_package_says_what_it_owns():
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / "core" / name / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"core/{name}/__init__.py needs a docstring saying what it owns"


def test_core_never_imports_streamlit():
    for path in (ROOT / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(n.split(".")[0] == "streamlit" for n in names), path


def test_the_checks_catch_a_backward_import_and_a_circle():
    modules = {"core.settings.config": {"core.runs.folders"}, "core.runs.folders": {"core.settings.config"},
               "core.data.sources": {"core.cli"}}
    wrong = backward_imports(modules)
    assert any("core.settings.config (settings) imports core.runs.folders (runs)" in w for w in wrong)
    assert any("imports the CLI core.cli" in w for w in wrong)
    assert cycles(modules) == [["core.runs.folders", "core.settings.config", "core.runs.folders"]]
