"""The served page's Errors view: why each served model's mAP is what it is, on a data set given at start.

``detlab serve --checkpoint RUN --data SPEC`` scores every served detector on ``SPEC`` (its test split,
or ``--split``) once, at start, as ``detlab eval --checkpoint RUN --errors --out DIR`` would: TIDE's
dAP of each error type and their counts (:mod:`detlab.eval.errors`), and a gallery image a type
(the worst examples with the ground truth drawn; :func:`detlab.eval.error_report.write_error_report`)
in a folder of the server's own. ``GET /api/errors`` returns the numbers of every model, and
``GET /api/errors/MODEL/TYPE.jpg`` a gallery; a client names a model and an error type, never a path.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from detlab.engine.predict import evaluate_predictor, evaluation_split
from detlab.eval.error_report import write_error_report
from detlab.eval.errors import ERROR_TYPES, SPECIAL_ERROR_TYPES, TIDE_NAMES
from detlab.serve.served import ServedModel

GALLERY_SIZE = 8  # examples a gallery: a page shows them at a glance


FIGURES = {"errors.png": "errors.png", "confusion_matrix.png": "confusion_matrix.png"}


@dataclass
class ErrorViews:
    """The Errors view of every served model: ``views`` ``{model name: JSON-ready view}`` and the
    folder holding the figures and galleries (a temporary one, removed with the object)."""

    data: str
    split: str | None
    views: dict[str, dict] = field(default_factory=dict)
    folder: tempfile.TemporaryDirectory | None = None

    def figure(self, model: str, name: str) -> Path | None:
        """The file of ``model``'s figure ``name`` (``errors.png``, ``confusion_matrix.png`` or
        ``TYPE.jpg``, a gallery), or None when there is none (unknown model, name or type, or no
        example of that type). Only names from these lists reach the file system."""
        view = self.views.get(model)
        if view is None or not view.get("available") or self.folder is None:
            return None
        kind = name.removesuffix(".jpg")
        if name in FIGURES:
            file = FIGURES[name]
        elif name.endswith(".jpg") and kind in view["galleries"]:
            file = f"gallery_{kind}.jpg"
        else:
            return None
        path = Path(self.folder.name) / view["folder"] / file
        return path if path.is_file() else None

    def answer(self) -> dict:
        """What ``GET /api/errors`` returns."""
        return {
            "data": self.data,
            "split": self.split,
            "types": [
                {"type": kind, "name": TIDE_NAMES[kind]} for kind in (*ERROR_TYPES, *SPECIAL_ERROR_TYPES)
            ],
            "models": {
                name: {k: v for k, v in view.items() if k != "folder"} for name, view in self.views.items()
            },
        }


def error_views(models: dict[str, ServedModel], data: str, split: str | None = None) -> ErrorViews:
    """Score each detector of ``models`` on ``data`` at ``split`` (default: each run's test split)
    and analyse its errors (see the module doc); a model that is not a box detector (the keypoint
    regressor), or an ONNX file (which keeps no data set settings), gets a view saying why not."""
    views = ErrorViews(data, split, folder=tempfile.TemporaryDirectory(prefix="detlab-serve-errors-"))
    for index, (name, served) in enumerate(models.items()):
        predictor = served.predictor
        reason = unavailable_reason(predictor)
        if reason:
            views.views[name] = {"available": False, "reason": reason}
            continue
        dataset, _ = evaluation_split(predictor, data, split, None, 0, "error")
        report, result = evaluate_predictor(predictor, dataset)
        folder = str(index)  # the model's name is the client's word; the folder is ours
        written = write_error_report(
            result.problem,
            Path(views.folder.name) / folder,
            image_paths=result.problem.image_paths,
            gallery_size=GALLERY_SIZE,
            progress=False,
        )
        base = f"/api/errors/{quote(name, safe='')}"
        views.views[name] = {
            "available": True,
            "folder": folder,
            "split": split or predictor.run_config.data.test_split,
            "images": len(dataset),
            "AP50": report["metrics"].get("AP50"),
            "ap": written["ap"],
            "dap": written["dap"],
            "counts": written["counts"],
            "best_confidence": written["operating_point"]["best_confidence"],
            "figures": {figure.removesuffix(".png"): f"{base}/{figure}" for figure in FIGURES},
            "galleries": {
                kind: {"url": f"{base}/{kind}.jpg", "examples": len(gallery["examples"])}
                for kind, gallery in written["galleries"].items()
                if gallery["examples"]
            },
        }
    return views


def unavailable_reason(predictor) -> str | None:
    """Why ``predictor`` gets no Errors view, or None."""
    if getattr(predictor, "run_config", None) is None:
        return "an ONNX model: score its checkpoint with detlab eval --checkpoint RUN --errors"
    if predictor.model.evaluation != "detection":
        return "not a box detector: no error analysis"
    return None
