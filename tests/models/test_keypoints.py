import pytest
import torch

from detlab.data.keypoint_synthetic import JOINTS, render_figure
from detlab.data.loading import load_dataset
from detlab.engine.recipes import RunData, recipe_of, train_stages
from detlab.engine.run import resolve_run_config
from detlab.models.keypoints import (
    KeypointConfig,
    build_keypoints,
    crop_around,
    first_pose,
    masked_l2,
    pose_size,
)


def test_synthetic_pose_set_is_coco_keypoints_and_matches_the_renderer(tmp_path):
    dataset = load_dataset("synthetic-pose", "test", root=tmp_path / "pose", num_synthetic=20, seed=3)
    assert len(dataset) == 3 and dataset.keypoint_names == list(JOINTS)  # 15% of 20
    image, target = dataset[0]
    index = int(target["image_id"]) - 1  # COCO ids are 1-based
    rendered, joints = render_figure(3, index, 96)
    assert target["keypoints"].shape == (1, len(JOINTS), 2)
    torch.testing.assert_close(target["keypoints"][0], torch.from_numpy(joints).float())
    torch.testing.assert_close(
        image, torch.from_numpy(__import__("numpy").asarray(rendered).copy()).permute(2, 0, 1).float() / 255
    )
    x, y = target["keypoints"][0, 0].round().long().tolist()
    assert (image[:, y, x] * 255).round().tolist() == [40, 200, 80]  # the head joint is in the head colour


def test_pose_size_and_masked_loss_ignore_unlabelled_joints():
    truth = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [10.0, 20.0], [float("nan"), float("nan")]]])
    assert pose_size(truth).item() == 20
    predicted = truth.nan_to_num() + torch.tensor([[[0.0, 1.0], [3.0, 4.0], [0.0, 2.0], [100.0, 100.0]]])
    assert masked_l2(predicted, truth).item() == pytest.approx((1 + 25 + 4) / 3)


def test_crop_around_takes_the_right_pixels_from_images_of_any_size():
    image = torch.arange(100, dtype=torch.float32).view(1, 10, 10).expand(3, 10, 10).contiguous()
    other = torch.zeros(3, 7, 12)
    boxes = torch.tensor([[2.0, 4.0, 6.0, 8.0], [0.0, 0.0, 4.0, 4.0]])
    crops = crop_around([image, other], torch.tensor([0, 1]), boxes, 4)
    # A 4x4 box sampled to 4x4 reads the pixel centres: rows 4..7, columns 2..5.
    assert torch.allclose(crops[0, 0], image[0, 4:8, 2:6], atol=1e-4) and crops[1].abs().max() == 0
    same = crop_around([image, image], torch.tensor([0, 1]), boxes, 4)  # one roi_align call
    torch.testing.assert_close(same[0], crops[0])


def test_cascade_outputs_per_image_and_refinement_moves_joints():
    torch.manual_seed(0)
    model = build_keypoints(KeypointConfig(hidden_dim=16, stages=1), 1).eval()
    with torch.no_grad():
        outputs = model([torch.rand(3, 96, 96), torch.rand(3, 80, 120)])
    assert len(outputs) == 2
    for output in outputs:
        assert output["keypoints"].shape == (1, 7, 2) and output["keypoints_per_stage"].shape == (2, 1, 7, 2)
        torch.testing.assert_close(output["keypoints_per_stage"][-1], output["keypoints"])
        assert not torch.allclose(output["keypoints_per_stage"][0], output["keypoints_per_stage"][1])
        assert output["boxes"].shape == (1, 4) and output["labels"].tolist() == [1]


def test_first_pose_names_a_joint_count_mismatch():
    with pytest.raises(ValueError, match="num_joints"):
        first_pose([{"keypoints": torch.zeros(1, 5, 2), "image_id": 7}], 7)
    assert torch.isnan(first_pose([{"keypoints": torch.zeros(0, 7, 2)}], 7)).all()


def test_cascade_recipe_measures_errors_then_trains_each_stage_on_its_own(tmp_path):
    run_config = resolve_run_config(
        "keypoints",
        data={"root": str(tmp_path / "pose"), "synthetic_images": 40},
        train={
            "out_dir": str(tmp_path / "run"),
            "max_steps": 60,
            "batch_size": 8,
            "lr": 2e-3,
            "warmup_steps": 0,
            "log_every": 1,
            "schedule": "constant",
            "device": "cpu",
        },
        model={"hidden_dim": 32, "dropout": 0.0},
    )
    torch.manual_seed(0)
    model = build_keypoints(run_config.model, 1)
    stages = recipe_of(model, "")
    assert [stage.name for stage in stages] == ["stage1", "stage2_errors", "stage2"]
    data = load_dataset("synthetic-pose", "trainval", root=tmp_path / "pose", num_synthetic=40)
    result = train_stages(model, stages, run_config, RunData(data, None, data.classes))
    from detlab.engine.checkpoint import load_checkpoint
    from detlab.engine.metrics_log import read_metrics

    after_stage1 = load_checkpoint(tmp_path / "run" / "stage1" / "last.pt")["model"]
    final = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert result.status == "finished" and result.state.step == 30
    # the error statistics step filled the buffers; stage 2 trained the refiner alone
    assert not torch.equal(final["error_std"], torch.ones_like(final["error_std"]))
    changed = {name.split(".")[0] for name in final if not torch.equal(final[name], after_stage1[name])}
    assert changed == {"refiners", "error_mean", "error_std"}
    for folder, name in ((tmp_path / "run" / "stage1", "loss_joints"), (tmp_path / "run", "loss_refine")):
        losses = [r[name] for r in read_metrics(folder) if r["kind"] == "train"]
        assert sum(losses[-5:]) < sum(losses[:5]), folder
