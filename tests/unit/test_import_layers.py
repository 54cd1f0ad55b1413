"""The import graph of ``src/peftkit``: no cycles and no edge from a lower layer to a higher one.

Every ``import`` counts, at module level and inside functions (a deferred import is still a dependency),
except under ``if TYPE_CHECKING:`` (never executed), and so does every spec location in
:data:`peftkit.catalog.METHOD_SPECS` (``peftkit.registry`` imports them with ``importlib``). The layers, lowest
first (a module may import its own layer and those below it):

* leaves: the on-disk vocabulary (``types``, ``catalog``), ``errors``, ``locking``, ``config_checks``, and the
  file helpers that need nothing else (``io.commit``, ``io.files``, ``io.hub``, ``io.keys``);
* ``config``; then ``targeting`` / ``defaults``; ``quant``; the template layers (``layers``) and the merge
  primitive they use (``merging.merge``);
* ``methods.spec``: the contract between the core and the methods, with the lookup the registry fills;
* the method-agnostic core: ``functional`` (with ``adapter_state``), then the tuner model and the adapter
  files and state dicts (``tuner``, ``io``);
* the methods (``methods.<name>``), which build on the core (prompt tuner, ``AdaLoraModel``...);
* ``registry``, which imports every method; then the services that use a given method (``hotswap``,
  ``merging``); then the shells: ``peft_model``, ``tasks``, ``mapping`` / ``auto``, ``integrations``, and at
  the top the package itself with the CLI (which uses ``import peftkit``; the package never imports the CLI).

This differs from DESIGN.md's first list in one place: the methods sit *above* ``functional`` and ``io``
(there the registry and methods came below them), because methods build on the core, while the core needs
only the spec contract, never a concrete method.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "peftkit"

#: Lowest layer first; a module belongs to the entry with the longest matching dotted prefix.
LAYERS: list[tuple[str, ...]] = [
    ("compile_frames",),  # torch.compile boundaries of the entry points: imports only torch (locking uses it)
    ("types", "catalog", "errors", "locking", "config_checks", "io.commit", "io.files", "io.hub", "io.keys"),
    ("import_utils",),  # PEFT's peft.import_utils path: facts about installed libraries, no peftkit import
    ("config",),
    ("targeting", "defaults"),
    ("quant",),
    ("layers", "merging.merge", "merging.strategies"),
    ("methods.spec",),
    ("adapter_state", "functional"),
    ("tuner", "io"),
    ("methods",),
    ("registry",),
    ("hotswap_prepare", "merging"),
    ("hotswap",),
    ("status",),  # adapter status reports (PEFT's get_layer_status / get_model_status), methods of PeftModel
    ("peft_model",),
    ("tasks", "mixed_model"),
    ("mapping", "auto", "helpers", "arrow"),
    ("integrations",),
    # the package itself, the CLI (uses its API), PEFT's import paths (aliases, and names published from above)
    ("", "__main__", "cli", "utils", "tuners", "mapping_func", "peft_paths", "optimizers"),
]

#: Edges that break the layering on purpose, each with its reason. Keep it empty unless truly needed.
ALLOWED_BACK_EDGES: dict[tuple[str, str], str] = {}


def module_files() -> dict[str, Path]:
    """Dotted name relative to ``peftkit`` (``""`` for the package) -> file."""
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The peftkit module a dotted import target lives in (``peftkit.a.b.Name`` -> ``a.b``)."""
    if name != "peftkit" and not name.startswith("peftkit."):
        return None
    rel = name.removeprefix("peftkit").removeprefix(".")
    while rel not in modules:
        if not rel:
            return None
        rel = rel.rpartition(".")[0]
    return rel


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        if _is_type_checking(node):
            stack.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every peftkit module ``module`` imports at run time, wherever the import statement is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str | None] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(["peftkit", package][: 2 if package else 1])
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = base + (f".{node.module}" if node.module else "")
            else:
                target = node.module or ""
            # ``from peftkit.x import y`` imports submodule ``x.y`` when there is one
            found.update(_resolve(f"{target}.{alias.name}", modules) for alias in node.names)
    return {m for m in found if m is not None and m != module}


def catalog_edges(modules: dict[str, Path]) -> set[str]:
    """The spec modules named in the catalog (imported by the registry at run time)."""
    tree = ast.parse(modules["catalog"].read_text(encoding="utf-8"))
    locations = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return {m for loc in locations if ":" in loc and (m := _resolve(loc.partition(":")[0], modules))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports (the registry also gets the catalog's spec modules)."""
    modules = module_files()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    graph["registry"] |= catalog_edges(modules)
    return graph


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix of ``module`` listed there."""
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best < 0:
        raise AssertionError(f"peftkit.{module} is in no layer: add it to LAYERS in {Path(__file__).name}.")
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    assert "io.files" in graph["config"]  # imported inside PeftConfig.save_pretrained
    assert "methods.lora.method" in graph["registry"]  # through the catalog
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from peftkit.tuner import TunerModel\n"
    assert _runtime_nodes(ast.parse(guarded))  # parses
    assert not any(
        isinstance(n, ast.ImportFrom) and n.module == "peftkit.tuner" for n in _runtime_nodes(ast.parse(guarded))
    )


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, f"import cycles in src/peftkit: {found}"


def test_no_import_goes_up_the_layers() -> None:
    back = []
    for module, targets in sorted(import_graph().items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module) and (module, target) not in ALLOWED_BACK_EDGES:
                back.append(f"peftkit.{module} -> peftkit.{target}")
    assert not back, "imports from a lower layer to a higher one (see this file's docstring):\n" + "\n".join(back)


@pytest.mark.parametrize("package", ["io", "layers", "merging", "methods", "cli"])
def test_subpackage_inits_import_nothing(package: str) -> None:
    """Importing ``peftkit.methods.x`` runs ``peftkit/methods/__init__.py``: it must not pull in a layer."""
    path = SRC / package / "__init__.py"
    assert not imports_of(package, path, module_files())
