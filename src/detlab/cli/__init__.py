"""``detlab <command>``: thin argument parsing over the library, the top layer of detlab.

Each command (or group of commands) has its module here, ``detlab.cli.<name>``, with
``add_commands(subparsers)``; this file only lists them. Errors meant for users (bad input,
missing files) are printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from detlab.cli import eval as eval_command
from detlab.errors import SaveError, is_disk_full


def command_groups() -> list:
    """Each entry adds its sub-commands to the parser; one explicit list, no registry. They are
    imported here rather than at the top so that scoring files (``detlab eval --pred``) starts
    without loading torch (see :func:`main`)."""
    from detlab.cli import compare, data, demo, export, proposals, serve, train

    return [
        compare.add_commands,
        data.add_commands,
        demo.add_commands,
        train.add_commands,
        eval_command.add_commands,
        export.add_commands,
        proposals.add_commands,
        serve.add_commands,
    ]


def build_parser(groups: list | None = None) -> argparse.ArgumentParser:
    """The parser of every command (``groups``: only these commands)."""
    parser = argparse.ArgumentParser(prog="detlab", description="Object localization and detection toolkit.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_commands in groups if groups is not None else command_groups():
        add_commands(subparsers)
    return parser


def files_only_eval(argv: list[str]) -> bool:
    """``detlab eval`` of a results file: nothing but the evaluator is needed (no torch)."""
    return argv[:1] == ["eval"] and not any(word.startswith("--checkpoint") for word in argv)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser([eval_command.add_commands] if files_only_eval(argv) else None)
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, SaveError) as error:
        print(f"detlab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if not is_disk_full(error):  # a full disk is the machine's state, not a fault of detlab
            raise
        print(f"detlab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"detlab {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
