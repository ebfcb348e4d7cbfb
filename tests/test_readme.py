"""The README is the user guide: its Python blocks run as written, its commands parse."""

import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def detlab_commands() -> list[list[str]]:
    """Every ``detlab ...`` command of the bash blocks (continuation lines joined, comments and a
    leading torchrun/environment part dropped), as argument lists after ``detlab``."""
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "detlab" in words:
                commands.append(words[words.index("detlab") + 1 :])
            elif words and words[0].endswith("/detlab"):
                commands.append(words[1:])
    return commands


def test_every_command_in_the_readme_parses(capsys):
    from detlab.cli import build_parser
    from detlab.cli.train import build_train_parser

    commands = detlab_commands()
    assert len(commands) >= 15 and {c[0] for c in commands} >= {"train", "predict", "eval", "data", "proposals"}
    for argv in commands:
        if argv[0] == "train":
            model = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
            if "--help" in argv:
                continue
            try:
                build_train_parser(model).parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"README command does not parse: detlab {' '.join(argv)}\n{capsys.readouterr().err}")
        else:
            try:
                build_parser().parse_args(argv)
            except SystemExit:
                pytest.fail(f"README command does not parse: detlab {' '.join(argv)}\n{capsys.readouterr().err}")


def test_the_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    """In order, each in a fresh namespace, in an empty folder (as a new user's working folder);
    their training runs are a few dozen steps."""
    python_blocks = blocks("python")
    assert len(python_blocks) >= 4
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(2)
    for number, code in enumerate(python_blocks, start=1):
        exec(compile(code, f"README.md python block {number}", "exec"), {"__name__": "__main__"})
    assert (tmp_path / "runs" / "readme-shapes" / "last.pt").is_file()


def test_make_targets_the_readme_names_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"make (\w+)", README)):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
