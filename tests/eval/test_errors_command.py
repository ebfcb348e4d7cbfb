"""``detlab eval --errors``: TIDE's breakdown of a results file or a checkpoint, printed and written."""

import json

import pytest

from detlab.cli import main
from detlab.data.loading import load_dataset
from detlab.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def voc_set(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("errors") / "shapes", num_images=60, seed=2)


def planted_results(voc_set) -> tuple[list[dict], dict]:
    """The test split's ground truth as COCO results with one mistake of four kinds planted, each
    scoring above every correct box (so fixing it must raise its class's AP); ``{kind: how many}``."""
    dataset = load_dataset(f"voc:{voc_set}", "test")
    results, planted = [], {"localization": 0, "classification": 0, "missed": 0, "background": 0}
    top_scores = {"localization": 0.99, "classification": 0.98}
    for index, record in enumerate(dataset.records):
        for box, label in zip(record.boxes.tolist(), record.labels.tolist()):
            x1, y1, x2, y2 = box
            entry = {"image_id": record.image_id, "category_id": label, "score": 0.9 - 0.001 * len(results)}
            kind = ("localization", "classification", "missed", None)[index % 4]
            if kind == "localization" and planted[kind] == 0 and x2 - x1 > 8:
                x1, x2 = x1 + 0.45 * (x2 - x1), x2 + 0.45 * (x2 - x1)  # IoU ~0.38: between 0.1 and 0.5
            elif kind == "classification" and planted[kind] == 0:
                entry["category_id"] = label % len(dataset.classes) + 1
            elif kind == "missed" and planted[kind] == 0:
                planted[kind] += 1
                continue
            else:
                kind = None
            if kind:
                planted[kind] += 1
                entry["score"] = top_scores[kind]
            results.append({**entry, "bbox": [x1, y1, x2 - x1, y2 - y1]})
    first = dataset.records[0]
    results.append(
        {"image_id": first.image_id, "category_id": 1, "score": 0.97, "bbox": [0.0, 0.0, 1.5, 1.5]}
    )
    planted["background"] = 1
    return results, planted


def test_errors_report_finds_each_planted_mistake(tmp_path, voc_set, capsys):
    results, planted = planted_results(voc_set)
    assert all(count == 1 for count in planted.values())
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "report"
    code = main(
        [
            "eval",
            "--gt",
            str(voc_set),
            "--pred",
            str(tmp_path / "results.json"),
            "--errors",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "errors (TIDE dAP" in printed and "best mean F1" in printed
    report = json.loads((out / "errors.json").read_text())
    for kind, count in planted.items():
        assert report["counts"][kind] == count, kind
        assert report["dap"][kind] > 0, kind
    for kind in ("both", "duplicate"):
        assert report["counts"][kind] == 0 and report["dap"][kind] == 0
    # the ground truth is a data set, so each kind of mistake has its gallery
    for kind in planted:
        assert (out / f"gallery_{kind}.jpg").is_file(), kind
    assert (out / "errors.md").read_text().startswith("# Error analysis (TIDE)")
    assert (out / "report.json").is_file()  # the ordinary report beside it


def test_errors_without_out_only_prints_and_other_settings_change_the_types(tmp_path, voc_set, capsys):
    results, _ = planted_results(voc_set)
    (tmp_path / "results.json").write_text(json.dumps(results))
    command = ["eval", "--gt", str(voc_set), "--pred", str(tmp_path / "results.json"), "--errors"]
    assert main([*command, "--protocol", "voc"]) == 0
    printed = capsys.readouterr().out
    assert "Loc " in printed and list(tmp_path.iterdir()) == [tmp_path / "results.json"]
    # with a background threshold above the shifted box's IoU, its mistake is no localization error
    assert main([*command, "--background-iou", "0.45"]) == 0
    loose = capsys.readouterr().out
    assert "Loc 0.000" in loose and "Loc 0.000" not in printed


def test_errors_refused_for_a_bad_threshold(tmp_path, voc_set, capsys):
    results, _ = planted_results(voc_set)
    (tmp_path / "results.json").write_text(json.dumps(results))
    command = ["eval", "--gt", str(voc_set), "--pred", str(tmp_path / "results.json"), "--errors"]
    assert main([*command, "--background-iou", "0.7"]) == 2
    assert "background" in capsys.readouterr().err
