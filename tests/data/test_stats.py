from detlab.cli import main as cli_main
from detlab.data.stats import dataset_stats
from detlab.data.voc import read_voc


def test_stats_counts_and_sizes(synthetic_root):
    dataset = read_voc(synthetic_root)
    stats = dataset_stats(dataset)
    boxes = [b for r in dataset.records for b in r.boxes.tolist()]
    assert stats["images"] == 24 and stats["objects"] == len(boxes)
    assert sum(stats["objects_per_class"].values()) == len(boxes)
    small = sum(1 for x1, y1, x2, y2 in boxes if (x2 - x1) * (y2 - y1) < 32**2)
    assert stats["box_sizes"]["small"] == small
    assert sum(stats["box_sizes"].values()) == len(boxes)


def test_stats_command_on_bccd_names_the_zero_size_boxes(bccd_root, capsys, tmp_path):
    assert cli_main(["data", "stats", str(bccd_root), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "| images " in out and "| 364" in out
    assert "| classes " in out and "| 3 " in out
    assert "BloodImage_00338.xml" in out and "BloodImage_00343.xml" in out and "zero-size box" in out


def test_stats_show_box_sizes_after_the_default_resize_and_anchor_coverage(synthetic_root, capsys, tmp_path):
    import json

    assert cli_main(["data", "stats", str(synthetic_root), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert (
        "With Faster R-CNN's defaults" in out
        and "fixed anchors:" in out
        and "anchors train would use:" in out
    )
    fit = json.loads((tmp_path / "s.json").read_text())["faster_rcnn_defaults"]
    stats = dataset_stats(read_voc(synthetic_root))
    assert sum(fit["resized_box_sizes"].values()) == stats["objects"]
    percentiles = list(fit["resized_box_side_percentiles"].values())
    assert percentiles == sorted(percentiles) and percentiles[0] > 0
    assert 0 <= fit["anchors"]["best_possible_recall"] <= 1 and fit["anchors"]["boxes"] == stats["objects"]


def test_show_writes_a_grid(synthetic_root, tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    assert cli_main(["show", str(synthetic_root), "--num", "6", "--out", str(out)]) == 0
    with Image.open(out) as grid:
        assert grid.size[0] > 3 * 320 and grid.size[1] > 2 * 320
