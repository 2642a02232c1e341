"""Imports flow one way (README "Layout"): every import between engine/'s subpackages, export/ and kernels/,
at module level or inside a function, points down the layers below, and no module imports itself back
through any chain."""
import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "export", "kernels")

# Lowest first. A module may import from its own group and from groups in lower layers only.
LAYERS = [
    {"engine.errors"},  # every error raised on purpose: any module, kernels/ included, may raise them
    {"kernels", "engine.limits", "engine.stages", "engine.provenance", "engine.distributed",
     "engine.progress", "engine.deprecation", "engine.cli_logging"},
    {"engine.storage"},  # configs, atomic writes, hashing, cache paths, checkpoint files, training state
    {"engine.models"},
    {"engine.audio"},
    {"engine.bundle"},  # a checkpoint folder rebuilt into models
    {"engine.diffusion"},
    {"export"},  # build steps: ONNX export, parity, operator check, TensorRT engine build
    {"engine.runtimes"},  # onnxruntime and TensorRT behind the denoiser interface
    {"engine.backends"},
    {"engine.api", "engine.training"},
    {"engine.evaluation"},
    {"engine.batching", "engine.metrics"},
    {"engine.serve_page"},
    {"engine.serve"},
    {"engine.serve_replicas"},
    {"engine.cli_parser"},
    {"engine.cli"},
    {"engine"},  # the package itself (engine/__init__.py re-exports the API)
]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> project modules it imports (anywhere in its source), resolved like Python does."""
    edges = defaultdict(set)
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".")[: len(mod.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                # ``from pkg import submodule`` imports the submodule (its package is already loaded)
                targets = subs + ([base] if len(subs) < len(node.names) else [])
            for t in targets:
                while t and t not in mods:  # a name inside a module: the module
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    edges[mod].add(t)
    return edges


def group(mod: str) -> str:
    parts = mod.split(".")
    if parts[0] != "engine":
        return parts[0]
    return ".".join(parts[:2])


def layer(g: str) -> int:
    for i, members in enumerate(LAYERS):
        if g in members:
            return i
    raise AssertionError(f"{g} is in no layer: add it to LAYERS (and to README's layout)")


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, bs in edges.items() for b in bs
                  if group(a) != group(b) and layer(group(b)) >= layer(group(a)))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_points_up_the_layers():
    assert not upward_imports(imports(modules()))


def test_no_module_imports_itself_back():
    assert not cycles(imports(modules()))


def test_the_checks_catch_an_upward_arrow_and_a_cycle():
    edges = imports(modules())
    edges["engine.storage.config"].add("engine.api")  # storage reaching up to the API
    assert upward_imports(edges) == ["engine.storage.config -> engine.api"]
    assert any("engine.storage.config" in c and "engine.api" in c for c in cycles(edges))


def test_every_group_has_a_layer():
    for mod in modules():
        layer(group(mod))
