"""The numpy box operations agree with the tensor ones (and torchvision's) they stand in for."""

import numpy as np
import torch
import torchvision

from detlab import box_arrays, boxes


def random_boxes(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=generator) * 100
    return torch.cat([corners, corners + 5 + torch.rand(count, 2, generator=generator) * 30], 1).double()


def test_iou_equals_the_tensor_iou_including_empty_and_inverted_boxes():
    first, second = random_boxes(40, 0), random_boxes(30, 1)
    first[0] = torch.tensor([10.0, 10.0, 10.0, 10.0])  # empty
    first[1] = torch.tensor([50.0, 50.0, 40.0, 60.0])  # inverted
    found = box_arrays.iou(first.numpy(), second.numpy())
    assert found.shape == (40, 30)
    np.testing.assert_allclose(found, boxes.iou(first, second).numpy(), atol=1e-12)
    assert (found[:2] == 0).all()
    assert box_arrays.iou(np.zeros((0, 4)), second.numpy()).shape == (0, 30)


def test_xywh_iou_pairs_rows_and_broadcasts_to_a_matrix():
    first, second = box_arrays.xyxy_to_xywh(random_boxes(20, 2)), box_arrays.xyxy_to_xywh(random_boxes(20, 3))
    rows = box_arrays.xywh_iou(first, second)
    matrix = box_arrays.xywh_iou(first[:, None], second[None])
    np.testing.assert_array_equal(rows, np.diagonal(matrix))
    crowd = np.ones(20, bool)
    inside = box_arrays.xywh_iou(first, second, crowd)
    shared = rows * (first[:, 2] * first[:, 3] + second[:, 2] * second[:, 3]) / (1 + rows)
    np.testing.assert_allclose(inside, shared / (first[:, 2] * first[:, 3]), atol=1e-12)


def test_class_wise_nms_keeps_what_torchvision_keeps():
    generator = torch.Generator().manual_seed(1)
    found_boxes = random_boxes(300, 4).float()
    scores, labels = torch.rand(300, generator=generator), torch.randint(1, 4, (300,), generator=generator)
    expected = torchvision.ops.batched_nms(found_boxes, scores, labels, 0.5)
    found = box_arrays.class_wise_nms(found_boxes.numpy(), scores.numpy(), labels.numpy(), 0.5)
    assert found.tolist() == expected.tolist()
    assert 0 < len(found) < 300
    assert (
        box_arrays.nms(found_boxes.numpy(), scores.numpy(), 0.5).tolist()
        == torchvision.ops.nms(found_boxes, scores, 0.5).tolist()
    )


def test_clip_equals_the_tensor_clip_and_xywh_is_its_corner_and_size():
    found_boxes = random_boxes(50, 5) - 20
    np.testing.assert_array_equal(
        box_arrays.clip(found_boxes.numpy(), (60, 80)), boxes.clip(found_boxes, (60, 80)).numpy()
    )
    xywh = box_arrays.xyxy_to_xywh(found_boxes)
    np.testing.assert_allclose(xywh, boxes.convert(found_boxes, "xyxy", "xywh").numpy())
