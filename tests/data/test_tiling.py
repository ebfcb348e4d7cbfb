"""``detlab convert --tile``: a tiled copy of a data set that any method trains on."""

import numpy as np
import pytest

from detlab.cli import main
from detlab.data.synthetic import make_synthetic
from detlab.data.voc import read_voc
from detlab.tiles import tile_windows


@pytest.fixture(scope="module")
def small_voc(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("small") / "set", 4, seed=0, image_size=300, small=True)


def test_every_tile_written_with_its_boxes_clipped_and_every_small_object_whole_somewhere(
    small_voc, tmp_path, capsys
):
    out = tmp_path / "tiles"
    code = main(
        [
            "convert",
            f"voc:{small_voc}",
            f"voc:{out}",
            "--split",
            "train",
            "--tile",
            "128",
            "--overlap",
            "0.25",
        ]
    )
    assert code == 0 and "slivers dropped" in capsys.readouterr().out
    source, tiles = read_voc(small_voc, "train"), read_voc(out, "train")
    per_image = len(tile_windows(300, 300, 128, 0.25))
    assert len(tiles) == per_image * len(source) and tiles.classes == source.classes
    for record in source.records:
        parts = [tile for tile in tiles.records if tile.image_id.startswith(f"{record.image_id}_x")]
        assert len(parts) == per_image
        for box, label in zip(record.boxes.tolist(), record.labels.tolist()):
            whole = False
            for tile in parts:
                assert tile.width == tile.height == 128
                x, y = (int(part[1:]) for part in tile.image_id.split("_")[-2:])
                shifted = np.array(box) - [x, y, x, y]
                matches = (np.abs(tile.boxes.numpy() - shifted).max(1) < 1e-3) & (
                    tile.labels.numpy() == label
                )
                whole |= bool(matches.any())
            if max(box[2] - box[0], box[3] - box[1]) <= 32:  # the overlap: 32 px
                assert whole, (record.image_id, box)
    for tile in tiles.records:
        boxes = tile.boxes.numpy()
        assert (boxes >= 0).all() and (boxes <= 128).all() and ((boxes[:, 2:] - boxes[:, :2]) >= 2).all()


def test_tiles_are_a_voc_folder_only(small_voc, tmp_path, capsys):
    assert main(["convert", f"voc:{small_voc}", f"coco:{tmp_path / 'x.json'}", "--tile", "128"]) == 2
    assert "--tile writes a VOC folder" in capsys.readouterr().err
    assert main(["convert", f"voc:{small_voc}", f"voc:{tmp_path / 'y'}", "--tile", "8"]) == 2
