"""Progress bars that suit where the output goes: tqdm's bar on a terminal; in a log file or CI,
where a bar would be hundreds of carriage returns, a plain line every :data:`LINE_INTERVAL_S`
seconds and one at the end."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

LINE_INTERVAL_S = 30.0  # a progress line at most this often when the output is not a terminal


class LineWriter:
    """A stream for tqdm that turns each redraw (``\\r`` + the bar) into a line of its own and
    drops the blank redraws, so a log file gets lines, not carriage returns."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        for part in text.replace("\r", "\n").split("\n"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, *, stream: TextIO | None = None, **options) -> tqdm:
    """``tqdm(iterable, **options)`` drawn as a bar on a terminal, else as a line every
    :data:`LINE_INTERVAL_S` seconds (and at the end) in plain ASCII."""
    stream = stream or sys.stderr
    if stream.isatty():
        return tqdm(iterable, file=stream, dynamic_ncols=True, **options)
    options.pop("leave", None)  # a finished bar stays as its last line
    return tqdm(
        iterable, file=LineWriter(stream), mininterval=LINE_INTERVAL_S, ascii=True, leave=True, **options
    )
