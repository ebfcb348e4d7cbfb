"""``detlab proposals IMAGE`` and ``detlab proposals eval`` end to end on tiny inputs."""

from __future__ import annotations

import json

import torch

from detlab.cli import main
from detlab.data.images import load_image, save_image


def test_draw_proposals_on_an_image(tmp_path, capsys):
    image = torch.zeros(3, 48, 64)
    image[:, 10:30, 20:50] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    save_image(image, tmp_path / "in.png")
    out = tmp_path / "boxes.png"
    assert (
        main(["proposals", str(tmp_path / "in.png"), "--method", "ss-fast", "--top", "20", "--out", str(out)])
        == 0
    )
    drawn = load_image(out)
    assert drawn.shape == image.shape and not torch.equal(drawn, image)  # boxes were drawn
    assert main(["proposals", str(tmp_path / "in.png"), "--method", "sliding", "--top", "3"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-3:]
    assert all(len(line.split()) == 4 for line in printed)


def test_eval_prints_recall_and_saves_plots(synthetic_root, tmp_path, capsys):
    out_dir = tmp_path / "eval"
    argv = [
        "proposals",
        "eval",
        "--data",
        str(synthetic_root),
        "--split",
        "test",
        "--methods",
        "ss-single,uniform",
    ]
    argv += ["--top", "500", "--out-dir", str(out_dir), "--cache", str(tmp_path / "cache")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "R@500 IoU0.7" in printed and "MABO" in printed and "ss-single" in printed
    results = json.loads((out_dir / "proposals.json").read_text())
    assert set(results) == {"ss-single", "uniform"}
    assert set(results["uniform"]["recall"]) == {"0.5@100", "0.5@500", "0.7@100", "0.7@500"}
    assert len(list(out_dir.glob("*.png"))) == 3
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2 * results["uniform"]["num_images"]


def test_eval_in_two_processes_equals_one_and_resumes_from_its_cache(synthetic_root, tmp_path, capsys):
    """``--workers 2`` gives the numbers of one process; killed half way (simulated by a cache
    holding some images), the next run computes only the rest."""
    from detlab.data.loading import load_dataset
    from detlab.proposals import ProposalCache, build_method
    from detlab.proposals.evaluate import evaluate_method

    dataset = load_dataset(str(synthetic_root), "train")
    assert len(dataset) > 6
    method = build_method("ss-single", max_proposals=300)
    alone = evaluate_method(method, dataset, num_proposals=(100, 300), limit=6, workers=1)
    cache = ProposalCache(tmp_path / "cache", method)
    for record in dataset.records[:2]:
        cache.get_or_compute(record.image_id, record.image_path)
    done = []
    parallel = evaluate_method(
        method,
        dataset,
        num_proposals=(100, 300),
        limit=6,
        cache=cache,
        workers=2,
        progress=lambda count, total: done.append((count, total)),
    )
    assert parallel["recall"] == alone["recall"] and parallel["mabo"] == alone["mabo"]
    assert parallel["workers"] == 2 and alone["workers"] == 1 and parallel["wall_seconds"] > 0
    assert done == [(count, 6) for count in range(1, 7)] and len(cache) == 6
    argv = ["proposals", "eval", "--data", str(synthetic_root), "--methods", "ss-single", "--limit", "6"]
    assert main([*argv, "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_misused_options_are_user_errors(tmp_path, capsys):
    assert main(["proposals", "eval", "--out", "x.png"]) == 2
    assert main(["proposals", "eval"]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert main(["proposals", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_real_greyscale_jpeg_by_path(raccoon_root):
    """raccoon-150.jpg is a mode-L JPEG: proposals come back in its own pixel frame."""
    from PIL import Image

    from detlab.proposals import propose

    path = raccoon_root / "JPEGImages" / "raccoon-150.jpg"
    with Image.open(path) as image:
        assert image.mode == "L"
        width, height = image.size
    boxes = propose(path, method="ss-single", max_proposals=300)
    assert 10 < len(boxes) <= 300
    assert [0.0, 0.0, float(width), float(height)] in boxes.tolist()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
