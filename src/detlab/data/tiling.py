"""A tiled copy of a data set, for training on tiles (``detlab convert SRC voc:DST --tile SIZE
--overlap F``): every image cut into the tiles tiled inference runs on
(:func:`detlab.tiles.tile_windows`), each written as an image of its own, with the boxes that lie
in it clipped to it. The rule for a box that a tile cuts (:func:`detlab.tiles.clip_to_window`):
it stays in that tile when at least :data:`MIN_VISIBLE` of its area lies in the tile and both
sides of that part are at least :data:`MIN_SIDE` pixels; otherwise (a sliver) it is dropped from
that tile, where the next tile (which overlaps this one) holds more of it. The copy is a VOC
folder: any method trains on it (``--data voc:DST``), and tiled inference scores the model on
the whole images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detlab.data.schema import DetectionDataset, Record
from detlab.data.voc import write_voc
from detlab.image_files import open_rgb
from detlab.progress import progress_bar
from detlab.tiles import clip_to_window, tile_windows

MIN_VISIBLE = 0.3  # a box keeps at least this share of its area in the tile, or is dropped from it
MIN_SIDE = 2.0  # pixels: the kept part's shorter side


def tile_dataset(
    dataset: DetectionDataset,
    out_dir: str | Path,
    size: int,
    overlap: float = 0.2,
    split: str = "all",
    min_visible: float = MIN_VISIBLE,
) -> dict:
    """Write the tiles of every image of ``dataset`` (``size`` pixels a side, sharing ``overlap``
    of it) under ``out_dir`` in VOC layout, listed in ``ImageSets/Main/<split>.txt`` (appended, so
    splits can be written one after the other). A tile of ``a.jpg`` at ``(x, y)`` is
    ``a_x{x}_y{y}.jpg`` (JPEG at quality 95 for JPEG sources, else PNG). Returns ``{"images",
    "tiles", "boxes" (kept in tiles), "dropped" (box and tile pairs dropped as slivers)}``."""
    images_dir = Path(out_dir) / "JPEGImages"
    images_dir.mkdir(parents=True, exist_ok=True)
    records, kept, dropped = [], 0, 0
    for record in progress_bar(dataset.records, desc="tiles", unit="image"):
        image = open_rgb(record.image_path)
        windows = tile_windows(image.height, image.width, size, overlap)
        boxes = record.boxes.numpy().reshape(-1, 4)
        suffix = ".jpg" if record.image_path.suffix.lower() in (".jpg", ".jpeg") else ".png"
        for window in windows:
            x1, y1, x2, y2 = window.tolist()
            clipped, index, _ = clip_to_window(boxes, window, min_visible, MIN_SIDE)
            touching = (boxes[:, 0] < x2) & (boxes[:, 2] > x1) & (boxes[:, 1] < y2) & (boxes[:, 3] > y1)
            kept += len(index)
            dropped += int(touching.sum()) - len(index)
            path = images_dir / f"{record.image_path.stem}_x{x1}_y{y1}{suffix}"
            image.crop((x1, y1, x2, y2)).save(path, **({"quality": 95} if suffix == ".jpg" else {}))
            chosen = torch.from_numpy(np.asarray(index, dtype=np.int64))
            records.append(
                Record(
                    path.stem,
                    path,
                    x2 - x1,
                    y2 - y1,
                    boxes=torch.from_numpy(np.ascontiguousarray(clipped, dtype=np.float32)),
                    labels=record.labels[chosen],
                    difficult=record.difficult[chosen],
                    iscrowd=record.iscrowd[chosen],
                )
            )
    # the tiles are in place already: write_voc leaves an image that is its own destination
    write_voc(DetectionDataset(records, dataset.classes), out_dir, split=split)
    return {"images": len(dataset), "tiles": len(records), "boxes": kept, "dropped": dropped}
