"""Issue 22: imports go one way. No import circle anywhere in the package, and the runtime's layers import only
downwards: leaves -> planning -> engines -> selection -> core -> tools (every ``import``, also those inside
functions, counts: a lazy import is still a dependency). A new circle or an upward import fails here, naming it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scopert"

# The runtime's layers, lowest first. A module may import its own layer's modules and those below, never above.
# Engines are the exception within their layer: an engine imports the backend contract and its own helpers, never
# another engine (so that each one can be added or removed alone).
LAYERS = {
    "leaf": ("scopert.errors", "scopert.card", "scopert.checksum", "scopert.progress", "scopert.runtime.onnx_file",
             "scopert.runtime.cpu", "scopert.runtime.compare", "scopert.runtime.tiling", "scopert.runtime.layout",
             "scopert.runtime.normalize", "scopert.runtime.stitch", "scopert.runtime.tile_cost",
             "scopert.runtime.pipeline", "scopert.runtime.timing", "scopert.runtime.io"),
    "planning": ("scopert.runtime.planning",),
    "engines": ("scopert.runtime.backends",),
    "selection": ("scopert.runtime.selection",),
    "core": ("scopert.runtime.model", "scopert.runtime.loader", "scopert.runtime.apply", "scopert.runtime.stream",
             "scopert.runtime="),  # '=': the package itself (its __init__), not everything under it
    "tools": ("scopert.runtime.tools",),
}
RANK = {name: i for i, name in enumerate(LAYERS)}
ENGINE_SHARED = ("scopert.runtime.backends", "scopert.runtime.backends.base", "scopert.runtime.backends.engine_key",
                 "scopert.runtime.backends.cuda_adapter")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its body), resolved to the longest known name."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def layer(module: str) -> str | None:
    best, best_len = None, -1
    for name, prefixes in LAYERS.items():
        for prefix in prefixes:
            exact = prefix.endswith("=")
            prefix = prefix.rstrip("=")
            hit = module == prefix or not exact and module.startswith(prefix + ".")
            if hit and len(prefix) > best_len:
                best, best_len = name, len(prefix)
    return best


def test_no_import_circle_in_the_package():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_runtime_layers_import_only_downwards():
    graph = import_graph()
    upward = []
    for src, targets in graph.items():
        if not src.startswith("scopert.runtime"):
            continue
        src_layer = layer(src)
        assert src_layer is not None, f"{src} is in no runtime layer; add it to LAYERS in {Path(__file__).name}"
        for dst in targets:
            dst_layer = layer(dst)
            if dst_layer is None:
                upward.append(f"{src} -> {dst} (outside the runtime's layers)")
            elif RANK[dst_layer] > RANK[src_layer]:
                upward.append(f"{src} ({src_layer}) -> {dst} ({dst_layer})")
            elif src_layer == dst_layer == "engines" and dst not in ENGINE_SHARED \
                    and dst.rpartition(".")[2] != src.rpartition(".")[2]:
                upward.append(f"{src} -> {dst} (one engine importing another)")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_the_checker_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


# Beside the runtime: the microscope adapter and the napari plugin build on it; neither reaches into the CLI or the
# training/export stages (an acquisition PC has numpy, a backend, pymmcore-plus and napari, not torch or onnx).
BESIDE = {
    "scopert.acquisition": ("scopert.commands", "scopert.cli", "scopert.napari_plugin", "scopert.training",
                            "scopert.export", "scopert.scaleout"),
    "scopert.napari_plugin": ("scopert.commands", "scopert.cli", "scopert.training", "scopert.export",
                              "scopert.scaleout"),
}


def test_the_acquisition_adapter_and_the_napari_plugin_import_only_what_a_microscope_pc_has():
    graph = import_graph()
    wrong = [f"{src} -> {dst}" for src, targets in graph.items() for package, banned in BESIDE.items()
             if src == package or src.startswith(package + ".")
             for dst in targets if any(dst == b or dst.startswith(b + ".") for b in banned)]
    runtime_up = [f"{src} -> {dst}" for src, targets in graph.items() if src.startswith("scopert.runtime")
                  for dst in targets if dst.startswith(("scopert.acquisition", "scopert.napari_plugin"))]
    assert not wrong and not runtime_up, "\n".join(wrong + runtime_up)
