"""The package layering, computed from every module's imports (importlib strings too).

- the library (`cortex/*.py`) imports neither the gateway (`cortex.gateway`), the CLI
  (`cortex.cli`), the neuron nor the default plugins, so a plugin author or an app that
  embeds the router gets the library alone;
- nothing names a project module in a string for importlib: the neuron is started
  through its package's public `create_app`, plugins through entry points;
- the default plugins (`cortex_plugins/*`) import only what `cortex/__init__.py`
  exports (and `cortex.dialect`), never one another: a plugin package's own modules
  may import each other, nothing else of the project;
- no module is over 400 lines;
- no import circle anywhere in cortex, cortex_neuron and cortex_plugins, imports for
  type checking included: each gateway part is handed the parts it uses.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cortex", "cortex_neuron", "cortex_plugins")
#: `cortex.asgi:gateway` is the ASGI factory's documented name; it defers to the gateway.
SHIMS = {"cortex.asgi": "cortex.gateway.asgi"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py"))}


def _absolute(node: ast.ImportFrom, name: str, path: Path) -> str:
    if node.level == 0:
        return node.module or ""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path) -> set[str]:
    """Every module `name` imports (at any depth: functions and TYPE_CHECKING blocks
    count), `from x import y` counted as x.y where y is a module (and as x only where
    some y is not), and every string given to importlib.import_module or __import__."""
    known = modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, path)
            submodules = {f"{base}.{a.name}" for a in node.names} & known.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):  # `from pkg import mod` needs only mod
                found.add(base)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else \
                func.id if isinstance(func, ast.Name) else ""
            if called in IMPORTERS and node.args \
                    and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def library() -> dict[str, Path]:
    """cortex/*.py: what plugins and both daemons build on."""
    return {name: path for name, path in modules().items()
            if within(name, "cortex") and not within(name, "cortex.gateway", "cortex.cli")}


def test_the_library_imports_neither_gateway_cli_neuron_nor_plugins() -> None:
    found = modules()
    assert "cortex.router" in found and "cortex.gateway.proxy" in found  # the walk works
    forbidden = ("cortex.gateway", "cortex.cli", "cortex_neuron", "cortex_plugins")
    wrong = {name: sorted(m for m in imports_of(name, path)
                          if within(m, *forbidden) and SHIMS.get(name) != m)
             for name, path in library().items()}
    assert {name: bad for name, bad in wrong.items() if bad} == {}


IMPORTERS = ("import_module", "__import__", "find_spec")


def test_no_project_module_is_imported_by_a_string() -> None:
    strings: dict[str, list[str]] = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else \
                func.id if isinstance(func, ast.Name) else ""
            arg = node.args[0]
            if called in IMPORTERS and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str) and within(arg.value, *PACKAGES):
                strings.setdefault(name, []).append(arg.value)
    assert strings == {}



def import_graph() -> dict[str, set[str]]:
    """Each project module and the project modules it imports (as `imports_of` counts)."""
    known = modules()
    return {name: {m for m in imports_of(name, path) if m in known and m != name}
            for name, path in known.items()}


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle in `graph`, as the modules along it back to the first; None if none."""
    finished: set[str] = set()
    for root in sorted(graph):
        if root in finished:
            continue
        path = [root]
        pending = [iter(sorted(graph.get(root, ())))]
        while pending:
            following = next(pending[-1], None)
            if following is None:
                finished.add(path.pop())
                pending.pop()
            elif following in path:
                return [*path[path.index(following):], following]
            elif following not in finished:
                path.append(following)
                pending.append(iter(sorted(graph.get(following, ()))))
    return None


def test_the_circle_finder_finds_one() -> None:
    assert import_circle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]
    assert import_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_anywhere() -> None:
    """No module imports, even only for type checking, one that imports it back: each part
    is handed what it uses (cortex.gateway.app, the composition root, is imported by
    nobody but the package and what builds the app)."""
    assert import_circle(import_graph()) is None


def test_only_the_package_and_the_asgi_factory_import_the_composition_root() -> None:
    """`cortex.gateway.app` builds the app from the parts; a part that imported it back
    would be handed a bag of everything again."""
    importers = {name for name, imported in import_graph().items()
                 if "cortex.gateway.app" in imported}
    assert importers == {"cortex.gateway", "cortex.gateway.asgi"}


# --- the default plugins use the public API only ----------------------------------------------

#: The one module past cortex/__init__ a plugin may import: the dialect API and toolkit.
PLUGIN_API = ("cortex.dialect",)


def public_api() -> set[str]:
    """cortex.__all__, read from the source."""
    for node in ast.parse((ROOT / "cortex" / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) \
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("cortex/__init__.py has no __all__")


def plugin_of(module: str) -> str:
    """The plugin a module belongs to: `cortex_plugins.anthropic.types` is part of
    `cortex_plugins.anthropic`, a package whose modules may import each other."""
    return ".".join(module.split(".")[:2])


def plugin_imports(name: str, path: Path, public: set[str]) -> list[str]:
    """What the plugin module `name` imports that it may not."""
    wrong: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, path)
            if base == "cortex":
                wrong += [f"cortex.{a.name} (not in cortex.__all__)" for a in node.names
                          if a.name not in public]
                continue
            targets = [base]
        else:
            continue
        for target in targets:
            if within(target, "cortex_plugins") and plugin_of(target) != plugin_of(name):
                wrong.append(f"{target} (another plugin)")
            elif within(target, "cortex", "cortex_neuron") and target != "cortex" \
                    and not within(target, *PLUGIN_API):
                wrong.append(f"{target} (past the public API)")
    return wrong


def test_the_default_plugins_use_only_the_public_api() -> None:
    public = public_api()
    plugins = {name: path for name, path in modules().items() if within(name, "cortex_plugins")}
    assert "cortex_plugins.anthropic.stream" in plugins and "Dialect" in public  # the walk works
    wrong = {name: plugin_imports(name, path, public) for name, path in plugins.items()}
    assert {name: bad for name, bad in wrong.items() if bad} == {}


def test_the_plugin_rule_catches_each_kind_of_import(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("from cortex import Dialect, StopMatcher\n"
                      "from cortex import build_options\n"
                      "from cortex.dialect import SSEReader\n"
                      "from cortex.errors import NotFound\n"
                      "import cortex.types\n"
                      "from cortex_neuron import create_app\n"
                      "from cortex_plugins.openai import OpenAIDialect\n"
                      "from . import types\n"
                      "from .types import MessagesRequest\n")
    assert plugin_imports("cortex_plugins.anthropic.probe", module, public_api()) == [
        "cortex.build_options (not in cortex.__all__)",
        "cortex.errors (past the public API)",
        "cortex.types (past the public API)",
        "cortex_neuron (past the public API)",
        "cortex_plugins.openai (another plugin)",
    ]


# --- small modules ----------------------------------------------------------------------------

MAX_LINES = 400


def test_no_module_is_over_400_lines() -> None:
    """Small modules with one responsibility; tests and bench are not counted."""
    lines = {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
             for path in modules().values()}
    assert {path: n for path, n in lines.items() if n > MAX_LINES} == {}
