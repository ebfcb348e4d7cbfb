"""Checked reads of the values annotation files hold, shared by the COCO, VOC and YOLO readers.

Every value a reader uses is checked for its type and range before use; every failure is a
:class:`BadInputError` naming the file and the field, so ``on_bad='skip'`` can skip the record
that holds it. Values a reader does not use (COCO's ``area`` or ``segmentation``, VOC's
``<truncated>``) are neither read nor checked.

Paths named inside a data set's files must stay inside the data set's folder unless the caller
allows otherwise (``data.allow_outside_root``). The test is on the path as written, with ``..``
folded and symbolic links not followed: a link placed inside the folder is its owner's choice (and
``detlab convert --link`` writes such links), a path written in a file is the file's.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from detlab.data.errors import BadInputError

MAX_SIDE = 1_000_000  # pixels a side; Pillow refuses to decode far smaller images (its bomb limit)
MAX_ID = 2**63 - 1  # ids are written back to COCO files and to int64 arrays
MAX_CLASSES = 100_000
OUTSIDE_KIND = "path outside the data set"  # the ProblemLog kind of an OutsideRootError
ALLOW_HINT = "set data.allow_outside_root=true (allow_outside_root=True in Python) to read it"


class OutsideRootError(BadInputError):
    """A path named in a data set's file that leads outside the data set's folder."""


class _Missing:
    def __repr__(self) -> str:
        return "nothing (the field is missing)"


MISSING = _Missing()  # dict.get's default for a field that is required


def describe(value, limit: int = 40) -> str:
    """``value`` in a few words for an error message, whatever it holds: never the whole of a long
    string, and never the repr of a container (a YAML alias bomb's repr takes exponential time)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, bool | int | float) or value is None or value is MISSING:
        return repr(value)
    if isinstance(value, list | tuple):
        if len(value) <= 6 and all(isinstance(v, str | int | float) or v is None for v in value):
            return "[" + ", ".join(describe(v, 12) for v in value) + "]"
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"an object of {len(value)} fields"
    return f"a {type(value).__name__}"


def number(value, path: Path, field: str) -> float:
    """A finite JSON/YAML number (not a bool, not a string of digits) as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInputError(path, f"{field} must be a number, got {describe(value)}")
    try:
        result = float(value)
    except OverflowError:  # an integer beyond float's range
        result = math.inf
    if not math.isfinite(result):
        raise BadInputError(path, f"{field} must be a finite number, got {describe(value)}")
    return result


def whole_number(value, path: Path, field: str, low: int, high: int) -> int:
    """An integer in ``[low, high]`` (a float without a fraction, ``640.0``, counts as one)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadInputError(path, f"{field} must be a whole number {_span(low, high)}, got {describe(value)}")
    return value


def whole_number_text(text: str, path: Path, field: str, low: int, high: int) -> int:
    """:func:`whole_number` for a number written as text (XML)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value.is_integer() and low <= value <= high):
        raise BadInputError(path, f"{field} must be a whole number {_span(low, high)}, got {describe(text)}")
    return int(value)


def _span(low: int, high: int) -> str:
    return f"from {low} up" if high == MAX_ID else f"from {low} to {high:,}"


def identifier(value, path: Path, field: str) -> int | str:
    """An id: a whole number from 0 to 2**63 - 1, or a non-empty string."""
    if isinstance(value, str) and value.strip():
        return value
    return whole_number(value, path, field, 0, MAX_ID)


def name(value, path: Path, field: str, numbers: bool = False) -> str:
    """A non-empty name (stripped of surrounding white space); ``numbers``: a number is a name too
    (YAML reads ``names: [0, 1]`` as numbers, Ultralytics takes them as names)."""
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        quote = isinstance(value, bool) or value is None  # YAML's yes, no, on, off, null
        hint = " (quote such names in YAML)" if quote else ""
        raise BadInputError(path, f"{field} must be a non-empty name, got {describe(value)}{hint}")
    return value.strip()


def path_text(value, path: Path, field: str) -> str:
    """A non-empty file or folder name, without NUL characters."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise BadInputError(path, f"{field} must be a file or folder name, got {describe(value)}")
    return value


def text_file(path: Path) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped); an unreadable file is a
    :class:`BadInputError` naming it."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadInputError(path, f"cannot read the file ({error.strerror or error})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        byte = error.object[error.start]
        raise BadInputError(path, f"not UTF-8 text (byte {error.start} is 0x{byte:02x})") from None


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` lies in ``folder`` (as written: ``..`` folded, links not followed)."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # another drive (Windows)
        return False


def inside(folder: Path, relative: str, path: Path, field: str, allow_outside: bool) -> Path:
    """``folder / relative``, refused (an :class:`OutsideRootError` naming ``path`` and ``field``) when
    it leads outside ``folder``, by ``..`` or as an absolute path, unless ``allow_outside``."""
    joined = folder / relative
    if allow_outside or is_inside(joined, folder):
        return joined
    raise OutsideRootError(
        path, f"{field} {describe(relative)} leads outside the data set's folder {folder}; {ALLOW_HINT}"
    )
