import hashlib

import numpy as np
import torch

from detlab.cli import main as cli_main
from detlab.data.synthetic import CLASSES, make_synthetic, render_image
from detlab.data.voc import read_voc


def test_deterministic_for_a_seed_and_different_across_seeds():
    first, objects_first = render_image(seed=5, index=3)
    again, objects_again = render_image(seed=5, index=3)
    other, _ = render_image(seed=6, index=3)
    assert np.array_equal(np.asarray(first), np.asarray(again)) and objects_first == objects_again
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_written_set_is_identical_for_a_seed(tmp_path):
    def digest(root):
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()

    assert digest(make_synthetic(tmp_path / "a", 12, seed=1)) == digest(
        make_synthetic(tmp_path / "b", 12, seed=1)
    )


def test_content_matches_the_specification():
    counts, sides, names = [], [], set()
    for index in range(120):
        image, objects = render_image(seed=0, index=index, size=256)
        counts.append(len(objects))
        for obj in objects:
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256
            sides.append(max(x2 - x1, y2 - y1) / 256)
            names.add(obj["name"])
    assert names == set(CLASSES)
    assert min(counts) == 0 and max(counts) >= 7 and 2.5 < np.mean(counts) < 5.5
    assert min(sides) < 0.1 and max(sides) > 0.5


def test_single_variant_and_splits(tmp_path):
    root = make_synthetic(tmp_path / "single", 20, seed=0, single=True)
    dataset = read_voc(root)
    assert all(len(r.boxes) == 1 for r in dataset.records)
    sizes = {s: len(read_voc(root, s)) for s in ("train", "val", "test", "trainval")}
    assert sizes == {"train": 14, "val": 3, "test": 3, "trainval": 17}
    assert dataset.classes == list(CLASSES)


def test_synth_command(tmp_path, capsys):
    assert cli_main(["data", "synth", "--out", str(tmp_path / "s"), "--images", "10", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "| images" in out and "wrote 10 images" in out
    image, target = read_voc(tmp_path / "s")[0]
    assert image.shape == (3, 256, 256) and target["boxes"].dtype == torch.float32


def test_the_small_object_set_has_many_small_shapes_and_a_few_large_ones():
    from detlab.data.synthetic import LARGE_SIDES, SMALL_SIDES, render_small_image

    sides, counts = [], []
    for index in range(3):
        image, objects = render_small_image(seed=0, index=index, size=512)
        assert image.size == (512, 512)
        counts.append(len(objects))
        boxes = np.array([obj["box"] for obj in objects])
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 512).all()
        for a in range(len(boxes)):  # none overlaps another
            for b in range(a + 1, len(boxes)):
                assert min(boxes[a, 2], boxes[b, 2]) <= max(boxes[a, 0], boxes[b, 0]) or min(
                    boxes[a, 3], boxes[b, 3]
                ) <= max(boxes[a, 1], boxes[b, 1])
        sides += (boxes[:, 2:] - boxes[:, :2]).max(1).tolist()
    sides = np.array(sides)
    assert min(counts) >= 15 and (sides <= SMALL_SIDES[1] + 1).mean() > 0.9
    assert sides.min() >= 4 and sides.max() <= LARGE_SIDES[1] + 1
    again, objects = render_small_image(seed=0, index=0, size=512)
    assert objects == render_small_image(seed=0, index=0, size=512)[1]


def test_the_small_spec_is_generated_apart_from_the_shared_set(tmp_path, monkeypatch):
    from detlab.data.loading import load_dataset

    monkeypatch.chdir(tmp_path)
    shared = make_synthetic(tmp_path / "data" / "synthetic", 4, seed=0)
    before = sorted(path.name for path in (shared / "JPEGImages").iterdir())
    dataset = load_dataset("synthetic-small", "train", root="data/synthetic", num_synthetic=3)
    assert (
        len(dataset) == 2 and dataset.classes == list(CLASSES) and dataset.name == "synthetic-small [train]"
    )
    image, target = dataset[0]
    assert image.shape == (3, 1024, 1024) and len(target["boxes"]) >= 15
    assert (tmp_path / "data" / "synthetic-small" / "JPEGImages").is_dir()
    assert sorted(path.name for path in (shared / "JPEGImages").iterdir()) == before
