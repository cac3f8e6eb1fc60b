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
    4: ["_selector", "_heatmaps", "attention", "alignment._base", "alignment._reweighting", "alignment._glocal",
        "alignment._pruning", "_pair_heatmaps", "alignment._harmonization_loss", "alignment._harmonization"],
    5: ["model_selection", "alignment._compare", "alignment", "_deletion", "evaluation"],
    6: ["plotting", "_report", "workflow"],
    7: ["cli"],
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}
# Upward edges, imported only when called (ARCHITECTURE.md): a result's .plot() convenience draws through
# plotting; a head owns its ablation kernel (Head.ablation_kernel), which builds on the similarity layer.
ALLOWED_UPWARD = {("alignment._compare", "plotting"), ("backbones._heads", "_ablation")}


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
