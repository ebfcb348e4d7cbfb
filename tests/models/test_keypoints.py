import pytest
import torch

from detlab.config import TrainConfig
from detlab.data.keypoint_synthetic import JOINTS, make_keypoint_set, render_figure
from detlab.models.keypoints import (
    DeepPose,
    KeypointConfig,
    KeypointModelConfig,
    PoseRegressor,
    crop_around,
    keypoint_metrics,
    pose_size,
    train_keypoints,
)


def test_synthetic_figures_are_deterministic_and_inside_the_image():
    images, keypoints = make_keypoint_set(6, size=96, seed=3)
    assert images.shape == (6, 3, 96, 96) and images.dtype == torch.uint8
    assert keypoints.shape == (6, len(JOINTS), 2)
    assert keypoints.min() >= 0 and keypoints.max() <= 96
    again_image, again_joints = render_figure(3, 4, 96)
    assert torch.equal(torch.from_numpy(again_joints).float(), keypoints[4])
    # The head joint is drawn in the head colour.
    x, y = keypoints[4, 0].round().long().tolist()
    assert images[4, :, y, x].tolist() == [40, 200, 80]


def test_metrics_hand_computed():
    truth = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [10.0, 20.0]]])  # pose size 20
    predicted = truth + torch.tensor([[[0.0, 0.5], [3.0, 4.0], [0.0, 1.5]]])  # errors 0.5, 5, 1.5
    metrics = keypoint_metrics(predicted, truth, thresholds=(0.05, 0.1))
    assert pose_size(truth).item() == 20
    assert metrics["pck@0.05"] == pytest.approx(1 / 3)  # within 1 px
    assert metrics["pck@0.1"] == pytest.approx(2 / 3)  # within 2 px
    assert metrics["mean_error_px"] == pytest.approx(7 / 3)


def test_crop_around_takes_the_right_pixels():
    image = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10).expand(1, 3, 10, 10).contiguous()
    crops = crop_around(image, torch.tensor([0]), torch.tensor([[2.0, 4.0, 6.0, 8.0]]), 4)
    # A 4x4 box sampled to 4x4 reads the pixel centres: rows 4..7, columns 2..5.
    assert torch.allclose(crops[0, 0], image[0, 0, 4:8, 2:6], atol=1e-4)


def test_cascade_output_shapes_and_refinement_moves_joints():
    torch.manual_seed(0)
    initial = PoseRegressor(7, 96, hidden_dim=16)
    refiner = PoseRegressor(7, 96, hidden_dim=16)
    model = DeepPose(initial, [refiner], crop_factor=0.5).eval()
    with torch.no_grad():
        estimates = model(torch.rand(2, 3, 96, 96))
    assert len(estimates) == 2
    assert all(estimate.shape == (2, 7, 2) for estimate in estimates)
    assert not torch.allclose(estimates[0], estimates[1])


def test_training_lowers_both_losses(tmp_path):
    images, keypoints = make_keypoint_set(24, size=96, seed=0)
    config = KeypointConfig(
        model=KeypointModelConfig(stages=1, hidden_dim=32, dropout=0.0, refine_fraction=0.5),
        train=TrainConfig(
            out_dir=str(tmp_path),
            max_steps=40,
            batch_size=8,
            lr=2e-3,
            warmup_steps=0,
            optimizer="adamw",
            schedule="constant",
            log_every=0,
        ),
    )
    results = train_keypoints(
        config, log=lambda message: None, data=(images[:16], keypoints[:16], images[16:], keypoints[16:])
    )
    for stage in ("stage1", "stage2"):
        assert results["history"][stage]["last_loss"] < results["history"][stage]["first_loss"], stage
    assert [entry["stage"] for entry in results["stages"]] == [1, 2]
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "config.yaml").is_file()
