"""The data layer: one sample schema, readers/writers for VOC, COCO and YOLO, the synthetic set.

Import each name from the module that defines it (this package re-exports nothing, so the import
graph is what the imports say, and the torch-free readers stay torch-free):

- :mod:`~detlab.data.loading`: ``load_dataset(spec, split)``, the one entry point commands use;
  ``spec`` is ``synthetic``, ``synthetic-single``, ``synthetic-pose``, ``synthetic-small``, ``voc:DIR``,
  ``coco:FILE.json``, ``yolo:DIR`` or a bare path whose format is detected;
- :mod:`~detlab.data.schema`: ``DetectionDataset``, ``Record``;
- :mod:`~detlab.data.voc`, :mod:`~detlab.data.coco`, :mod:`~detlab.data.yolo`: ``read_*`` / ``write_*``;
- :mod:`~detlab.data.validation`: ``check_images(dataset)`` decodes every image once before
  training (answers cached across runs);
- :mod:`~detlab.data.images`: ``load_image``, ``to_image_tensor`` (any image a user holds -> the contract);
- :mod:`~detlab.data.transforms`: ``build_transforms``; :mod:`~detlab.data.mosaic`: ``MosaicDataset``;
- :mod:`~detlab.data.errors`: ``BadInputError``, ``ProblemLog`` (the bad-input policy);
- :mod:`~detlab.data.auditing`: ``audit(data)``, what is wrong with the data itself (duplicate
  images and leaks between splits, duplicate and outlier boxes, likely label mistakes).
"""
