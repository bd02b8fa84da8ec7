"""The package layout holds: imports point one way, only one module imports open_clip, --help needs no torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "unclip_cli"
# What each sub-package may import from unclip_cli (besides itself, errors and options). Lower layers never
# import higher ones: models/ and diffusion/ are pure, the CLI is on top.
ALLOWED = {
    "diffusion": set(),
    "models": set(),
    "weights": {"models", "diffusion"},
    "pipeline": {"models", "diffusion", "weights"},
    "shapes": {"pipeline", "models", "diffusion", "weights"},
    "train": {"models", "diffusion", "weights", "shapes"},
    "cli": {"pipeline", "weights", "shapes", "train", "models", "diffusion"},
}
LEAVES = {"errors", "options", "__init__", "__main__"}  # top-level modules anyone may import


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module this file imports, at the top or inside a function (absolute names)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            base = node.module or ""
            submodules = {f"{base}.{a.name}" for a in node.names} & MODULE_NAMES  # `from pkg import module`
            out |= submodules or {base}
    return out


MODULE_NAMES = {module_name(p) for p in SRC.rglob("*.py")}
MODULES = {module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {m: {i for i in imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "unclip_cli"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    own = layer(module)
    if own not in ALLOWED:
        return
    for target in GRAPH[module]:
        other = layer(target)
        if other in (own, "unclip_cli") or other in LEAVES:  # a top-level module is its own layer
            continue
        assert other in ALLOWED[own], f"{module} imports {target}: {own}/ may import only {sorted(ALLOWED[own])}"


def test_no_import_cycles():
    """No module reaches itself through imports (lazy ones included), and neither does any sub-package."""
    def find_cycle(graph):
        state: dict[str, int] = {}
        stack: list[str] = []

        def visit(n):
            state[n] = 1
            stack.append(n)
            for m in sorted(graph.get(n, ())):
                if state.get(m) == 1:
                    return stack[stack.index(m):] + [m]
                if m not in state and (c := visit(m)):
                    return c
            stack.pop()
            state[n] = 2
            return None

        for n in sorted(graph):
            if n not in state and (c := visit(n)):
                return c
        return None

    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))
    packages: dict[str, set[str]] = {}
    for m, targets in GRAPH.items():
        packages.setdefault(layer(m), set()).update(layer(t) for t in targets if layer(t) != layer(m))
    cycle = find_cycle({k: v - {"unclip_cli"} for k, v in packages.items()})
    assert cycle is None, " -> ".join(cycle)


def test_only_models_clip_imports_open_clip():
    users = sorted(m for m, p in MODULES.items() if any(i.split(".")[0] == "open_clip" for i in imports(p)))
    assert users == ["unclip_cli.models.clip"]


def test_the_cli_and_the_registry_load_without_torch():
    code = ("import sys; import unclip_cli.cli.app, unclip_cli.weights.registry, unclip_cli.options; "
            "print(sorted(m for m in ('torch', 'open_clip', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_function_is_short_and_every_module_small():
    """Functions under about 60 lines (a module's __init__ aside), modules under about 600."""
    long = []
    for name, path in MODULES.items():
        text = path.read_text()
        if text.count("\n") > 600:
            long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "__init__":
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, long
