"""Write ``benchmarks/results/README.md``, the index of the results files, from their JSON.

The top of ``benchmarks/results/`` holds the current headline result of each benchmark (the files
the README and the docs quote); ``archive/`` holds earlier runs, variants and secondary
measurements. For each benchmark (the script or ``detlab`` command each JSON file records as its
``command``) the index lists its headline files with their command, date and machine, then its
archived files. Being generated, it cannot drift: ``tests/test_results_index.py`` checks that
running this script again gives the committed file.

    python benchmarks/make_results_index.py            # rewrite benchmarks/results/README.md
    python benchmarks/make_results_index.py --check    # exit 1 if it is not current

It reads JSON and Markdown only (no torch), so it runs in any Python 3.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
INDEX_NAME = "README.md"
ARCHIVE = "archive"
FIGURES = "figures"  # the headline results' pictures, out of the way of the top-level list
# A benchmark's JSON records its run as {"command", "date", "machine"}; older files name the date
# ``date_utc`` or ``started_utc``, and files of several runs keep one such record a part
# (``localization.json``: headline, grid, overfeat; ``demo_variants.json``: one a variant).
DATE_KEYS = ("date", "date_utc", "started_utc")


@dataclass
class Run:
    """One recorded run of a results file: its part name ("" for a file of one run)."""

    part: str
    command: str
    date: str
    machine: str


@dataclass
class ResultsFile:
    """``NAME.json`` with its ``NAME.md`` and figures, at the top (``folder`` "") or in archive/."""

    folder: str
    stem: str
    title: str
    runs: list[Run]
    companions: list[str] = field(default_factory=list)

    @property
    def benchmark(self) -> str:
        commands = [run.command for run in self.runs if run.command]
        return benchmark_of(commands[0]) if commands else "(command not recorded)"

    @property
    def newest(self) -> Run:
        return max(self.runs, key=lambda run: run.date)

    def link(self, name: str) -> str:
        path = f"{self.folder}/{name}" if self.folder else name
        return f"[{name}]({path})"

    def files(self) -> list[str]:
        names = [f"{self.stem}.json"]
        if (RESULTS / self.folder / f"{self.stem}.md").is_file():
            names.append(f"{self.stem}.md")
        return names + self.companions


def benchmark_of(command: str) -> str:
    """The script or ``detlab`` sub-command a command line runs."""
    script = re.search(r"(benchmarks/\w+\.py)", command)
    if script:
        return script.group(1)
    detlab = re.search(r"detlab (\w+)", command)
    if detlab:
        return f"detlab {detlab.group(1)}"
    other = re.search(r"([\w./-]+\.py)", command)
    return other.group(1).rsplit("/", 1)[-1] if other else command.split()[0]


def arguments_of(command: str) -> str:
    """What follows the script or sub-command (what tells runs of one benchmark apart)."""
    match = re.search(r"(benchmarks/\w+\.py|detlab \w+)(.*)", command)
    return match.group(2).strip() if match else command


def short_date(text: str) -> str:
    """``2026-12-02T06:18:23Z``, ``...+00:00`` and ``2026-12-02 05:23 UTC`` as ``2026-12-02 06:18``."""
    match = re.match(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2})", text)
    return f"{match.group(1)} {match.group(2)}" if match else text


def describe_machine(machine) -> str:
    """A results file's machine record in words, as ``benchmarks/common.py`` writes it."""
    if not isinstance(machine, dict):
        return str(machine) if machine else "not recorded"
    words = [machine.get("platform", "?"), f"{machine.get('cpu_count', '?')} CPUs"]
    if "cpu_capability" in machine:
        words.append(machine["cpu_capability"])
        words.append(f"{'native' if machine.get('native_bf16') else 'no native'} bfloat16")
    if "torch" in machine:
        words.append(f"torch {machine['torch']}")
    return ", ".join(words)


def runs_of(report: dict, markdown: str) -> list[Run]:
    """The runs a JSON report records: the report itself, or each part holding a ``command``.
    A report without any takes the command and date its Markdown names (or "not recorded")."""

    def run(part: str, record: dict) -> Run:
        date = next((record[key] for key in DATE_KEYS if record.get(key)), "")
        command = record.get("command", "")
        if "`" in command:  # "Command: `...` (started ...)": the command is the quoted part
            command = max(command.split("`")[1::2], key=len)
        return Run(part, command, short_date(date), describe_machine(record.get("machine")))

    if "command" in report:
        return [run("", report)]
    parts = [
        (name, value) for name, value in report.items() if isinstance(value, dict) and "command" in value
    ]
    if not parts:  # one level further: {"variants": {"joint": {...}, ...}}
        parts = [
            (name, value)
            for group in report.values()
            if isinstance(group, dict)
            for name, value in group.items()
            if isinstance(value, dict) and "command" in value
        ]
    if parts:
        return [run(name, value) for name, value in parts]
    command = re.search(r"`([^`]*(?:benchmarks/\w+\.py|detlab \w+)[^`]*)`", markdown)
    date = re.search(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", markdown)
    return [
        Run(
            "",
            command.group(1) if command else "",
            short_date(date.group(0)) if date else "",
            describe_machine(report.get("machine")),
        )
    ]


def read_folder(folder: str) -> tuple[list[ResultsFile], list[str]]:
    """The results files of ``folder`` ("" or "archive"), and the files that belong to none."""
    directory = RESULTS / folder
    found = []
    for path in sorted(directory.glob("*.json")):
        markdown_path = path.with_suffix(".md")
        markdown = markdown_path.read_text() if markdown_path.is_file() else ""
        title = markdown.splitlines()[0].lstrip("# ").strip() if markdown else ""
        found.append(ResultsFile(folder, path.stem, title, runs_of(json.loads(path.read_text()), markdown)))
    stems = sorted((entry.stem for entry in found), key=len, reverse=True)
    by_stem = {entry.stem: entry for entry in found}
    loose = []
    figures = sorted((directory / FIGURES).iterdir()) if not folder and (directory / FIGURES).is_dir() else []
    for path in sorted(directory.iterdir()) + figures:
        name = f"{FIGURES}/{path.name}" if path.parent.name == FIGURES and not folder else path.name
        if path.is_dir() or path.suffix in (".json", ".md"):
            if path.suffix == ".md" and path.name != INDEX_NAME and not path.with_suffix(".json").is_file():
                loose.append(name)
            continue
        owner = next((stem for stem in stems if path.name.startswith(f"{stem}_") or path.stem == stem), None)
        if owner:  # a figure or log of that run: compare_bccd_227_speed_vs_map.png
            by_stem[owner].companions.append(name)
        else:
            loose.append(name)
    return found, loose


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The index's Markdown."""
    top, top_loose = read_folder("")
    archived, archive_loose = read_folder(ARCHIVE)
    top_count = len([path for path in RESULTS.iterdir() if path.is_file() and path.name != INDEX_NAME]) + 1
    lines = [
        "# Benchmark results",
        "",
        "Generated by `benchmarks/make_results_index.py` from the JSON files; do not edit it by hand. After",
        "adding, rerunning or archiving a benchmark, run `python benchmarks/make_results_index.py`",
        "(`tests/test_results_index.py` fails while this file is not current).",
        "",
        "Each script in `benchmarks/` writes `NAME.json` (the numbers, and the command, date and machine of",
        "the run) and `NAME.md` (the same as tables) here, some with figures. This folder keeps the current",
        "headline result of each benchmark, the files the README and the docs quote "
        f"({top_count} files with this index, at most 40);",
        f"[`{ARCHIVE}/`]({ARCHIVE}/) keeps {len(archived)} earlier runs, variants and secondary measurements",
        f"({len([path for path in (RESULTS / ARCHIVE).iterdir() if path.is_file()])} files),",
        "listed below under the benchmark that made them. Dates are UTC. The machine matters: the same",
        "command gives several times the training steps on a CPU with native bfloat16 as on one with AVX2",
        "only, and the results files name the CPU's capability since 2026-12-03.",
        "",
        "## Headline results",
        "",
        "| results | what | benchmark | date |",
        "|---|---|---|---|",
    ]
    for entry in sorted(top, key=lambda entry: (entry.benchmark, entry.stem)):
        lines.append(
            f"| {entry.link(entry.stem + '.md')} | {cell(entry.title)} | `{entry.benchmark}` | "
            f"{entry.newest.date} |"
        )
    benchmarks = sorted({entry.benchmark for entry in top + archived})
    for benchmark in benchmarks:
        headline = [entry for entry in top if entry.benchmark == benchmark]
        earlier = sorted(
            (entry for entry in archived if entry.benchmark == benchmark),
            key=lambda entry: (entry.newest.date, entry.stem),
        )
        lines += [""] if lines[-1] else []
        lines += [f"## `{benchmark}`", ""]
        for entry in headline:
            lines.append(
                f"**{entry.link(entry.stem + '.md')}**: {cell(entry.title)}. "
                f"Files: {', '.join(entry.link(name) for name in entry.files())}."
            )
            lines.append("")
            for run in entry.runs:
                label = f"{run.part}: " if run.part else ""
                lines.append(f"- {label}`{cell(run.command) or 'command not recorded'}`  ")
                lines.append(f"  {run.date or 'date not recorded'}; {run.machine}")
            lines.append("")
        if not headline:
            lines += [
                "No headline file at the top: a secondary measurement, kept in the archive; its newest row "
                "is its current result.",
                "",
            ]
        if earlier:
            lines += [
                f"In [`{ARCHIVE}/`]({ARCHIVE}/) ({len(earlier)}, oldest first):",
                "",
                "| results | date | arguments (of the newest run, when several) | machine |",
                "|---|---|---|---|",
            ]
            for entry in earlier:
                run = entry.newest
                many = f" ({len(entry.runs)} runs)" if len(entry.runs) > 1 else ""
                links = ", ".join(entry.link(name) for name in entry.files()[1:])
                arguments = f"`{cell(arguments_of(run.command))}`" if arguments_of(run.command) else "(none)"
                lines.append(
                    f"| {entry.link(entry.stem + '.json')}{', ' + links if links else ''} | {run.date}{many} "
                    f"| {arguments} | {cell(run.machine)} |"
                )
    if top_loose or archive_loose:
        lines += [""] if lines[-1] else []
        lines += ["## Other files", ""]
        lines += [f"- [{name}]({name})" for name in top_loose]
        lines += [f"- [{ARCHIVE}/{name}]({ARCHIVE}/{name})" for name in archive_loose]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the index is not current; write nothing"
    )
    args = parser.parse_args()
    index = RESULTS / INDEX_NAME
    text = render()
    if args.check:
        current = index.is_file() and index.read_text() == text
        print(
            f"{index}: {'current' if current else 'out of date: run python benchmarks/make_results_index.py'}"
        )
        return 0 if current else 1
    index.write_text(text)
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
