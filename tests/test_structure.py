"""The shape of the code base: layers that point one way (function-level imports and package
``__init__`` edges counted), no import cycles, one training loop (in ``engine/``), methods known to
the engine, export, serve and compare only through the contract, short functions."""

import ast
import re
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SOURCE / "detlab"

# Lowest first; a module may import modules of its own layer or of lower ones. The root package
# ``detlab`` is the API's face (it imports detlab.api), so it sits with the API.
LAYERS = [
    ("base", ("detlab.boxes", "detlab.box_arrays", "detlab.config", "detlab.errors", "detlab.image_files",
              "detlab.machine", "detlab.plotting", "detlab.progress", "detlab.tiles", "detlab.version",
              "detlab.video_files")),
    ("data", ("detlab.data",)),
    ("eval", ("detlab.eval",)),
    ("proposals", ("detlab.proposals",)),
    ("models", ("detlab.models",)),
    ("engine", ("detlab.engine",)),
    ("applications", ("detlab.export", "detlab.serve", "detlab.comparison", "detlab.demo", "detlab.view_plots")),
    ("api", ("detlab.api", "detlab")),
    ("cli", ("detlab.cli", "detlab.__main__")),
]  # fmt: skip


def module_files() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(SOURCE).with_suffix("").parts).removesuffix(".__init__"): path
        for path in SOURCE.rglob("*.py")
    }


def imported_names(name: str, path: Path, files: dict[str, Path]) -> list[tuple[str, int]]:
    """``(module or package imported, line)`` for every import in the file: top-level, inside
    functions and under ``if TYPE_CHECKING`` alike. ``from detlab.eval import coco`` imports the
    module ``detlab.eval.coco``; ``from detlab.eval import evaluate_coco`` (a name a package's
    ``__init__`` defines or re-exports) imports the package ``detlab.eval`` itself."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in files]
            package_names = len(submodules) < len(node.names)
            found += [(module, node.lineno) for module in submodules] + (
                [(base, node.lineno)] if package_names else []
            )
    return found


def module_imports() -> dict[str, set[str]]:
    """``module -> detlab modules and packages it imports`` (every kind of import, see
    :func:`imported_names`; a package's ``__init__`` is a node like any module)."""
    files = module_files()
    graph = {name: set() for name in files}
    for name, path in files.items():
        for target, _ in imported_names(name, path, files):
            if target in files and target != name:
                graph[name].add(target)
    return graph


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the longest prefix naming ``module``'s layer."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[1]
            ):
                best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_structure.py"
    return best[0]


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


def test_the_cycle_finder_and_the_layers_find_what_they_look_for():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert layer_of("detlab.models.yolo") > layer_of("detlab.data.loading") > layer_of("detlab.boxes")
    assert layer_of("detlab") == layer_of("detlab.api") < layer_of("detlab.cli.train")
    # function-level and package imports are edges too
    graph = module_imports()
    assert "detlab.models.contract" in graph["detlab.models.faster_rcnn"]
    assert "detlab.models" in graph["detlab.engine.run"]  # `from detlab import models`: the package
    assert "detlab.proposals" in graph["detlab.models.external_proposals"]  # names the package re-exports


def test_no_import_cycles_inside_detlab():
    assert cycles(module_imports()) == []


def test_every_import_points_down_the_layers():
    files = module_files()
    upward = []
    for name, path in files.items():
        for target, line in imported_names(name, path, files):
            if target in files and target != name and layer_of(target) > layer_of(name):
                upward.append(f"{path.relative_to(SOURCE)}:{line} imports {target}")
    assert upward == []


def test_models_do_not_import_the_engine_and_the_engine_no_concrete_method():
    from detlab.models import MODELS

    graph = module_imports()
    concrete = {f"detlab.models.{name}" for name in MODELS}
    for module, targets in graph.items():
        if module.startswith("detlab.models"):
            assert not any(target.startswith("detlab.engine") for target in targets), module
        if module.startswith(("detlab.engine", "detlab.export", "detlab.serve", "detlab.comparison")):
            assert not targets & concrete, (module, targets & concrete)


def test_export_serve_compare_and_the_engine_name_no_method():
    """They know methods through :mod:`detlab.models.contract` only: no method's name in their code
    or docstrings. ``keypoints`` is left out of the search: it is also the detector contract's output
    field (DeepPose's joints) and an evaluation kind, which they must name."""
    from detlab.models import MODELS

    names = sorted(set(MODELS) - {"keypoints"})
    pattern = re.compile(r"\b(" + "|".join(names) + r")\b")
    places = [
        *(PACKAGE / "export").rglob("*.py"),
        *(PACKAGE / "serve").rglob("*.py"),
        *(PACKAGE / "engine").rglob("*.py"),
        PACKAGE / "comparison.py",
    ]
    found = [
        f"{path.relative_to(SOURCE)}:{number}: {line.strip()}"
        for path in places
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_the_engine_probes_no_model_with_getattr():
    found = [
        f"{path.relative_to(SOURCE)}:{number}"
        for path in (PACKAGE / "engine").rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\b(getattr|hasattr)\(", line)
    ]
    assert found == []


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            count = len(arguments.posonlyargs) + len(arguments.args) + len(arguments.kwonlyargs)
            count += bool(arguments.vararg) + bool(arguments.kwarg)
            count -= bool(arguments.args) and arguments.args[0].arg in ("self", "cls")
            yield node.name, node.end_lineno - node.lineno + 1, count, node.lineno


def test_functions_are_short_and_the_training_loop_reads_top_to_bottom():
    lengths = sorted(
        (
            (length, f"{path.relative_to(SOURCE)}:{line} {name}")
            for path in PACKAGE.rglob("*.py")
            for name, length, _, line in functions(path)
        ),
        reverse=True,
    )
    print("the longest functions:", *lengths[:10], sep="\n  ")
    assert lengths[0][0] <= 80, lengths[:5]
    train = PACKAGE / "engine" / "train.py"
    assert len(train.read_text().splitlines()) <= 300
    assert {name: length for name, length, _, _ in functions(train)}["fit"] <= 60


@pytest.mark.parametrize("folder", ["engine"])
def test_no_engine_function_takes_more_than_eight_parameters(folder):
    many = [
        f"{path.relative_to(SOURCE)}:{line} {name} ({count})"
        for path in (PACKAGE / folder).rglob("*.py")
        for name, _, count, line in functions(path)
        if count > 8
    ]
    assert many == []


def test_only_the_engine_runs_backward():
    loops = [
        str(path.relative_to(SOURCE))
        for path in PACKAGE.rglob("*.py")
        if ".backward(" in path.read_text() and "engine" not in path.parts
    ]
    assert loops == []


def test_one_feature_extractor_class_and_one_home_for_image_suffixes():
    definitions = [
        str(path.relative_to(SOURCE))
        for path in PACKAGE.rglob("*.py")
        if "class FeatureExtractor" in path.read_text()
    ]
    assert definitions == ["detlab/models/backbones.py"]
    suffixes = [
        str(path.relative_to(SOURCE))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"^IMAGE_SUFFIXES\w* = ", path.read_text(), re.M)
    ]
    assert suffixes == ["detlab/image_files.py"]


def test_every_method_is_registered_under_its_own_name():
    from detlab.models import MODELS
    from detlab.models.contract import Method

    assert all(isinstance(method, Method) and method.name == name for name, method in MODELS.items())
