"""The package's imports run one way (STYLE.md): each module imports only from its own layer or the
layers before it, without cycles, never from inside a function (the usual way to hide a cycle),
and scripts/ and benchmarks/ use the library, never the command line. Read with `ast` from the
source tree, so the test needs no import of its own."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "edlm"

LAYERS = [
    {"ops", "reference", "schedule", "config", "tokenizer", "oracle", "_C"},
    {"models", "prepare", "corpora", "data"},
    {"checkpoint"},
    {"sampling", "likelihood", "bound", "judge", "train"},
    {"sweep"},
    {"cli"},
]
# Third-party packages that may be imported inside a function, and why: each is needed by one
# path only and is either optional (the error names the package to install) or slow to import.
LAZY = {
    "transformers": "Hugging Face tokenizers, causal LMs and the judge only",
    "datasets": "reading a Hugging Face dataset folder only",
    "matplotlib": "the sweep's PNG only (optional)",
    "tiktoken": "the GPT-2 tokenizer only",
}


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"edlm.{module} is in no layer: add it to LAYERS (and to STYLE's order)")


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def first_party_imports(name: str, path: Path):
    """(imported edlm module, line, inside a function) for every first-party import in a file."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    functions = [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    nested = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        inside = id(node) in nested
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
                names = (
                    [target]
                    if node.module
                    else [f"{target}.{a.name}".strip(".") for a in node.names]
                )
                for t in names:
                    yield t, node.lineno, inside
            elif node.module and node.module.split(".")[0] == "edlm":
                yield node.module.removeprefix("edlm").strip(".") or "", node.lineno, inside
            elif inside and node.module.split(".")[0] not in LAZY:
                yield "third-party:" + node.module, node.lineno, inside
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "edlm":
                    yield a.name.removeprefix("edlm").strip("."), node.lineno, inside
                elif inside and a.name.split(".")[0] not in LAZY:
                    yield "third-party:" + a.name, node.lineno, inside


def test_imports_run_one_way_without_cycles():
    problems, graph = [], {}
    for name, path in modules():
        if not name:  # the package's __init__: the public face, may import any library layer
            for target, line, inside in first_party_imports("", path):
                if target and target.split(".")[0] == "cli":
                    problems.append(f"edlm/__init__.py:{line} imports the command line")
            continue
        here = layer_of(name)
        for target, line, inside in first_party_imports(name, path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if target.startswith("third-party:"):
                problems.append(f"{where}: {target[12:]} imported inside a function (not in LAZY)")
                continue
            if inside:
                problems.append(f"{where}: first-party import of edlm.{target} inside a function")
            if not target:
                problems.append(f"{where}: imports the edlm package itself")
                continue
            if layer_of(target) > here:
                problems.append(
                    f"{where}: edlm.{name} (layer {here}) imports edlm.{target} (layer {layer_of(target)})"
                )
            graph.setdefault(name.split(".")[0], set()).add(target.split(".")[0])
    assert not problems, "\n".join(problems)
    # No cycles between modules of one layer either (depth-first search).
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for t in graph.get(m, ()):
            if t == m:
                continue
            if state.get(t) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, t]))
            if t not in state:
                visit(t, stack + [m])
        state[m] = "done"

    for m in list(graph):
        if m not in state:
            visit(m, [])


def test_scripts_and_benchmarks_never_use_the_command_line():
    for folder in ("scripts", "benchmarks"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                assert not any(n.startswith("edlm.cli") for n in names), (
                    f"{path}:{node.lineno} imports edlm.cli"
                )


def test_the_layers_name_every_module():
    for name, _ in modules():
        if name:
            layer_of(name)
