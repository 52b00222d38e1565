"""The package's layering: model <- data / training <- inference <- cli, no import cycle.

Every import statement of every module counts, those inside functions too (a lazy import is
still a dependency). Third-party packages used by the package are declared in pyproject.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vdcnn_res"

# Lower layers never import higher ones; packages on one layer never import each other.
LAYERS = {"errors": 0, "logs": 0, "model": 1, "data": 2, "training": 2, "inference": 3, "cli": 4}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m)))
def test_imports_point_down(module):
    own = layer(module)
    for target in GRAPH[module]:
        other = layer(target)
        if other is None or other == own:
            continue
        assert LAYERS[other] < LAYERS[own], f"{module} imports {target}: {own} may not depend on {other}"


def test_nothing_imports_the_cli():
    for module, targets in GRAPH.items():
        if layer(module) != "cli":
            assert not [t for t in targets if layer(t) == "cli"], f"{module} imports the cli"


def test_every_third_party_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {req.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].split("~")[0].strip()
                for req in project["dependencies"] + sum(project.get("optional-dependencies", {}).values(), [])}
    declared = {d.lower().replace("_", "-") for d in declared}
    import_names = {"pytorch_lightning": "pytorch-lightning", "lightning_fabric": "lightning-fabric", "yaml": "pyyaml"}
    for path in MODULES.values():
        for target in imports_of(path):
            top = target.split(".")[0]
            if not top or top in sys.stdlib_module_names or top == "vdcnn_res":
                continue
            dist = import_names.get(top, top).lower().replace("_", "-")
            assert dist in declared, f"{module_name(path)} imports {top}, which pyproject.toml does not declare"
