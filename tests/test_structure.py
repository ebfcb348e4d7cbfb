"""The shape of the code base: no import cycles inside ``src/detlab``, one training loop (in
``engine/``), one feature-extractor class, a ``MODELS`` entry for every method."""

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"


def module_imports() -> dict[str, set[str]]:
    """``module -> modules of detlab it imports`` (imports inside functions included: a cycle
    through a lazy import is still a cycle in the design). Edges to a package's ``__init__`` are
    left out: importing ``detlab.models.backbones`` runs ``detlab/models/__init__.py`` too, but a
    package's namespace is not a module's dependency."""
    files = {".".join(path.relative_to(SOURCE).with_suffix("").parts).removesuffix(".__init__"): path
             for path in SOURCE.rglob("*.py")}  # fmt: skip
    graph = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target in files and target != name and files[target].name != "__init__.py":
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for neighbour in graph[node]:
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_detlab():
    graph = module_imports()
    assert "detlab.models.faster_rcnn" in graph and "detlab.models.backbones" in graph["detlab.models.faster_rcnn"]
    assert cycles(graph) == []


def test_only_the_engine_runs_backward():
    loops = [str(path.relative_to(SOURCE)) for path in (SOURCE / "detlab").rglob("*.py")
             if ".backward(" in path.read_text() and "engine" not in path.parts]  # fmt: skip
    assert loops == []


def test_one_feature_extractor_class():
    definitions = [str(path.relative_to(SOURCE)) for path in (SOURCE / "detlab").rglob("*.py")
                   if "class FeatureExtractor" in path.read_text()]  # fmt: skip
    assert definitions == ["detlab/models/backbones.py"]
