"""The house rules of ARCHITECTURE.md, checked: layers import only downwards; metrics need no torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sklearn_ais"

# Layer of every module (ARCHITECTURE.md); a module may import from its own layer and the ones below.
LAYERS = {
    0: ["_sklearn_compat", "_device", "_targets", "_triplets", "_validation", "_pairs", "_files", "_stats", "_parallel"],
    1: ["datasets"],
    2: ["backbones", "_containers", "_feature_maps", "_feature_cache", "_geometry"],
    3: ["_similarity", "_ablation", "metrics", "_map_metrics", "_feature_alignment", "_removal",
        "_wordnet"],
    4: ["_selector", "_layer_selector", "_heatmaps", "attention", "alignment._base", "alignment._reweighting",
        "alignment._glocal", "alignment._pruning", "_pair_heatmaps", "alignment._harmonization_loss",
        "alignment._harmonization"],
    5: ["model_selection", "alignment._held_out", "alignment._bootstrap", "alignment._compare", "alignment", "_deletion",
        "evaluation"],
    6: ["plotting", "_report", "workflow"],
    7: ["cli"],
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}
# Upward edges, imported only when called (ARCHITECTURE.md): a result's .plot() convenience draws through
# plotting. A head names its kernel and hands it arrays (Head.kernel_spec); it never imports the kernels.
ALLOWED_UPWARD = {("alignment._compare", "plotting")}


def _layer(module: str) -> int:
    """Layer of a dotted module name below sklearn_ais (a package's modules share its layer unless listed)."""
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in LAYER_OF:
            return LAYER_OF[".".join(parts[:k])]
    raise KeyError(module)


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            yield ".".join(parts), path


def _imports(name: str, path: Path):
    """Modules of the package that ``name`` imports (module level and inside functions)."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join(base + ([node.module] if node.module else []))
            if target:
                yield target
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sklearn_ais."):
            yield node.module[len("sklearn_ais."):]


MODULES = list(_modules())


def test_every_module_has_a_layer():
    missing = []
    for name, _ in MODULES:
        try:
            _layer(name)
        except KeyError:
            missing.append(name)
    assert not missing, f"add these modules to ARCHITECTURE.md and LAYERS: {missing}"


@pytest.mark.parametrize("name, path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_go_downwards(name, path):
    upward = [t for t in _imports(name, path) if t and _layer(t) > _layer(name) and (name, t) not in ALLOWED_UPWARD]
    assert not upward, f"{name} (layer {_layer(name)}) imports from higher layers: {upward}"


def test_metrics_do_not_import_torch():
    code = "import sys, sklearn_ais.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def _import_graph():
    """Module -> the package's modules it imports (module level and inside functions), resolved to modules."""
    names = {name for name, _ in MODULES}

    def resolve(target):
        parts = target.split(".")
        for k in range(len(parts), 0, -1):  # ``from .x import name`` names module x (or a name inside it)
            if ".".join(parts[:k]) in names:
                return ".".join(parts[:k])
        return None

    return {name: {m for m in map(resolve, _imports(name, path)) if m and m != name} for name, path in MODULES}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_kernels_do_not_know_the_heads():
    """The ablation kernels take arrays and shapes, never head classes; the heads never import the kernels."""
    graph = _import_graph()
    assert not any(t.startswith("backbones") for t in graph["_ablation"]), graph["_ablation"]
    assert not any(t == "_ablation" for name, ts in graph.items() if name.startswith("backbones") for t in ts)


def test_no_import_circles():
    """No circle of imports anywhere in the package (lazy imports included). A result's .plot() imports plotting
    lazily, but plotting never imports the modules that compute results back, and the bootstrap and the comparison
    share their held-out scoring through a module below both."""
    graph = _import_graph()
    circles = _cycles(graph)
    assert not circles, f"import circles: {circles}"
    assert "alignment._compare" not in graph["plotting"] and "alignment._bootstrap" not in graph["plotting"]
    assert "alignment._compare" not in graph["alignment._bootstrap"]
