"""Data set specs (``synthetic``, ``voc:DIR``, ``coco:FILE``, ``yolo:DIR``) -> :class:`DetectionDataset`."""

from __future__ import annotations

from pathlib import Path

from detlab.data.coco import read_coco
from detlab.data.errors import ProblemLog
from detlab.data.schema import DetectionDataset
from detlab.data.synthetic import SMALL_IMAGE_SIZE, ensure_synthetic
from detlab.data.voc import read_voc
from detlab.data.yolo import YAML_FILES, YAML_SUFFIXES, read_yolo

FORMATS = ("voc", "coco", "yolo")
SYNTHETIC = {"synthetic": False, "synthetic-single": True}
SYNTHETIC_POSE = "synthetic-pose"
SYNTHETIC_SMALL = "synthetic-small"
DEFAULT_SYNTHETIC_ROOT = "data/synthetic"


def detect_format(path: str | Path) -> str:
    """``voc``, ``coco`` or ``yolo`` for a path, from what it contains."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return "coco"
    if (path / "Annotations").is_dir():
        return "voc"
    if path.is_file() and path.suffix.lower() in YAML_SUFFIXES:
        return "yolo"
    if (path / "images").is_dir() or any((path / name).is_file() for name in YAML_FILES):
        return "yolo"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    raise ValueError(
        f"{path}: cannot tell the data format (expected a VOC folder with Annotations/, a YOLO folder with "
        "images/ and labels/ or a data.yaml, a YOLO data .yaml file, or a COCO .json file); name it "
        "explicitly as voc:PATH, coco:PATH or yolo:PATH"
    )


def parse_spec(spec: str) -> tuple[str, str]:
    """``"voc:DIR"`` -> ``("voc", "DIR")``; a bare path gets its detected format."""
    if spec in SYNTHETIC or spec in (SYNTHETIC_POSE, SYNTHETIC_SMALL):
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
    allow_outside_root: bool = False,
) -> DetectionDataset:
    """Load ``spec`` (see module doc) at ``split``.

    For ``synthetic``/``synthetic-single``/``synthetic-pose``/``synthetic-small`` the set
    (``num_synthetic`` images) is generated under ``root`` on first use (default ``data/<spec>``)
    and reused afterwards; ``synthetic-small`` never takes the shared set's default root
    (``data/synthetic``, the ``data.root`` default): it would replace that set.
    For COCO, ``split`` is ignored (one file is one split). ``allow_outside_root``
    (``data.allow_outside_root``): read files that the data set's own files name outside its
    folder (a COCO ``file_name`` of ``../x.jpg``, a VOC split id ``/abs/x``); refused by default.
    """
    kind, location = parse_spec(spec)
    if kind == SYNTHETIC_POSE:
        from detlab.data.keypoint_synthetic import ensure_synthetic_pose

        root = ensure_synthetic_pose(Path(root or f"data/{kind}"), num_images=num_synthetic, seed=seed)
        dataset = read_coco(
            root / f"{split or 'trainval'}.json", image_dir=root / "images", on_bad=on_bad, problems=problems
        )
        dataset.name = f"{kind} [{split}]" if split else kind
        return dataset
    if kind == SYNTHETIC_SMALL:
        root = Path(root if root and Path(root) != Path(DEFAULT_SYNTHETIC_ROOT) else f"data/{kind}")
        ensure_synthetic(root, num_images=num_synthetic, seed=seed, image_size=SMALL_IMAGE_SIZE, small=True)
        dataset = read_voc(root, split, on_bad=on_bad, problems=problems)
        dataset.name = f"{kind} [{split}]" if split else kind
        return dataset
    if kind in SYNTHETIC:
        root = Path(root or f"data/{kind}")
        ensure_synthetic(root, num_images=num_synthetic, seed=seed, single=SYNTHETIC[kind])
        dataset = read_voc(root, split, on_bad=on_bad, problems=problems)
        dataset.name = f"{kind} [{split}]" if split else kind
        return dataset
    if kind == "voc":
        return read_voc(
            location, split, on_bad=on_bad, problems=problems, allow_outside_root=allow_outside_root
        )
    if kind == "yolo":
        return read_yolo(
            location, split, on_bad=on_bad, problems=problems, allow_outside_root=allow_outside_root
        )
    return read_coco(location, on_bad=on_bad, problems=problems, allow_outside_root=allow_outside_root)
