"""Which environment variables a component's code reads, found in the code itself.

Only `Settings.from_env()` reads the environment, and it reads every variable; what a component
*uses* is the `Settings` attributes its code touches. Starting from the component's entry
module, this walks the code it can reach (functions and methods found by name in the
first-party modules it imports) and collects the attributes that are `Settings` fields, or
properties and methods built on them (`topic_path` reads `project` and `jobs_topic`).

Reaching code by name over-approximates (two methods of the same name are both followed);
for the question asked here, "which variables must the deploy set", that errs on the safe side.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import fields
from functools import cache
from pathlib import Path

from nimbus.config import Settings

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("nimbus", "vm_worker", "mlflow_server")
LOCAL_ONLY_MARKERS = ("(`nimbus up`)", "unset in the cloud")


def cloud_variables_read(entry: Path) -> set[str]:
    """Environment variables the code reachable from `entry` reads and that matter in the
    cloud (settings documented as local-stack only are left out)."""
    return {name for name in variables_read(entry) if name not in local_only_variables()}


def variables_read(entry: Path) -> set[str]:
    """Environment variables behind every `Settings` attribute the code from `entry` touches."""
    env_of_field = {spec.name: spec.metadata["env"] for spec in fields(Settings)}
    derived = _derived_attributes()
    names: set[str] = set()
    for attribute in _settings_attributes_reached(entry):
        if attribute in env_of_field:
            names.add(env_of_field[attribute])
        for field_name in derived.get(attribute, ()):
            names.add(env_of_field[field_name])
    return names


@cache
def local_only_variables() -> frozenset[str]:
    """Settings whose documentation says they only serve the local stack."""
    return frozenset(
        spec.metadata["env"]
        for spec in fields(Settings)
        if any(marker in spec.metadata["doc"] for marker in LOCAL_ONLY_MARKERS)
    )


def _derived_attributes() -> dict[str, set[str]]:
    """Settings properties and methods -> the fields they read, transitively."""
    tree = ast.parse((REPO / "nimbus" / "config.py").read_text())
    settings_class = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings"
    )
    field_names = {spec.name for spec in fields(Settings)}
    direct: dict[str, set[str]] = {}
    for node in settings_class.body:
        if isinstance(node, ast.FunctionDef) and node.name != "from_env":
            direct[node.name] = {
                sub.attr
                for sub in ast.walk(node)
                if isinstance(sub, ast.Attribute)
                and isinstance(sub.value, ast.Name)
                and sub.value.id == "self"
            }
    resolved: dict[str, set[str]] = {}

    def resolve(name: str, seen: frozenset[str]) -> set[str]:
        out: set[str] = set()
        for attribute in direct.get(name, ()):
            if attribute in field_names:
                out.add(attribute)
            elif attribute in direct and attribute not in seen:
                out |= resolve(attribute, seen | {attribute})
        return out

    for name in direct:
        resolved[name] = resolve(name, frozenset({name}))
    return resolved


def _settings_attributes_reached(entry: Path) -> set[str]:
    """The attributes read off a settings object (`settings.x`, `self.settings.x`) anywhere in
    the code reachable from `entry`."""
    modules = _module_closure(entry)
    definitions: dict[str, list[ast.AST]] = {}
    imported_names: dict[int, set[str]] = {}
    owner: dict[int, Path] = {}
    for path in modules:
        tree = _parse(path)
        imported_names[id(tree)] = _import_bound_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                definitions.setdefault(node.name, []).append(node)
                owner[id(node)] = path

    used: set[str] = set()
    visited: set[int] = set()
    pending: list[tuple[ast.AST, set[str]]] = [(_parse(entry), imported_names[id(_parse(entry))])]
    while pending:
        node, module_imports = pending.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        used |= _read_off_settings(node)
        for name, is_attribute in _names_used(node):
            if not is_attribute and name in module_imports:
                continue  # a module imported by name (`redis`), not a definition to follow
            if name.startswith("__"):
                continue  # `super().__init__()` names every class's; instantiation covers it
            for definition in definitions.get(name, ()):
                tree = _parse(owner[id(definition)])
                pending.append((definition, imported_names[id(tree)]))
    return used


def _read_off_settings(node: ast.AST) -> set[str]:
    """`x` of every `settings.x` and `<anything>.settings.x` that running `node` reads (the
    codebase's one name for a Settings object)."""
    found = set()
    for code in _code_run(node):
        for sub in ast.walk(code):
            if isinstance(sub, ast.Attribute):
                receiver = sub.value
                if (isinstance(receiver, ast.Name) and receiver.id == "settings") or (
                    isinstance(receiver, ast.Attribute) and receiver.attr == "settings"
                ):
                    found.add(sub.attr)
    return found


def _names_used(node: ast.AST) -> Iterator[tuple[str, bool]]:
    """(name, is an attribute) for every name that running `node` uses."""
    for code in _code_run(node):
        for sub in ast.walk(code):
            if isinstance(sub, ast.Attribute):
                yield sub.attr, True
            elif isinstance(sub, ast.Name):
                yield sub.id, False


def _code_run(node: ast.AST) -> list[ast.AST]:
    """What reaching `node` runs. A class runs its `__init__` when instantiated; its other
    methods are reached by their own names, and its class-level declarations (a dataclass's
    fields) name attributes rather than read them."""
    if isinstance(node, ast.ClassDef):
        return [
            statement
            for statement in node.body
            if isinstance(statement, ast.FunctionDef)
            and statement.name in ("__init__", "__post_init__")
        ]
    return [node]


def _import_bound_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
            FIRST_PARTY
        ):
            # `from nimbus import api`: `api` is a module, not a definition.
            for alias in node.names:
                if (REPO / (node.module or "").replace(".", "/") / f"{alias.name}.py").exists():
                    names.add(alias.asname or alias.name)
    return names


def _module_closure(entry: Path) -> list[Path]:
    """`entry` and every first-party module it imports, at any depth, outside TYPE_CHECKING."""
    seen: dict[Path, None] = {}
    pending = [entry]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen[path] = None
        for module in _imports(_parse(path)):
            resolved = _module_path(module)
            if resolved is not None:
                pending.append(resolved)
    return list(seen)


def _imports(tree: ast.Module) -> Iterator[str]:
    type_only = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for sub in ast.walk(statement)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _module_path(module: str) -> Path | None:
    if module.split(".")[0] not in FIRST_PARTY:
        return None
    base = REPO / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))
