"""``detlab eval`` end to end, and bad results files."""

import json
from pathlib import Path

import numpy as np
import pytest

from detlab.cli import main
from detlab.data.errors import BadInputError
from detlab.eval.evaluate import evaluate_detections

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def small_coco(tmp_path: Path) -> tuple[Path, list[dict]]:
    ground_truth = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [50, 50, 30, 20], "area": 600, "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog house"}],
    }
    results = [
        {"image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "score": 0.9},
        {"image_id": 2, "category_id": 9, "bbox": [0, 0, 10, 10], "score": 0.8},
    ]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(ground_truth))
    return path, results


def write(tmp_path: Path, content, name: str = "results.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_cli_on_coco_json_writes_table_json_and_plots(tmp_path, capsys):
    gt_path, results = small_coco(tmp_path)
    results_path = write(tmp_path, results)
    code = main(
        [
            "eval",
            "--gt",
            str(gt_path),
            "--pred",
            str(results_path),
            "--protocol",
            "voc",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "dog house" in printed and "mAP@0.5 0.5000" in printed  # cat found (AP 1), dog missed (AP 0)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [row["AP"] for row in report["per_class"]] == [1.0, 0.0]
    assert (tmp_path / "out" / "pr_curves" / "dog_house.png").read_bytes()[:4] == b"\x89PNG"
    assert "| cat |" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"image_id": 1}, "must be a JSON list"),
        ("[{", "not valid JSON"),
        (
            [{"image_id": 5, "category_id": 7, "bbox": [0, 0, 1, 1], "score": 0.5}],
            r"results\[0\]: unknown image_id 5",
        ),
        (
            [
                {"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1], "score": 0.5},
                {"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5},
            ],
            r"results\[1\]: unknown category_id 3",
        ),
        (
            [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1], "score": float("nan")}],
            r"results\[0\]: score",
        ),
        (
            [{"image_id": 1, "category_id": 7, "bbox": [0, float("inf"), 1, 1], "score": 0.5}],
            r"results\[0\]: bbox",
        ),
        (
            [{"image_id": 1, "category_id": 7, "bbox": [0, 0, -3, 1], "score": 0.5}],
            r"results\[0\]: negative width",
        ),
        (
            [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 1], "score": 0.5}],
            r"results\[0\]: bbox must be 4",
        ),
        ([{"image_id": 1, "category_id": 7, "score": 0.5}], r"results\[0\] has no 'bbox'"),
        ([[1, 7, 0, 0, 1, 1, 0.5]], r"results\[0\] is list"),
    ],
)
def test_bad_results_files_name_the_file_and_entry(tmp_path, content, message):
    gt_path, _ = small_coco(tmp_path)
    # json.dumps writes NaN / Infinity, which Python's json reads back, as other tools' files may contain
    results_path = write(tmp_path, content)
    with pytest.raises(BadInputError, match=message) as error:
        evaluate_detections(gt_path, results_path)
    assert str(results_path) in str(error.value)
    code = main(["eval", "--gt", str(gt_path), "--pred", str(results_path)])
    assert code == 2  # the CLI prints one line instead of a traceback


def test_empty_results_warn_and_score_zero(tmp_path, capsys):
    gt_path, _ = small_coco(tmp_path)
    results_path = write(tmp_path, [])
    with pytest.warns(UserWarning, match="no detections"):
        report, _ = evaluate_detections(gt_path, results_path, protocol="coco")
    assert report["metrics"]["AP"] == 0.0 and report["metrics"]["AR100"] == 0.0
    assert main(["eval", "--gt", str(gt_path), "--pred", str(results_path)]) == 0
    assert "warning" in capsys.readouterr().out


def test_missing_files_are_clear(tmp_path):
    gt_path, _ = small_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        evaluate_detections(gt_path, tmp_path / "missing.json")


@pytest.mark.skipif(not (SHARED_DATA / "bccd").is_dir(), reason="../shared/data/bccd not present")
def test_cli_on_bccd_voc_folder_with_string_and_integer_ids(tmp_path, capsys):
    from detlab.data.coco import to_coco_dict
    from detlab.data.voc import read_voc

    dataset = read_voc(SHARED_DATA / "bccd", split="test")
    ground_truth = to_coco_dict(dataset)
    rng = np.random.default_rng(1)
    by_string, by_integer = [], []
    stems = {image["id"]: image["detlab_image_id"] for image in ground_truth["images"]}
    for annotation in ground_truth["annotations"]:
        if rng.random() < 0.2:
            continue  # a miss
        x, y, w, h = annotation["bbox"]
        jitter = rng.normal(0, 0.05, 4) * [w, h, w, h]
        entry = {
            "category_id": annotation["category_id"],
            "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
            "score": float(rng.uniform(0.2, 1.0)),
        }
        by_string.append({"image_id": stems[annotation["image_id"]], **entry})
        by_integer.append({"image_id": annotation["image_id"], **entry})
    string_path, integer_path = write(tmp_path, by_string, "a.json"), write(tmp_path, by_integer, "b.json")
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--gt",
            str(SHARED_DATA / "bccd"),
            "--split",
            "test",
            "--pred",
            str(string_path),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "RBC" in printed and "AP50" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == len(dataset) and report["num_detections"] == len(by_string)
    # about 80 % of the cells found with small jitter: AP50 high but below 1
    assert 0.6 < report["metrics"]["AP50"] < 0.95
    for name in dataset.classes:
        assert (out / "pr_curves" / f"{name}.png").is_file()
    same, _ = evaluate_detections(SHARED_DATA / "bccd", integer_path, split="test")
    assert same["metrics"] == report["metrics"]
    voc07, _ = evaluate_detections(SHARED_DATA / "bccd", string_path, protocol="voc07", split="test")
    assert 0.6 < voc07["metrics"]["mAP@0.5"] < 0.95


def test_to_coco_results_round_trip_scores_perfect_detections(tmp_path):
    import torch

    from detlab.data.schema import DetectionDataset, Record
    from detlab.eval.evaluate import to_coco_results

    records = [
        Record("b", tmp_path / "b.jpg", 50, 50, torch.tensor([[1.0, 2, 20, 30]]), torch.tensor([2])),
        Record(
            "a",
            tmp_path / "a.jpg",
            50,
            50,
            torch.tensor([[5.0, 5, 15, 15], [20.0, 20, 40, 45]]),
            torch.tensor([1, 2]),
        ),
    ]
    dataset = DetectionDataset(records, ["x", "y"])
    predictions = [
        {
            "boxes": record.boxes,
            "scores": torch.linspace(0.9, 0.5, len(record.boxes)),
            "labels": record.labels,
        }
        for record in records
    ]
    for use_record_ids in (True, False):
        results = to_coco_results(predictions, dataset, use_record_ids=use_record_ids)
        assert len(results) == 3 and results[0]["bbox"] == pytest.approx([1.0, 2.0, 19.0, 28.0])
        report, _ = evaluate_detections(dataset, results, protocol="coco")
        assert report["metrics"]["AP"] == pytest.approx(1.0)
    # detector outputs can also be passed directly
    report, _ = evaluate_detections(dataset, predictions, protocol="voc")
    assert report["metrics"]["mAP@0.5"] == pytest.approx(1.0)


def test_scoring_files_imports_no_torch(tmp_path, run_without_torch):
    """``detlab eval --gt FILE.json --pred FILE.json`` and ``detlab.eval.evaluate_coco_files`` run
    with torch made unimportable, and load none of it (plots included)."""
    gt_path, results = small_coco(tmp_path)
    results_path = write(tmp_path, results)
    last_line = run_without_torch(f"""
from detlab.cli import main
from detlab.eval import evaluate_coco_files
code = main(["eval", "--gt", {str(gt_path)!r}, "--pred", {str(results_path)!r}, "--out", {str(tmp_path / "out")!r}])
result = evaluate_coco_files({str(gt_path)!r}, {str(results_path)!r})
print("RESULT", code, round(result.stats[1], 4), TORCH_MODULES)
""")
    assert last_line == "RESULT 0 0.5 []"  # AP50: the cat found, the dog missed
    assert (tmp_path / "out" / "report.json").is_file()


def small_voc(root: Path) -> list[dict]:
    """A three-image VOC folder (one box difficult, one zero-size box that the reader drops with a
    warning) and a results list for it with string ids."""
    from PIL import Image

    objects = {
        "img_a": [("cat", (10, 10, 50, 60), 0), ("dog", (60, 20, 90, 80), 0)],
        "img_b": [("cat", (5, 5, 40, 40), 1), ("cat", (30, 30, 30, 70), 0)],  # difficult; zero width
        "img_c": [("dog", (20, 20, 70, 70), 0)],
    }
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for stem, boxes in objects.items():
        Image.new("RGB", (100, 90), "gray").save(root / "JPEGImages" / f"{stem}.jpg")
        parts = "".join(
            f"<object><name>{name}</name><difficult>{hard}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for name, (x1, y1, x2, y2), hard in boxes
        )
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>100</width><height>90</height>"
            f"<depth>3</depth></size>{parts}</annotation>"
        )
    (root / "ImageSets" / "Main" / "test.txt").write_text("img_a\nimg_b\nimg_c\n")
    return [
        {"image_id": "img_a", "category_id": 1, "bbox": [11, 10, 40, 50], "score": 0.9},
        {"image_id": "img_a", "category_id": 2, "bbox": [0, 0, 20, 20], "score": 0.8},  # a false positive
        {"image_id": "img_b", "category_id": 1, "bbox": [5, 5, 35, 35], "score": 0.7},  # the difficult cat
        {"image_id": "img_c", "category_id": 2, "bbox": [22, 20, 48, 50], "score": 0.6},
    ]


@pytest.mark.filterwarnings("ignore:.*zero-size box")
def test_scoring_against_a_voc_folder_imports_no_torch(tmp_path, run_without_torch):
    """A VOC folder as ground truth is read as annotations only: no torch, the same numbers as
    scoring against the data layer's DetectionDataset of the same folder."""
    from detlab.data.voc import read_voc

    root = tmp_path / "voc"
    results_path = write(tmp_path, small_voc(root))
    expected = {
        protocol: evaluate_detections(read_voc(root, "test"), results_path, protocol=protocol)[0]["metrics"]
        for protocol in ("voc07", "coco")
    }
    assert 0 < expected["voc07"]["mAP@0.5"] < 1 and expected["coco"]["AP"] > 0
    last_line = run_without_torch(f"""
import json, warnings
warnings.simplefilter("ignore")
from detlab.cli import main
from detlab.eval import evaluate_detections
code = main(["eval", "--gt", {str(root)!r}, "--split", "test", "--pred", {str(results_path)!r},
             "--protocol", "voc07", "--out", {str(tmp_path / "out")!r}, "--no-plots"])
coco, _ = evaluate_detections("voc:" + {str(root)!r}, {str(results_path)!r}, protocol="coco", split="test")
voc07 = json.loads(open({str(tmp_path / "out" / "report.json")!r}).read())["metrics"]
print(json.dumps([code, voc07, coco["metrics"], TORCH_MODULES]))
""")
    code, voc07, coco, torch_modules = json.loads(last_line)
    assert code == 0 and torch_modules == []
    assert voc07 == pytest.approx(expected["voc07"]) and coco == pytest.approx(expected["coco"])
