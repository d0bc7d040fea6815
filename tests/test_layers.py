"""vqkit's imports point one way, bottom to top: no cycle, and no import inside a function to hide one.

Every module of ``vqkit/`` is parsed with ``ast`` (nothing is imported), and each of its imports of
a vqkit module, at module level or inside a function alike, becomes an edge of the import graph.
``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``; the parent
packages Python imports on the way are not edges (``vqkit.quantize.vq`` importing its sibling
``codebook`` through ``from vqkit.quantize import codebook`` does not depend on ``vqkit.quantize``'s
``__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vqkit"

# Lowest first. A module may import modules of its own layer (the graph stays acyclic) or of a
# lower one, never of a higher one. An entry names a module or a package (and everything in it);
# the longest entry that matches a module decides its layer. A new module must be placed here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # No vqkit imports at all: atomic files and safetensors weights; process group, collectives.
    ("foundation", ("vqkit", "vqkit.errors", "vqkit.io", "vqkit.distributed")),
    # Parts that know nothing of models: quantizers, layers, audio and data, metrics, config
    # files, and a weights spec loaded into a model someone else built (builders' `weights=`).
    (
        "parts",
        (
            "vqkit.quantize",
            "vqkit.nn",
            "vqkit.audio",
            "vqkit.datasets",
            "vqkit.metrics",
            "vqkit.config",
            "vqkit.weights",
        ),
    ),
    ("models", ("vqkit.models",)),
    ("train", ("vqkit.train",)),
    # A run directory's files: config, media, metrics, the HTML report.
    ("run directories", ("vqkit.runs", "vqkit.report")),
    # Models rebuilt by name from model.json: load_model, bundles.
    ("loading by name", ("vqkit.bundle",)),
    ("pipeline", ("vqkit.pipeline",)),
    ("cli", ("vqkit.cli", "vqkit.__main__")),
]


# Function-level imports of vqkit modules that are allowed, each with its reason. Only the top
# layer may defer an import (for `vqkit --help` speed): nothing imports it, so it hides no cycle.
DEFERRED: dict[tuple[str, str], str] = {
    ("vqkit.cli", "vqkit.datasets.speech_corpus"): "vqkit.datasets imports torchvision (seconds)",
}


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """``{"vqkit.train.checkpoint": path, "vqkit.train": .../__init__.py, ...}``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _target(name: str, modules: set[str]) -> str | None:
    """The vqkit module that importing ``name`` runs: ``name`` or its longest known prefix."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _is_package(module: str, sources: dict[str, str]) -> bool:
    return any(other.startswith(module + ".") for other in sources)


def imports(module: str, source: str, sources: dict[str, str]) -> list[tuple[str, int, bool]]:
    """``(target module, line, inside a function)`` for each vqkit import in ``source``."""
    modules = set(sources)
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in (
                "TYPE_CHECKING",
                "typing.TYPE_CHECKING",
            ):
                continue  # annotations only: never runs, so it makes no cycle
            nested = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the package that holds `module`
                    package = module if _is_package(module, sources) else module.rpartition(".")[0]
                    for _ in range(child.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    names.append(full if full in modules else base)
            for name in names:
                if name.split(".")[0] != "vqkit":
                    continue
                target = _target(name, modules)
                if target is not None and target != module:
                    found.append((target, child.lineno, in_function))
            visit(child, nested)

    visit(ast.parse(source), False)
    return found


def layer_of(module: str) -> int | None:
    best, layer = -1, None
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            matches = module == entry or (entry != "vqkit" and module.startswith(entry + "."))
            if matches and len(entry) > best:
                best, layer = len(entry), index
    return layer


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := walk(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)) is not None:
            return cycle
    return None


def problems(sources: dict[str, str]) -> list[str]:
    """Every breach of the three rules, one line each (empty when the imports point one way)."""
    out: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, source in sorted(sources.items()):
        here = layer_of(module)
        if here is None:
            out.append(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
        for target, line, in_function in imports(module, source, sources):
            graph[module].add(target)
            if in_function and (module, target) not in DEFERRED:
                out.append(
                    f"{module}:{line} imports {target} inside a function; import it at the top "
                    f"(if that makes a cycle, move the shared code down a layer)"
                )
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                out.append(
                    f"{module}:{line} ({LAYERS[here][0]}) imports {target} "
                    f"({LAYERS[there][0]}), a higher layer"
                )
    cycle = find_cycle(graph)
    if cycle is not None:
        out.append(f"import cycle: {' -> '.join(cycle)}")
    return out


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return {m: p.read_text() for m, p in module_files().items()}


def test_imports_point_one_way(sources):
    assert problems(sources) == []


def test_every_module_is_in_a_layer(sources):
    assert {m: layer_of(m) for m in sources if layer_of(m) is None} == {}


def test_only_the_top_layer_defers_imports():
    top = len(LAYERS) - 1
    assert all(layer_of(module) == top for module, _ in DEFERRED), DEFERRED


def test_the_graph_sees_the_known_edges(sources):
    """The parser finds real imports (a checker that finds nothing passes vacuously)."""
    edges = {(m, target) for m, s in sources.items() for target, _, _ in imports(m, s, sources)}
    assert ("vqkit.models.registry", "vqkit.weights") in edges
    assert ("vqkit.bundle", "vqkit.models") in edges
    assert ("vqkit.quantize.vq", "vqkit.quantize.codebook") in edges
    assert ("vqkit.quantize.codebook", "vqkit.distributed") in edges
    assert ("vqkit.train.checkpoint", "vqkit.io") in edges


def test_a_lazy_build_model_in_checkpoint_is_caught(sources):
    lazy = (
        "\n\ndef _rebuild(config):\n    from vqkit.models import build_model\n\n"
        "    return build_model(config)\n"
    )
    broken = {**sources, "vqkit.train.checkpoint": sources["vqkit.train.checkpoint"] + lazy}
    found = problems(broken)
    assert any(
        p.startswith("vqkit.train.checkpoint:") and "vqkit.models inside a function" in p
        for p in found
    ), found


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        # the old cycle: the weights loader building models by name, below the models
        ("vqkit.weights", "from vqkit.models import build_model", "a higher layer"),
        ("vqkit.io", "from vqkit.train.checkpoint import save_latest", "a higher layer"),
        ("vqkit.runs", "from vqkit.bundle import load_model", "a higher layer"),
        # a cycle inside one layer
        ("vqkit.nn.conv", "from vqkit.nn.encoder import Encoder", "import cycle"),
        ("vqkit.quantize.base", "from . import vq", "import cycle"),
    ],
)
def test_breaches_are_reported(sources, module, line, expected):
    broken = {**sources, module: f"{line}\n{sources[module]}"}
    assert any(expected in p for p in problems(broken)), problems(broken)
