"""Proposals on disk, computed once per image and reused (R-CNN, Fast R-CNN, evaluation).

One directory per image set and method, e.g. ``runs/proposals/bccd-test/ss-fast/``:

- ``method.json``: the method's settings; opening the directory with a different method or
  different settings is an error, so stale boxes are never mixed with new ones;
- ``boxes/<image id>.npy``: ``float32 [K, 4]`` xyxy, best first, one file per image;
- ``index.jsonl``: one line ``{"image_id": ..., "file": ..., "count": K}`` per finished image.

It survives interruption: a box file is written under a temporary name and renamed into place
(atomic on POSIX), and only then is its index line appended and flushed. A run killed at any
moment leaves at worst an orphan temporary file or a torn last index line, both ignored when the
cache is opened again, so the next run redoes only the unfinished image. Several processes may
fill one cache at once (two training runs started on the same data): temporary names carry the
process id and index lines are appended under an exclusive lock; an image both compute is
stored twice, identically, and read once.

Usage::

    cache = ProposalCache("runs/proposals/bccd-test/ss-fast", build_method("ss-fast"))
    boxes = cache.get_or_compute(record.image_id, record.image_path)   # Tensor[K, 4]
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detlab.machine import usable_cpus
from detlab.progress import progress_bar
from detlab.proposals.method import ProposalMethod, propose_files
from detlab.proposals.registry import build_method

ImageSource = Tensor | np.ndarray | str | Path | Callable[[], Tensor]


def _file_name(image_id: str | int) -> str:
    # Readable where the id allows it; the hash keeps ids that differ only in unsafe characters apart.
    text = str(image_id)
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]  # ids are keyed as text, so 7 and "7" are one image
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', text)[:80]}-{digest}.npy"


class ProposalCache:
    """A directory of per-image proposals for one image set and one method.

    Args:
        path: the directory (created when the first proposals are stored: opening a cache, as
            loading a checkpoint does, writes nothing).
        method: the :class:`ProposalMethod` (or a name of ``detlab.proposals.METHODS``, built with
            its defaults) used for images not in the cache; ``None`` opens the cache read-only
            (``get_or_compute`` of a missing image then raises ``KeyError``).
    """

    def __init__(self, path: str | Path, method: ProposalMethod | str | None = None):
        if isinstance(method, str):
            method = build_method(method)
        self.path = Path(path)
        self.method = method
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"{self.path}: a proposal cache must be a directory, this is a file")
        self._check_settings()
        self._index = self._read_index()

    def _check_settings(self) -> None:
        """A cache holds one method's proposals: refuse another's (its folder's ``method.json``)."""
        settings_file = self.path / "method.json"
        if self.method is None or not settings_file.exists():
            return
        settings = json.loads(json.dumps(self.method.settings()))
        stored = json.loads(settings_file.read_text())
        if stored != settings:
            raise ValueError(
                f"{self.path}: this cache holds proposals of {stored}, not of {settings}; "
                "use another directory for these settings or delete this one"
            )

    def _create(self) -> None:
        """The folder and its ``method.json``, before the first proposals are stored."""
        (self.path / "boxes").mkdir(parents=True, exist_ok=True)
        settings_file = self.path / "method.json"
        if self.method is not None and not settings_file.exists():
            temporary = settings_file.with_name(
                f"method.json.{os.getpid()}.tmp"
            )  # own name: processes may race
            temporary.write_text(json.dumps(self.method.settings(), indent=1))
            os.replace(temporary, settings_file)

    def _read_index(self) -> dict[str, str]:
        index = {}
        index_file = self.path / "index.jsonl"
        if not index_file.exists():
            return index
        for line in index_file.read_text().splitlines():
            try:
                entry = json.loads(line)
                key, name = str(entry["image_id"]), entry["file"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by an interrupted write; that image is simply redone
            if (self.path / "boxes" / name).is_file():
                index[key] = name
        return index

    def __contains__(self, image_id: str | int) -> bool:
        return str(image_id) in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get(self, image_id: str | int) -> Tensor:
        """Cached boxes ``float32 Tensor[K, 4]`` of ``image_id``; ``KeyError`` if not cached."""
        name = self._index[str(image_id)]
        return torch.from_numpy(np.load(self.path / "boxes" / name, allow_pickle=False))

    def put(self, image_id: str | int, boxes: Tensor | np.ndarray) -> None:
        """Store ``boxes`` ``[K, 4]`` for ``image_id`` (atomic; see the module docstring)."""
        array = np.ascontiguousarray(
            boxes.detach().cpu().numpy() if isinstance(boxes, Tensor) else boxes, dtype=np.float32
        ).reshape(-1, 4)
        name = _file_name(image_id)
        self._create()
        final = self.path / "boxes" / name
        temporary = final.with_name(
            f"{name}.{os.getpid()}.tmp"
        )  # two processes filling one cache never share it
        with open(temporary, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        index_file = self.path / "index.jsonl"
        line = json.dumps({"image_id": str(image_id), "file": name, "count": len(array)})
        with open(index_file, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # one appender at a time (released when closed)
            # After a torn last line, start on a fresh line so this entry parses.
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write(line.encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._index[str(image_id)] = name

    def get_or_compute(self, image_id: str | int, image: ImageSource) -> Tensor:
        """Cached boxes of ``image_id``, or compute them with the method from ``image`` (a tensor,
        a path, or a function returning the tensor, called only on a miss) and store them."""
        if image_id in self:
            return self.get(image_id)
        if self.method is None:
            raise KeyError(f"{image_id!r} is not in the read-only proposal cache {self.path}")
        if callable(image) and not isinstance(image, (Tensor, np.ndarray)):
            image = image()
        boxes = self.method.propose(image)
        self.put(image_id, boxes)
        return boxes

    def fill(
        self, items: Iterable[tuple[str | int, ImageSource]], progress: Callable[[int], None] | None = None
    ) -> int:
        """Compute every missing ``(image_id, image)`` of ``items``; returns how many were computed.

        ``progress`` (optional) is called with the number of images done so far after each one.
        """
        computed = 0
        for done, (image_id, image) in enumerate(items, start=1):
            if image_id not in self:
                self.get_or_compute(image_id, image)
                computed += 1
            if progress is not None:
                progress(done)
        return computed


class RecordProposals:
    """A data set record's proposals from a :class:`ProposalCache`, computed from its image file
    on a miss: what a data set attaches to each training image (``DetectionDataset.with_options(
    proposals=...)``) so the augmentations move them with the image.

    Keys are the record's id and a digest of its image path, so two data sets with the same ids
    do not share boxes.
    """

    def __init__(self, cache: ProposalCache):
        self.cache = cache

    @staticmethod
    def key(record) -> str:
        text = str(record.image_id)
        return (
            f"{text}-{hashlib.sha1(f'{text}|{Path(record.image_path).resolve()}'.encode()).hexdigest()[:10]}"
        )

    def __call__(self, record) -> Tensor:
        return self.cache.get_or_compute(self.key(record), record.image_path)

    def fill(self, records, workers: int | None = None, progress: bool = True) -> int:
        """Compute the missing proposals of ``records`` in ``workers`` processes (default: one a
        usable core); returns how many were computed. Interrupted, it keeps what it finished."""
        missing = [record for record in records if self.key(record) not in self.cache]
        if not missing:
            return 0
        if self.cache.method is None:
            raise KeyError(f"{len(missing)} images are not in the read-only proposal cache {self.cache.path}")
        bar = progress_bar(
            total=len(missing),
            desc=f"{self.cache.method.name} proposals",
            unit="image",
            disable=not progress,
            leave=False,
        )
        try:
            paths = [record.image_path for record in missing]
            for position, boxes, _ in propose_files(self.cache.method, paths, workers or usable_cpus()):
                self.cache.put(self.key(missing[position]), boxes)
                bar.update()
        finally:
            bar.close()
        return len(missing)
