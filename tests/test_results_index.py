"""``benchmarks/results/README.md`` is generated from the results files and cannot drift: running
``benchmarks/make_results_index.py`` again gives the committed file, it links every results file
and nothing that is missing, and the top of the folder keeps to the headline files."""

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REGENERATE = "run `python benchmarks/make_results_index.py` and commit benchmarks/results/README.md"


def index_script():
    spec = importlib.util.spec_from_file_location(
        "make_results_index", ROOT / "benchmarks" / "make_results_index.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def index_links() -> set[str]:
    return set(re.findall(r"\]\(([^)\s]+)\)", (RESULTS / "README.md").read_text()))


def test_the_committed_index_is_what_the_script_generates():
    assert (RESULTS / "README.md").read_text() == index_script().render(), (
        f"the index is out of date: {REGENERATE}"
    )


def test_the_index_links_every_results_file_and_only_files_that_exist():
    links = index_links()
    for link in links:
        assert (RESULTS / link).exists(), f"benchmarks/results/README.md links {link}, which does not exist"
    files = {path.relative_to(RESULTS).as_posix() for path in RESULTS.rglob("*") if path.is_file()}
    unlisted = sorted(files - links - {"README.md"})
    assert not unlisted, f"results files the index does not list: {unlisted}; {REGENERATE}"


def test_the_top_of_the_results_folder_keeps_to_the_headline_files():
    top = [path.name for path in RESULTS.iterdir() if path.is_file()]
    assert len(top) <= 40, (
        f"{len(top)} files at the top of benchmarks/results/ (at most 40): git mv the superseded ones into "
        f"benchmarks/results/archive/, update the links to them in README.md and docs/, then {REGENERATE}"
    )


def test_a_benchmark_is_named_by_its_script_or_detlab_command():
    script = index_script()
    assert script.benchmark_of(
        "PYTHONPATH=src flock /tmp/l .venv/bin/python benchmarks/bench_yolo.py --data bccd"
    ) == ("benchmarks/bench_yolo.py")
    assert script.benchmark_of("flock /tmp/l .venv/bin/detlab compare --data synthetic") == "detlab compare"
    assert (
        script.arguments_of("python benchmarks/bench_yolo.py --data bccd --budget-s 300")
        == "--data bccd --budget-s 300"
    )
    assert (
        script.short_date("2026-12-02T06:18:23+00:00")
        == script.short_date("2026-12-02 06:18 UTC")
        == "2026-12-02 06:18"
    )
    parts = script.runs_of(
        {
            "a": {"command": "python benchmarks/x.py --part a", "date": "2026-12-01T00:00:00Z"},
            "b": {"command": "python benchmarks/x.py --part b", "date": "2026-12-02T00:00:00Z"},
        },
        "",
    )
    assert [(run.part, run.date) for run in parts] == [("a", "2026-12-01 00:00"), ("b", "2026-12-02 00:00")]
