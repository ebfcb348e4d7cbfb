"""The data layer: one sample schema, readers/writers for VOC, COCO and YOLO, the synthetic set.

``load_dataset(spec, split)`` is the one entry point commands use; ``spec`` is ``synthetic``,
``synthetic-single``, ``voc:DIR``, ``coco:FILE.json``, ``yolo:DIR`` or a bare path whose format
is detected (a folder with ``Annotations/`` is VOC, one with ``images/`` + ``labels/`` is YOLO, a
``.json`` file is COCO). ``check_images(dataset)`` decodes every image once before training
(answers cached across runs); ``to_image_tensor`` turns any image a user holds into the contract.
"""

from detlab.data.coco import read_coco, write_coco
from detlab.data.errors import BadInputError, ProblemLog
from detlab.data.images import load_image, to_image_tensor
from detlab.data.loading import detect_format, load_dataset, parse_spec
from detlab.data.schema import DetectionDataset, Record
from detlab.data.transforms import build_transforms, collate
from detlab.data.validation import ImageCheckReport, check_images
from detlab.data.voc import read_voc, write_voc
from detlab.data.yolo import read_yolo, write_yolo

__all__ = [
    "BadInputError",
    "DetectionDataset",
    "ImageCheckReport",
    "ProblemLog",
    "Record",
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
