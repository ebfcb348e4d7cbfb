"""The data layer: one sample schema, readers/writers for VOC, COCO and YOLO, the synthetic set.

``load_dataset(spec, split)`` is the one entry point commands use; ``spec`` is ``synthetic``,
``synthetic-single``, ``voc:DIR``, ``coco:FILE.json``, ``yolo:DIR`` or a bare path whose format
is detected (a folder with ``Annotations/`` is VOC, one with ``images/`` + ``labels/`` is YOLO, a
``.json`` file is COCO). ``check_images(dataset)`` decodes every image once before training
(answers cached across runs); ``to_image_tensor`` turns any image a user holds into the contract.
``audit(spec)`` finds duplicate images, leaks across splits, box problems and, given a model's
detections, likely label mistakes (:mod:`detlab.data.auditing`).
"""

import importlib

# name -> the module that defines it. Imported on first use (PEP 562), so `import detlab.data` and
# its torch-free parts (errors, the readers' error policy) do not load torch; the readers do.
_HOMES = {
    "AuditConfig": "auditing", "AuditResult": "auditing", "audit": "auditing",
    "read_coco": "coco", "write_coco": "coco",
    "BadInputError": "errors", "ProblemLog": "errors",
    "load_image": "images", "to_image_tensor": "images",
    "detect_format": "loading", "load_dataset": "loading", "parse_spec": "loading",
    "DetectionDataset": "schema", "Record": "schema",
    "build_transforms": "transforms", "collate": "transforms",
    "ImageCheckReport": "validation", "check_images": "validation",
    "read_voc": "voc", "write_voc": "voc",
    "read_yolo": "yolo", "write_yolo": "yolo",
}  # fmt: skip


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"detlab.data.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'detlab.data' has no attribute {name!r}")


__all__ = [
    "AuditConfig",
    "AuditResult",
    "BadInputError",
    "DetectionDataset",
    "ImageCheckReport",
    "ProblemLog",
    "Record",
    "audit",
    "build_transforms",
    "check_images",
    "collate",
    "detect_format",
    "load_dataset",
    "load_image",
    "parse_spec",
    "read_coco",
    "read_voc",
    "read_yolo",
    "to_image_tensor",
    "write_coco",
    "write_voc",
    "write_yolo",
]
