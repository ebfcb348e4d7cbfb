"""`detlab data audit` on planted faults in a small synthetic set (issue 42): copies of training images
in the test split (half re-encoded and resized), boxes drawn twice, swapped classes and deleted
boxes, with simulated detections standing in for a trained model; plus the parts by hand."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from detlab.box_arrays import iou as pairwise_iou
from detlab.data.auditing import AuditConfig, AuditResult, audit, run_audit
from detlab.data.box_checks import robust_z, size_and_aspect_outliers
from detlab.data.duplicates import (
    hamming_pairs,
    hash_image,
    image_hashes,
    phash,
    pixel_similarity,
    pixel_thumbnails,
)
from detlab.data.loading import load_dataset
from detlab.data.planted_faults import FaultPlan, plant_faults
from detlab.data.suspects import MISSING, SPURIOUS, SWAPPED, image_suspects
from detlab.data.synthetic import make_synthetic
from detlab.errors import BadInputError

NUM_IMAGES = 64
NUM_FAULTS = 10


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    clean = make_synthetic(root / "clean", num_images=NUM_IMAGES, seed=3)
    plan = FaultPlan(
        num_copies=10,
        num_reencoded=5,
        num_duplicate_boxes=NUM_FAULTS,
        num_swapped=NUM_FAULTS,
        num_deleted=NUM_FAULTS,
    )
    planted = plant_faults(clean, root / "faulty", seed=1, plan=plan)
    return {"root": root, "clean": clean, "faulty": root / "faulty", "planted": planted}


def simulated_predictions(sets, seed: int = 0, miss_rate: float = 0.05) -> dict:
    """A good model's detections on the faulty set: every object of the *clean* labels (copies: their
    source's, scaled), moved by up to 2 px, scored 0.6-0.99 with the true class; 5% of the objects
    without a planted fault missed (no method finds a fault on an object the model misses); two
    low-score (< 0.3) false detections an image."""
    rng = np.random.default_rng(seed)
    planted = sets["planted"]
    faulty_objects = {(entry["image_id"], tuple(entry["box"])) for entry in planted.swapped + planted.deleted}
    clean = {str(record.image_id): record for record in load_dataset(f"voc:{sets['clean']}").records}
    truth = {
        image_id: (record.boxes.numpy(), record.labels.numpy(), record.width)
        for image_id, record in clean.items()
    }
    for entry in sets["planted"].copies:
        boxes, labels, width = truth[entry["source"]]
        truth[entry["copy"]] = (boxes * entry["scale"], labels, width * entry["scale"])
    predictions = {}
    for image_id, (boxes, labels, width) in truth.items():
        kept = rng.random(len(boxes)) >= miss_rate
        kept |= np.array([(image_id, tuple(box)) in faulty_objects for box in boxes.tolist()], dtype=bool)
        noise_boxes = rng.uniform(0, width * 0.5, (2, 2))
        noise_boxes = np.concatenate([noise_boxes, noise_boxes + rng.uniform(10, 40, (2, 2))], axis=1)
        predictions[image_id] = {
            "boxes": np.concatenate([boxes[kept] + rng.uniform(-2, 2, (int(kept.sum()), 4)), noise_boxes]),
            "scores": np.concatenate([rng.uniform(0.6, 0.99, int(kept.sum())), rng.uniform(0.01, 0.3, 2)]),
            "labels": np.concatenate([labels[kept], rng.integers(1, 5, 2)]),
        }
    return predictions


@pytest.fixture(scope="module")
def audits(sets):
    clean = audit(f"voc:{sets['clean']}", progress=False)
    faulty = audit(
        f"voc:{sets['faulty']}",
        predictions=simulated_predictions(sets),
        out_dir=sets["root"] / "report",
        progress=False,
    )
    return clean, faulty


def test_every_planted_copy_is_found_and_nothing_on_the_clean_set(sets, audits):
    clean, faulty = audits
    assert set(clean.splits) == {"train", "val", "test"}  # trainval, the union of two, is left out
    assert clean.duplicates == [] and clean.shared_files == []
    assert not clean.should_fail(["leaks"])

    planted = {(entry["source"], entry["copy"]) for entry in sets["planted"].copies}
    found = {(pair.image_a, pair.image_b) for pair in faulty.duplicates}
    assert found == planted  # all 10 (5 re-encoded at q70 and resized by 0.9), nothing else
    assert all(pair.splits_a == ["train"] and pair.splits_b == ["test"] for pair in faulty.duplicates)
    assert faulty.leaked_images() == {("test", "train"): 10}
    assert faulty.summary().startswith("10 test images duplicate train images; 10 duplicate boxes")
    assert faulty.should_fail(["leaks"]) and faulty.should_fail(["boxes"])


def test_every_planted_duplicate_box_is_found(sets, audits):
    clean, faulty = audits
    assert clean.duplicate_boxes == []
    found = {(finding.image_id, tuple(finding.box)) for finding in faulty.duplicate_boxes}
    planted = {(entry["image_id"], tuple(entry["copy_box"])) for entry in sets["planted"].duplicate_boxes}
    assert found == planted
    assert all(
        finding.value > 0.9 and finding.label == finding.other_label for finding in faulty.duplicate_boxes
    )


def test_swapped_and_deleted_boxes_rank_first(sets, audits):
    _, faulty = audits
    planted = sets["planted"]
    top = faulty.suspects[: 2 * NUM_FAULTS]
    swapped = {(entry["image_id"], tuple(entry["box"])) for entry in planted.swapped}
    assert {(s.image_id, tuple(s.label_box)) for s in top if s.kind == SWAPPED} == swapped
    # A deleted box comes back as the detection the model made on it.
    missing = [s for s in top if s.kind == MISSING]
    assert len(missing) == NUM_FAULTS
    for entry in planted.deleted:
        on_it = [
            s
            for s in missing
            if s.image_id == entry["image_id"]
            and pairwise_iou(np.array([s.det_box]), np.array([entry["box"]]))[0, 0] > 0.5
        ]
        assert len(on_it) == 1, entry
    # The model's own misses (5% of the objects) come after, as weaker spurious-box suspects.
    rest = faulty.suspects[2 * NUM_FAULTS :]
    assert all(s.score <= 0.5 for s in rest) and sum(s.kind == SPURIOUS for s in rest) >= 5
    assert [s.rank for s in faulty.suspects] == list(range(1, len(faulty.suspects) + 1))


def test_report_files(sets, audits):
    _, faulty = audits
    out = sets["root"] / "report"
    for name in ("audit.md", "audit.json", "suspects.csv", "duplicates.png", "boxes.png", "suspects.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "audit.json").read_text())
    assert report["counts"] == faulty.counts() and report["summary"] == faulty.summary()
    assert report["counts"]["duplicate_pairs_across_splits"] == 10 and report["counts"]["suspects"] == len(
        faulty.suspects
    )
    with open(out / "suspects.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert (
        len(rows) == len(faulty.suspects) and rows[0]["rank"] == "1" and rows[0]["kind"] in (MISSING, SWAPPED)
    )
    assert faulty.summary() in (out / "audit.md").read_text()
    with Image.open(out / "duplicates.png") as sheet:
        assert sheet.width > 400 and sheet.height > 5 * 150  # 10 pairs, two a row


def test_run_audit_prints_the_summary_last_and_fails_on_leaks(sets, capsys):
    result, failed = run_audit(f"voc:{sets['faulty']}", sets["root"] / "cli", fail_on=["leaks"])
    assert failed and (sets["root"] / "cli" / "audit.md").is_file()
    assert capsys.readouterr().out.strip().splitlines()[-1] == result.summary()
    assert run_audit(f"voc:{sets['clean']}", sets["root"] / "cli_clean", fail_on=["leaks"])[1] is False
    with pytest.raises(ValueError, match="unknown"):
        run_audit(f"voc:{sets['clean']}", sets["root"] / "never", fail_on=["leak"])
    assert not (sets["root"] / "never").exists()  # refused before any work


def test_pixel_check_takes_small_crops_and_rejects_other_images(sets, tmp_path):
    images = sorted((sets["clean"] / "JPEGImages").glob("*.jpg"))
    original = Image.open(images[0]).convert("RGB")
    width, height = original.size
    cropped = original.crop((round(0.04 * width), round(0.02 * height), width - round(0.03 * width), height))
    buffer = io.BytesIO()
    cropped.save(buffer, "JPEG", quality=70)
    (tmp_path / "crop.jpg").write_bytes(buffer.getvalue())
    distance = bin(hash_image(images[0]) ^ hash_image(tmp_path / "crop.jpg")).count("1")
    assert distance <= AuditConfig().hash_distance
    thumbnails = [
        pixel_thumbnails(Image.open(path).convert("L"))
        for path in (images[0], tmp_path / "crop.jpg", images[1])
    ]
    assert pixel_similarity(thumbnails[0], thumbnails[1]) >= 0.9
    assert pixel_similarity(thumbnails[0], thumbnails[2]) < 0.6
    assert pixel_similarity(thumbnails[0], thumbnails[0]) == pytest.approx(1.0, abs=1e-4)


def test_hash_is_imagehash_phash_bit_for_bit(sets):
    imagehash = pytest.importorskip("imagehash")
    paths = sorted((sets["faulty"] / "JPEGImages").glob("*.jpg"))
    greys = [Image.open(path).convert("L") for path in paths]
    thumbnails = np.stack([np.asarray(grey.resize((32, 32), Image.Resampling.LANCZOS)) for grey in greys])
    theirs = np.packbits([imagehash.phash(grey).hash.ravel() for grey in greys], axis=1).view(">u8")[:, 0]
    assert phash(thumbnails).tolist() == theirs.tolist()
    assert image_hashes(paths[:3])[0].tolist() == [hash_image(path) for path in paths[:3]]


def test_hamming_pairs_by_hand():
    hashes = np.array([0b0000, 0b0001, 0b0111, 0b1111 << 60], dtype=np.uint64)
    first, second, distance = hamming_pairs(hashes, max_distance=2)
    assert list(zip(first.tolist(), second.tolist(), distance.tolist())) == [(0, 1, 1), (1, 2, 2)]
    # chunked the same as whole
    assert [a.tolist() for a in hamming_pairs(hashes, 4, chunk=1)] == [
        a.tolist() for a in hamming_pairs(hashes, 4)
    ]


def test_robust_z_and_outliers_by_hand():
    assert robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0])).tolist() == pytest.approx(
        [0.6745 * (v - 3.0) / 1.0 for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    )
    rng = np.random.default_rng(0)
    sides = rng.uniform(28, 32, 20)
    boxes = [[100, 100, 100 + s, 100 + s * rng.uniform(0.9, 1.1)] for s in sides]
    boxes.append([100, 100, 250, 250])  # five times the side: a size outlier
    boxes.append([0, 100, 6, 130])  # thin, but cut by the left border: not judged for its aspect
    boxes.append([200, 100, 206, 130])  # the same thin box inside the image: an aspect outlier
    found = size_and_aspect_outliers(
        np.array(boxes, float), np.ones(len(boxes), int), np.full((len(boxes), 2), 400.0)
    )
    flagged = {(index, kind) for index, kind, _, _ in found}
    assert (20, "size") in flagged and (22, "aspect") in flagged
    assert (21, "aspect") not in flagged and all(index >= 20 for index, _ in flagged)


def test_image_suspects_by_hand():
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [100, 100, 120, 120]], float)
    gt_labels = np.array([1, 1, 2, 1])
    det_boxes = np.array(
        [
            [0, 0, 10, 10],  # on box 0 with its class: agrees
            [20, 20, 30, 30],  # box 1 seen as class 2 at 0.8 ...
            [20, 20, 30, 31],  # ... and as its own class at 0.3 only
            [80, 80, 90, 90],  # no box there: one object, ...
            [80, 81, 90, 90],  # ... detected twice
            [100, 100, 120, 120],  # box 3 seen as itself at 0.9 ...
            [100, 100, 120, 124],  # ... and as class 2 at 0.8: a second object
        ],
        float,
    )
    det_scores = np.array([0.9, 0.8, 0.3, 0.7, 0.6, 0.9, 0.8])
    det_labels = np.array([1, 2, 1, 1, 1, 1, 2])
    found = image_suspects(gt_boxes, gt_labels, det_boxes, det_scores, det_labels)
    assert sorted((item["kind"], item["gt"], item["det"]) for item in found) == [
        (MISSING, None, 3),
        (MISSING, None, 6),  # the class-2 detection on box 3 is a second object
        (SPURIOUS, 2, None),
        (SWAPPED, 1, 1),
    ]
    scores = {(item["kind"], item["det"]): item["score"] for item in found}
    assert scores[(SWAPPED, 1)] == pytest.approx(0.8 * (1 - 0.3)) and scores[(MISSING, 3)] == pytest.approx(
        0.7
    )
    assert scores[(SPURIOUS, None)] == pytest.approx(0.5)  # nothing touches box 2
    difficult = image_suspects(
        gt_boxes, gt_labels, det_boxes, det_scores, det_labels, gt_difficult=np.array([0, 1, 1, 0])
    )
    assert sorted((item["kind"], item["det"]) for item in difficult) == [(MISSING, 3), (MISSING, 6)]


def test_bad_input_names_the_file_or_image(sets, tmp_path):
    broken = tmp_path / "broken"
    nothing = FaultPlan(num_copies=0, num_reencoded=0, num_duplicate_boxes=0, num_swapped=0, num_deleted=0)
    plant_faults(sets["clean"], broken, plan=nothing)
    victim = sorted((broken / "JPEGImages").glob("*.jpg"))[3]
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(BadInputError, match=victim.name):
        audit(f"voc:{broken}", progress=False)
    with pytest.warns(UserWarning, match=victim.name):
        result = audit(f"voc:{broken}", progress=False, on_bad="skip")
    assert len(result.unreadable) == 1 and victim.name in result.unreadable[0]

    image_id = victim.stem
    wrong = {image_id: {"boxes": np.zeros((2, 5)), "scores": np.zeros(2), "labels": np.ones(2)}}
    with pytest.raises(ValueError, match=f"image {image_id}: 'boxes' has shape"):
        audit(f"voc:{sets['clean']}", predictions=wrong, progress=False)
    with pytest.raises(ValueError, match="match none"):
        audit(f"voc:{sets['clean']}", predictions={"nope": wrong[image_id]}, progress=False)
    with pytest.raises(ValueError, match="unknown.*leaks, duplicates"):
        AuditResult("x", [], {}, 0, 0).should_fail(["leak"])


def test_a_checkpoint_audits_through_its_detections_from_the_api_and_the_command(sets, tmp_path):
    """``detlab.audit(DATA, CHECKPOINT)`` and ``detlab data audit --checkpoint``: the model's detections
    on every audited image become the suspects (an untrained detector: many confident misses)."""
    import torch

    import detlab
    from detlab import config as config_io
    from detlab.cli import main
    from detlab.engine.checkpoint import save_checkpoint
    from detlab.engine.run import build_model, resolve_run_config

    torch.manual_seed(0)
    classes = load_dataset(f"voc:{sets['faulty']}", "train").classes
    run_config = resolve_run_config("yolo", overrides=["model.input_size=128"])
    model = build_model(run_config, len(classes))
    checkpoint = tmp_path / "yolo.pt"
    save_checkpoint(
        {"config": config_io.to_dict(run_config), "classes": classes, "model": model.state_dict()}, checkpoint
    )
    result = detlab.audit(f"voc:{sets['faulty']}", checkpoint, splits=["test"], progress=False)
    assert result.suspects and {suspect.kind for suspect in result.suspects} <= {MISSING, SWAPPED, SPURIOUS}
    code = main(
        [
            "data",
            "audit",
            f"voc:{sets['faulty']}",
            "--splits",
            "test",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    with open(tmp_path / "out" / "suspects.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert code == 0 and len(rows) == len(result.suspects)
    # a model of other classes is refused before anything is matched
    save_checkpoint(
        {
            "config": config_io.to_dict(run_config),
            "classes": ["a", "b"],
            "model": build_model(run_config, 2).state_dict(),
        },
        tmp_path / "other.pt",
    )
    with pytest.raises(ValueError, match="class"):
        detlab.audit(f"voc:{sets['faulty']}", tmp_path / "other.pt", splits=["test"], progress=False)
