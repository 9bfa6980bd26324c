"""The package's import graph (read with `ast`, function-level imports included): no cycle, and
every import points down the layers below, so the runtime knows no stage, a stage knows only the
stages before it, and nothing but the CLI imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import realsyn

ROOT = Path(realsyn.__file__).parent
STAGES = ["extract", "embed", "retrieve", "synth", "balance", "export", "report"]
# top-level module or package -> layer; within the infrastructure layer modules may use each other
LAYERS = {"errors": 0, "prompts": 1, "config": 2, **dict.fromkeys(["io", "runtime", "models", "dedup", "centroids", "buckets", "tables"], 3),
          **{s: 4 + i / 10 for i, s in enumerate(STAGES)}, "pipeline": 5, "demo": 5, "console": 5, "train": 6,
          "cli": 7, "realsyn": 8}
SAME_LAYER_OK = {3}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "realsyn"


def test_every_module_has_a_layer():
    assert {_top(m) for m in _modules()} <= set(LAYERS), {_top(m) for m in _modules()} - set(LAYERS)


def test_imports_point_down():
    wrong = []
    for a, targets in _graph().items():
        for b in targets:
            la, lb = LAYERS[_top(a)], LAYERS[_top(b)]
            if _top(a) != _top(b) and not (lb < la or (lb == la and la in SAME_LAYER_OK)):
                wrong.append(f"{a} -> {b}")
    assert not wrong, "imports pointing up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)
