"""Every image decoded once before training, and the answer remembered.

A file that only fails when its pixels are decoded (a truncated JPEG, a text file named ``.jpg``)
would otherwise stop a run mid-epoch, hours in. :func:`check_images` decodes every image of a data
set with the loader training uses (:func:`detlab.data.images.open_rgb`), applies the ``on_bad``
policy to the failures and warns where an image's size disagrees with its annotation.

Answers, good and bad, are kept in one SQLite file keyed by (absolute path, size in bytes,
modification time in ns, Pillow version), so the next run decodes only new or changed files.
The cache is a convenience: when it cannot be opened or written, checking goes on without it.
"""

from __future__ import annotations

import sqlite3
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import PIL

from detlab.data.errors import ON_BAD_CHOICES, BadInputError, BadInputWarning
from detlab.data.images import open_rgb
from detlab.data.schema import DetectionDataset
from detlab.machine import usable_cpus, user_cache_dir
from detlab.progress import progress_bar

CACHE_FILE_NAME = "image_checks.sqlite3"
# Part of every cache key: a newer Pillow may read files an older one could not, or the reverse.
DECODER = f"open_rgb-1/pillow-{PIL.__version__}"
SKIP_HINT = "fix or remove them, or train with --set data.on_bad=skip"
PROGRESS_ABOVE = 50  # a bar for fewer images only flickers
WRITE_BATCH = 256  # answers kept per transaction, so an interrupted check keeps most of its work
MAX_WARNED_MISMATCHES = 10
MAX_NAMED_IN_WARNING = 50


@dataclass
class ImageCheckReport:
    """What :func:`check_images` found.

    ``checked``: image files checked (one a record, unless records share a file); ``decoded``:
    those decoded by this call (the rest were answered by the cache); ``bad``: ``(path, problem)``
    for every unusable file; ``size_mismatches``: one line for every file whose pixels differ in
    size from its annotation; ``cache``: the cache file used (``None``: none); ``seconds``: wall
    time of the check.
    """

    checked: int = 0
    decoded: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    size_mismatches: list[str] = field(default_factory=list)
    cache: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        from_cache = self.checked - self.decoded
        counts = (
            f"{self.decoded} decoded, {from_cache} from cache" if self.cache else f"{self.decoded} decoded"
        )
        problems = [f"{len(self.bad)} unreadable"] if self.bad else []
        if self.size_mismatches:
            problems.append(f"{len(self.size_mismatches)} size mismatches")
        return f"{self.checked} images checked ({counts}) in {self.seconds:.1f} s: " + (
            ", ".join(problems) or "all readable"
        )

    def as_dict(self) -> dict:
        data = asdict(self)
        data["bad"] = [list(item) for item in self.bad]
        return data


class BadImagesError(BadInputError):
    """Images that cannot be decoded; ``bad`` holds ``(path, problem)`` for every one of them."""

    def __init__(self, message: str, bad: list[tuple[str, str]], report: ImageCheckReport):
        ValueError.__init__(self, message)
        self.path, self.problem, self.line = bad[0][0], bad[0][1], None
        self.bad, self.report = bad, report


@dataclass
class _Answer:
    """The check of one file: its displayed size, or the problem that made it unusable."""

    width: int | None
    height: int | None
    problem: str | None
    cacheable: bool = True


def _check_one(path: Path) -> _Answer:
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        # Missing or unreadable (permissions): not a property of the file's bytes, so not cached.
        problem = (
            "image file not found"
            if isinstance(error, FileNotFoundError)
            else f"cannot open ({error.strerror})"
        )
        return _Answer(None, None, problem, cacheable=False)
    try:
        image = open_rgb(path)
    except BadInputError as error:
        return _Answer(None, None, error.problem)
    return _Answer(image.width, image.height, None)


def default_cache_path() -> Path:
    """``$DETLAB_CACHE_DIR/image_checks.sqlite3``, else ``~/.cache/detlab/image_checks.sqlite3``."""
    return user_cache_dir() / CACHE_FILE_NAME


class ImageCheckCache:
    """Checks remembered in SQLite: ``(absolute path, size, mtime_ns, decoder) -> answer``.

    Any failure (unwritable folder, a file that is not a database, a lock held too long) turns the
    cache off for the rest of the call with one warning; it never stops a check.
    """

    def __init__(self, path: Path):
        self.path = path
        self.connection: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # A generous timeout: several processes (e.g. data-parallel ranks) may check at once.
            self.connection = sqlite3.connect(path, timeout=60)
            with self.connection:
                self.connection.execute(
                    "CREATE TABLE IF NOT EXISTS image_checks (path TEXT PRIMARY KEY, file_size INTEGER NOT NULL, "
                    "mtime_ns INTEGER NOT NULL, decoder TEXT NOT NULL, width INTEGER, height INTEGER, problem TEXT)"
                )
        except (OSError, sqlite3.Error) as error:
            self._give_up(error)

    @property
    def usable(self) -> bool:
        return self.connection is not None

    def _give_up(self, error: Exception) -> None:
        warnings.warn(
            f"image check cache {self.path} cannot be used ({error}); checking without it (delete the file "
            "or set DETLAB_CACHE_DIR to a writable folder to cache again)",
            stacklevel=2,
        )
        if self.connection is not None:
            self.connection.close()
        self.connection = None

    def lookup(self, keys: dict[str, tuple[int, int]]) -> dict[str, _Answer]:
        """``{absolute path: (size, mtime_ns)}`` -> the answers stored for exactly those files."""
        found: dict[str, _Answer] = {}
        if self.connection is None:
            return found
        paths = list(keys)
        try:
            for start in range(0, len(paths), 500):
                chunk = paths[start : start + 500]
                rows = self.connection.execute(
                    "SELECT path, file_size, mtime_ns, decoder, width, height, problem FROM image_checks "
                    f"WHERE path IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                for path, size, mtime_ns, decoder, width, height, problem in rows:
                    if (size, mtime_ns) == keys[path] and decoder == DECODER:
                        found[path] = _Answer(width, height, problem)
        except sqlite3.Error as error:
            self._give_up(error)
            return {}
        return found

    def store(self, answers: list[tuple[str, tuple[int, int], _Answer]]) -> None:
        """Write ``(absolute path, (size, mtime_ns), answer)`` rows in one transaction."""
        if not answers or self.connection is None:
            return
        rows = [
            (path, size, mtime, DECODER, a.width, a.height, a.problem) for path, (size, mtime), a in answers
        ]
        try:
            with self.connection:
                self.connection.executemany(
                    "INSERT OR REPLACE INTO image_checks VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                )
        except sqlite3.Error as error:
            self._give_up(error)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def _open_cache(cache_path: str | Path | None) -> ImageCheckCache | None:
    try:
        path = default_cache_path() if cache_path is None else Path(cache_path)
    except RuntimeError as error:  # no home directory to be found
        warnings.warn(f"no folder for the image check cache ({error}); checking without it", stacklevel=2)
        return None
    try:
        if path.is_dir():
            path = path / CACHE_FILE_NAME
    except OSError:
        pass  # not a folder we may look into; opening the file reports the problem
    cache = ImageCheckCache(path)
    return cache if cache.usable else None


def _num_threads() -> int:
    available = usable_cpus()
    return max(1, min(4, available or 1))


def _decode_all(paths: list[Path], progress: bool):
    """Yield ``(path, answer)`` for every path, decoding in a few threads (Pillow releases the GIL)."""
    bar = progress_bar(
        total=len(paths),
        desc="checking images",
        unit="image",
        leave=False,
        disable=not progress or len(paths) <= PROGRESS_ABOVE,
    )
    threads = min(_num_threads(), len(paths))
    try:
        if threads <= 1:
            answers = map(_check_one, paths)
            for path, answer in zip(paths, answers):
                bar.update()
                yield path, answer
        else:
            pool = ThreadPoolExecutor(threads, thread_name_prefix="check-images")
            try:
                for path, answer in zip(paths, pool.map(_check_one, paths)):
                    bar.update()
                    yield path, answer
            finally:
                pool.shutdown(cancel_futures=True)  # on Ctrl-C, do not decode what is still queued
    finally:
        bar.close()


def check_images(
    dataset: DetectionDataset,
    on_bad: str = "error",
    cache_path: str | Path | None = None,
    progress: bool = True,
    hint: str = SKIP_HINT,
) -> tuple[DetectionDataset, ImageCheckReport]:
    """Decode every image of ``dataset`` once (answers cached across runs); apply ``on_bad``.

    ``on_bad="error"``: after checking all images, raise :class:`BadImagesError` (a
    :class:`BadInputError`, so a ``ValueError``) listing every unusable file. ``on_bad="skip"``:
    return a data set without the records of unusable files and warn once, naming them; if no
    image is usable that is an error all the same. An image whose decoded size (EXIF orientation
    applied) differs from the record's ``width``/``height`` is a warning, not an error.

    ``cache_path``: the cache file, or a folder to hold ``image_checks.sqlite3`` (default
    ``$DETLAB_CACHE_DIR`` or ``~/.cache/detlab``); ``hint``: the error's last line, how to get
    past it. Returns ``(dataset, report)``; the data set is the one given when nothing was skipped.
    """
    _check_policy(on_bad)  # before reading anything
    paths = list(dict.fromkeys(Path(record.image_path) for record in dataset.records))
    answers, report = _check(paths, on_bad, cache_path, progress)
    report.size_mismatches = _size_mismatches(dataset.records, answers)
    _warn_size_mismatches(report.size_mismatches)
    if not report.bad:
        return dataset, report
    _apply_policy(dataset.name or "the data set", len(paths), report, on_bad, hint)
    bad_paths = {Path(path) for path, _ in report.bad}
    keep = [index for index, record in enumerate(dataset.records) if Path(record.image_path) not in bad_paths]
    return dataset.subset(keep), report


def check_image_files(
    paths: list[Path],
    on_bad: str = "error",
    cache_path: str | Path | None = None,
    progress: bool = True,
    hint: str = SKIP_HINT,
) -> tuple[list[Path], ImageCheckReport]:
    """:func:`check_images` for image files without annotations (what ``detlab predict`` reads):
    ``(the files that decode, report)``, the same policy and cache."""
    _check_policy(on_bad)
    paths = list(dict.fromkeys(Path(path) for path in paths))
    answers, report = _check(paths, on_bad, cache_path, progress)
    if report.bad:
        _apply_policy("the input", len(paths), report, on_bad, hint)
    return [path for path in paths if answers[path].problem is None], report


def _check_policy(on_bad: str) -> None:
    if on_bad not in ON_BAD_CHOICES:
        raise ValueError(f"on_bad must be one of {ON_BAD_CHOICES}, got {on_bad!r}")


def _check(paths: list[Path], on_bad: str, cache_path, progress: bool) -> tuple[dict, ImageCheckReport]:
    """Every path's answer (cached or decoded) and the report of the bad ones and the time."""
    start = time.perf_counter()
    report = ImageCheckReport(checked=len(paths))
    answers = _answers(paths, cache_path, progress, report)
    report.bad = [(str(path), answers[path].problem) for path in paths if answers[path].problem is not None]
    report.seconds = time.perf_counter() - start
    return answers, report


def _cache_keys(paths: list[Path]) -> dict[Path, tuple[str, tuple[int, int]]]:
    """``path -> (absolute path, (size, mtime_ns))``. Each file is stat'ed before it is decoded:
    if it changes meanwhile, its new mtime misses the cache. Missing files are left out (decoding
    reports them)."""
    keys = {}
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        keys[path] = (str(path.resolve()), (stat.st_size, stat.st_mtime_ns))
    return keys


def _answers(paths: list[Path], cache_path, progress: bool, report: ImageCheckReport) -> dict[Path, _Answer]:
    """Every path's answer: from the cache, else decoded (and then stored in the cache, in batches;
    also when interrupted: what was decoded stays decoded). Counts the decodes in ``report``."""
    keys = _cache_keys(paths)
    cache = _open_cache(cache_path) if paths else None
    answers: dict[Path, _Answer] = {}
    pending = []
    try:
        if cache is not None:
            cached = cache.lookup(dict(keys.values()))
            answers = {path: cached[absolute] for path, (absolute, _) in keys.items() if absolute in cached}
        for path, answer in _decode_all([path for path in paths if path not in answers], progress):
            answers[path] = answer
            report.decoded += 1
            if cache is not None and answer.cacheable and path in keys:
                pending.append((*keys[path], answer))
                if len(pending) >= WRITE_BATCH:
                    cache.store(pending)
                    pending = []
    finally:
        if cache is not None:
            cache.store(pending)
            report.cache = str(cache.path) if cache.usable else None
            cache.close()
    return answers


def _size_mismatches(records, answers: dict[Path, _Answer]) -> list[str]:
    """A line for each image whose decoded size differs from its record's ``width``/``height``."""
    lines, seen = [], set()
    for record in records:
        answer = answers[Path(record.image_path)]
        if answer.problem is None and (answer.width, answer.height) != (record.width, record.height):
            if record.image_path not in seen:
                seen.add(record.image_path)
                lines.append(
                    f"{record.image_path}: annotated as {record.width}x{record.height}, but the image is "
                    f"{answer.width}x{answer.height} (width x height, EXIF orientation applied)"
                )
    return lines


def _warn_size_mismatches(lines: list[str]) -> None:
    for message in lines[:MAX_WARNED_MISMATCHES]:
        warnings.warn(message, BadInputWarning, stacklevel=3)
    if len(lines) > MAX_WARNED_MISMATCHES:
        warnings.warn(
            f"{len(lines) - MAX_WARNED_MISMATCHES} more images differ in size from "
            "their annotation (all are listed in the check report)",
            BadInputWarning,
            stacklevel=3,
        )


def _apply_policy(name: str, total: int, report: ImageCheckReport, on_bad: str, hint: str) -> None:
    """The bad images of ``report`` (of ``total`` of ``name``'s): under ``on_bad="skip"`` one
    warning naming them; under ``"error"``, or when no image is usable, :class:`BadImagesError`
    listing every one, ending with ``hint``."""
    listing = "\n".join(f"  {path}: {problem}" for path, problem in report.bad)
    if len(report.bad) == total:
        raise BadImagesError(
            f"{name}: none of its {total} images can be decoded:\n{listing}\nfix or replace them",
            report.bad,
            report,
        )
    if on_bad == "error":
        raise BadImagesError(
            f"{name}: {len(report.bad)} of {total} images cannot be decoded:\n{listing}\n{hint}",
            report.bad,
            report,
        )
    named = report.bad[:MAX_NAMED_IN_WARNING]
    more = len(report.bad) - len(named)
    warnings.warn(
        f"skipped {len(report.bad)} of {total} images of {name} that cannot be decoded:\n"
        + "\n".join(f"  {path}: {problem}" for path, problem in named)
        + (f"\n  ... and {more} more (listed in the check report)" if more else ""),
        BadInputWarning,
        stacklevel=4,
    )
