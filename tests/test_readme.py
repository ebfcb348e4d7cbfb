"""The README is the user guide, and stays one: at most 400 lines, nothing outside the clone
(``../shared``), every command parses, the commands and Python blocks run as written in a new
user's empty folder (training budgets cut to two steps), every Make target it names exists, and
every relative link in it and in docs/ resolves."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAX_LINES = 400
# A bash block whose first line is this comment is for a user with internet (a download): its
# commands are parsed, never run.
WITH_INTERNET = "# with internet"
# Commands parsed here but not run, and why: `serve` runs until it is stopped (tests/serve/ runs
# it), `compare` trains several methods and times them over a test split (tests/test_compare.py
# runs a small one).
PARSE_ONLY = {"serve", "compare"}
# What the run replaces to stay short: a training budget becomes two steps.
SHORT_BUDGETS = [(r"--time-budget \d+", "--max-steps 2"), (r"time_budget=\d+", "max_steps=2")]


def fenced_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block, in the README's order."""
    return re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)


def blocks(language: str) -> list[str]:
    return [code for block_language, code in fenced_blocks() if block_language == language]


def shorten(code: str) -> str:
    for pattern, replacement in SHORT_BUDGETS:
        code = re.sub(pattern, replacement, code)
    return code


def detlab_argv(line: str) -> list[str] | None:
    """The arguments after ``detlab`` in one command line (comments dropped), or None."""
    words = shlex.split(line, comments=True)
    if "detlab" in words:
        return words[words.index("detlab") + 1 :]
    if words and words[0].endswith("/detlab"):
        return words[1:]
    return None


def detlab_commands(block: str) -> list[list[str]]:
    """Every ``detlab ...`` command of a bash block (continuation lines joined)."""
    return [
        argv for line in block.replace("\\\n", " ").splitlines() if (argv := detlab_argv(line)) is not None
    ]


def test_the_readme_is_a_guide_of_at_most_400_lines_that_needs_nothing_beside_the_clone():
    lines = README.count("\n")
    assert lines <= MAX_LINES, (
        f"README.md has {lines} lines (at most {MAX_LINES}): move details, tuning histories and dated runs to docs/"
    )
    assert "../shared" not in README, "README examples must run on a fresh clone: use the synthetic sets"


def test_every_bash_block_is_exercised():
    """Each bash block holds a command this file parses (or a Make target checked below); a block
    that needs the internet says so on its first line."""
    for block in blocks("bash"):
        assert detlab_commands(block) or re.search(r"^make \w+", block, flags=re.M), block
        if "git clone" in block or "curl -O" in block or "wget" in block:
            assert block.startswith(WITH_INTERNET), f"a download outside a '{WITH_INTERNET}' block:\n{block}"


def test_every_command_in_the_readme_parses(capsys):
    from detlab.cli import build_parser
    from detlab.cli.train import build_train_parser

    commands = [argv for block in blocks("bash") for argv in detlab_commands(block)]
    assert {argv[0] for argv in commands} >= {"data", "train", "eval", "predict", "export", "serve"}
    for argv in commands:
        try:
            if argv[0] == "train":
                if "--help" in argv:
                    continue
                model = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
                build_train_parser(model).parse_args(argv[1:])
            else:
                build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: detlab {' '.join(argv)}\n{capsys.readouterr().err}")


def test_the_readme_runs_as_written(tmp_path, monkeypatch):
    """Its blocks in order, in an empty folder (a new user's): every detlab command (but the
    internet's and ``PARSE_ONLY``) and every Python block, each in a fresh namespace. The
    commands run in this process (``detlab.cli.main``), which saves starting Python each time."""
    from detlab.cli import main

    monkeypatch.chdir(tmp_path)
    ran = []
    for number, (language, code) in enumerate(fenced_blocks(), start=1):
        if language == "python":
            exec(compile(shorten(code), f"README.md block {number}", "exec"), {"__name__": "__main__"})
            ran.append("python")
        elif language == "bash" and not code.startswith(WITH_INTERNET):
            for argv in detlab_commands(shorten(code)):
                if argv[0] not in PARSE_ONLY:
                    assert main(argv) == 0, f"README command failed: detlab {' '.join(argv)}"
                    ran.append(argv[0])
    assert {"data", "train", "eval", "predict", "export", "python"} <= set(ran), ran
    assert (tmp_path / "runs" / "shapes.onnx").is_file()


def test_make_targets_the_readme_names_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"make (\w+)", README)):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings."""
    anchors = set()
    for heading in re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", markdown, flags=re.S), flags=re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_every_relative_link_in_the_readme_and_docs_resolves():
    """README.md, docs/ and the results' Markdown (whose figures moved with them into archive/)."""
    broken = []
    results = sorted((ROOT / "benchmarks" / "results").rglob("*.md"))
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *results]:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)
