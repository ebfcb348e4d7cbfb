"""Data set specs (``synthetic``, ``voc:DIR``, ``coco:FILE``, ``yolo:DIR``) -> :class:`DetectionDataset`."""

from __future__ import annotations

from pathlib import Path

from detlab.data.coco import read_coco
from detlab.data.errors import ProblemLog
from detlab.data.schema import DetectionDataset
from detlab.data.synthetic import ensure_synthetic
from detlab.data.voc import read_voc
from detlab.data.yolo import read_yolo

FORMATS = ("voc", "coco", "yolo")
SYNTHETIC = {"synthetic": False, "synthetic-single": True}
DEFAULT_SYNTHETIC_ROOT = "data/synthetic"


def detect_format(path: str | Path) -> str:
    """``voc``, ``coco`` or ``yolo`` for a path, from what it contains."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return "coco"
    if (path / "Annotations").is_dir():
        return "voc"
    if (path / "images").is_dir():
        return "yolo"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    raise ValueError(
        f"{path}: cannot tell the data format (expected a VOC folder with Annotations/, a YOLO folder with "
        "images/ and labels/, or a COCO .json file); name it explicitly as voc:PATH, coco:PATH or yolo:PATH"
    )


def parse_spec(spec: str) -> tuple[str, str]:
    """``"voc:DIR"`` -> ``("voc", "DIR")``; a bare path gets its detected format."""
    if spec in SYNTHETIC:
        return spec, ""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in FORMATS:
        return prefix, rest
    return detect_format(spec), spec


def load_dataset(
    spec: str,
    split: str | None = None,
    root: str | Path | None = None,
    on_bad: str = "error",
    num_synthetic: int = 600,
    seed: int = 0,
    problems: ProblemLog | None = None,
) -> DetectionDataset:
    """Load ``spec`` (see module doc) at ``split``.

    For ``synthetic``/``synthetic-single`` the set is generated under ``root`` on first use
    (default ``data/synthetic`` or ``data/synthetic-single``) and reused afterwards.
    For COCO, ``split`` is ignored (one file is one split).
    """
    kind, location = parse_spec(spec)
    if kind in SYNTHETIC:
        root = Path(root or f"data/{kind}")
        ensure_synthetic(root, num_images=num_synthetic, seed=seed, single=SYNTHETIC[kind])
        dataset = read_voc(root, split, on_bad=on_bad, problems=problems)
        dataset.name = f"{kind} [{split}]" if split else kind
        return dataset
    if kind == "voc":
        return read_voc(location, split, on_bad=on_bad, problems=problems)
    if kind == "yolo":
        return read_yolo(location, split, on_bad=on_bad, problems=problems)
    return read_coco(location, on_bad=on_bad, problems=problems)
