"""Every session key a page uses is declared in app_pages/parts/session_keys.py, once, with whether it persists.

The pages' sources are read, not run: every key= argument and every key read or written on st.session_state
that names a key (a string, an f-string, a module constant, a name from the registry) must fall under a
declaration. Keys a page builds some other way go through a Family's key(), which checks its rule.
"""
import ast
import importlib
from pathlib import Path

import pytest

from app_pages.parts import session_keys
from app_pages.parts.session_keys import FAMILIES, KEYS, Family, declared, persists

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "app_pages").rglob("*.py"), ROOT / "streamlit_app.py"])
# Widgets that refuse a value written to their key: keep_widget_state would break them.
WRITE_REFUSING = {"button", "download_button", "file_uploader", "camera_input", "form_submit_button"}
NOT_WIDGET_KEYS = {"sorted", "sort", "min", "max"}  # key= there is a function, not a widget key


def _is_state(node, aliases) -> bool:
    """st.session_state, or a name a file bound to it."""
    return (isinstance(node, ast.Attribute) and node.attr == "session_state") or (
        isinstance(node, ast.Name) and node.id in aliases)


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


class _File:
    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text(), str(path))
        self.constants: dict[str, ast.expr] = {}  # module-level NAME = expression
        self.returns: dict[str, ast.expr] = {}  # what a module-level function ending in one return gives
        self.imported: dict[str, tuple[str, str]] = {}  # local name -> (app_pages module, its name there)
        self.registry_modules: set[str] = set()  # local names of the registry module
        self.aliases: set[str] = set()
        for node in self.tree.body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                             and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                    self.constants.update({n.id: v for n, v in pairs if isinstance(n, ast.Name)})
            elif isinstance(node, ast.FunctionDef) and isinstance(node.body[-1], ast.Return) and node.body[-1].value:
                self.returns[node.name] = node.body[-1].value
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("app_pages.") \
                    and node.module != "app_pages.parts":
                self.imported.update({a.asname or a.name: (node.module, a.name) for a in node.names})
            elif isinstance(node, ast.ImportFrom) and node.module == "app_pages.parts":
                self.registry_modules.update(a.asname or a.name for a in node.names if a.name == "session_keys")
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                             and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                    self.aliases.update(n.id for n, v in pairs if isinstance(n, ast.Name) and _is_state(v, ()))

    def key_uses(self):
        """(node, the call it is a widget key of or None) for every key expression in the file."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "key" and _call_name(node) not in NOT_WIDGET_KEYS:
                        yield kw.value, node
                func = node.func
                if (isinstance(func, ast.Attribute) and _is_state(func.value, self.aliases)
                        and func.attr in ("get", "pop", "setdefault") and node.args):
                    yield node.args[0], None
            elif isinstance(node, ast.Subscript) and _is_state(node.value, self.aliases):
                yield node.slice, None
            elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) \
                    and any(_is_state(c, self.aliases) for c in node.comparators):
                yield node.left, None

    def registry_value(self, node):
        """What a name from the registry (or another helper module) stands for, or None when node is not one."""
        if isinstance(node, ast.Name) and node.id in self.imported:
            module, name = self.imported[node.id]
            return getattr(importlib.import_module(module), name)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in self.registry_modules:
            return getattr(session_keys, node.attr)
        return None

    def resolve(self, node):
        """("name", key) for a key known from the source, ("prefix", text) for an f-string, ("family", Family)
        for a Family's key(), or None for one built some other way (a parameter, a helper's result)."""
        value = self.registry_value(node)
        if isinstance(value, str):
            return "name", value
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return "name", node.value
        if isinstance(node, ast.Name) and node.id in self.constants:
            return self.resolve(self.constants[node.id])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.returns:
            return self.resolve(self.returns[node.func.id])
        if isinstance(node, ast.JoinedStr):
            lead = node.values[0]
            text = lead.value if isinstance(lead, ast.Constant) else ""
            return "prefix", text
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "key":
            family = self.registry_value(node.func.value)
            if isinstance(family, Family):
                return "family", family
        return None


def _uses():
    for path in SOURCES:
        source = _File(path)
        for node, call in source.key_uses():
            yield f"{path.relative_to(ROOT)}:{node.lineno}", source.resolve(node), call


def _undeclared(found) -> str | None:
    kind, value = found
    if kind == "name" and declared(value) is None:
        return f"{value!r} is not declared"
    if kind == "prefix" and not any(value.startswith(f.prefix) for f in FAMILIES):
        return f"an f-string key starting {value!r} is under no Family's prefix"
    return None


def test_every_key_the_pages_use_is_declared():
    wrong = [f"{where}: {problem}" for where, found, _ in _uses()
             if found and (problem := _undeclared(found))]
    assert wrong == [], "declare these keys in app_pages/parts/session_keys.py:\n" + "\n".join(wrong)


def test_the_scan_sees_the_pages_keys():
    """The scan finds the keys it should: a page's literal, a registry name, a family's key()."""
    found = {f[1] for _, f, _ in _uses() if f and f[0] == "name"}
    assert {"lab_source", "ds_choice", "exp_shown", "room_name"} <= found
    assert any(f and f[0] == "family" for _, f, _ in _uses())
    problem = _undeclared(("name", "exp_typo"))
    assert problem and "not declared" in problem


def test_buttons_uploaders_and_cameras_never_persist():
    """keep_widget_state writes every persisting key back before the page draws: these widgets refuse that."""
    wrong = []
    for where, found, call in _uses():
        if call is None or _call_name(call) not in WRITE_REFUSING or not found:
            continue
        kind, value = found
        persisting = (value.persists if kind == "family" else persists(value) if kind == "name"
                      else any(f.persists for f in FAMILIES if value.startswith(f.prefix)))
        if persisting:
            wrong.append(f"{where}: {_call_name(call)} under a persisting key")
    assert wrong == []


def test_each_key_is_declared_once_with_a_doc_and_a_family_keeps_to_its_rule():
    """No key falls under two declarations; a family's key() refuses what its rule does not allow."""
    for key in KEYS.values():
        assert key.doc and key.name == key.name.strip()
        assert [f.prefix for f in FAMILIES if f.owns(key.name)] == []
    for family in FAMILIES:
        assert family.doc
    with pytest.raises(ValueError, match="declared twice"):
        session_keys._key("lab_source", True, "again")
    with pytest.raises(ValueError):
        session_keys.RUNS_PICKER.key("generation")
    assert session_keys.MODEL_SETTING.key("t", "ft_lr") == "exp_t_ft_lr" and persists("exp_t_ft_lr")
    assert declared("exp_x_epochs") is None  # no model has the letter x
