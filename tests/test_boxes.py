import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from detlab import boxes as B

coordinate = st.floats(min_value=0, max_value=500, allow_nan=False, width=32)


@st.composite
def box_tensors(draw, min_boxes=1, max_boxes=8):
    count = draw(st.integers(min_boxes, max_boxes))
    rows = []
    for _ in range(count):
        x, y = draw(coordinate), draw(coordinate)
        w = draw(st.floats(min_value=0.5, max_value=300, width=32))
        h = draw(st.floats(min_value=0.5, max_value=300, width=32))
        rows.append([x, y, x + w, y + h])
    return torch.tensor(rows, dtype=torch.float32)


@settings(max_examples=60, deadline=None)
@given(box_tensors(), box_tensors())
def test_iou_symmetric_bounded_and_matches_torchvision(a, b):
    forward, backward = B.iou(a, b), B.iou(b, a)
    torch.testing.assert_close(forward, backward.T)
    assert (forward >= 0).all() and (forward <= 1 + 1e-6).all()
    torch.testing.assert_close(forward, box_iou(a, b), atol=1e-5, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(box_tensors())
def test_iou_with_itself_is_one(a):
    torch.testing.assert_close(B.iou(a, a).diagonal(), torch.ones(len(a)), atol=1e-5, rtol=0)


@settings(max_examples=60, deadline=None)
@given(box_tensors(), box_tensors(), st.tuples(*[st.floats(0.5, 10)] * 4))
def test_encode_then_decode_returns_the_box(reference, target, weights):
    count = min(len(reference), len(target))
    reference, target = reference[:count].double(), target[:count].double()
    coder = B.BoxCoder(weights=weights, scale_clamp=math.inf)  # the clamp is tested on its own below
    decoded = coder.decode(coder.encode(reference, target), reference)
    torch.testing.assert_close(decoded, target, atol=1e-3, rtol=1e-5)


def test_format_round_trips_and_hand_values():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    assert B.convert(xyxy, "xyxy", "xywh").tolist() == [[10, 20, 40, 60]]
    assert B.convert(xyxy, "xyxy", "cxcywh").tolist() == [[30, 50, 40, 60]]
    for fmt in ("xywh", "cxcywh"):
        torch.testing.assert_close(B.convert(B.convert(xyxy, "xyxy", fmt), fmt, "xyxy"), xyxy)
    with pytest.raises(ValueError, match="unknown box format"):
        B.convert(xyxy, "xyxy", "yxyx")


def test_area_iou_hand_computed_and_zero_area_pairs():
    a = torch.tensor([[0.0, 0, 10, 10], [5, 5, 5, 5]])
    b = torch.tensor([[5.0, 5, 15, 15], [5, 5, 5, 5]])
    assert B.area(a).tolist() == [100, 0]
    overlaps = B.iou(a, b)
    assert overlaps[0, 0].item() == pytest.approx(25 / 175)
    assert overlaps[1, 1].item() == 0.0  # two points: no NaN
    assert not overlaps.isnan().any()


def test_clip_and_remove_small():
    boxes = torch.tensor([[-5.0, -5, 20, 20], [10, 10, 300, 90], [0, 0, 2, 50]])
    clipped = B.clip(boxes, (100, 200))
    assert clipped.tolist() == [[0, 0, 20, 20], [10, 10, 200, 90], [0, 0, 2, 50]]
    assert B.remove_small(clipped, 3).tolist() == [0, 1]


def test_decode_clamps_large_size_deltas():
    coder = B.BoxCoder()
    reference = torch.tensor([[0.0, 0, 10, 10]])
    decoded = coder.decode(torch.tensor([[0.0, 0, 50, 50]]), reference)
    assert torch.isfinite(decoded).all()
    width = decoded[0, 2] - decoded[0, 0]
    assert width.item() == pytest.approx(10 * math.exp(B.DEFAULT_SCALE_CLAMP), rel=1e-4)


def test_decode_class_specific_deltas_shape():
    coder = B.BoxCoder((10, 10, 5, 5))
    reference = torch.tensor([[0.0, 0, 10, 10], [5, 5, 25, 45]])
    deltas = torch.zeros(2, 4 * 3)
    decoded = coder.decode(deltas, reference)
    assert decoded.shape == (2, 12)
    torch.testing.assert_close(decoded[:, 8:12], reference)


def test_decode_of_float16_deltas_is_the_float32_decode_of_the_same_deltas():
    """Under autocast the deltas arrive in float16; the references (anchors of an 800x1333 image)
    must not be rounded to float16 with them, nor the boxes returned in it."""
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(200, 2, generator=generator) * 1200
    reference = torch.cat([corner, corner + 16 + torch.rand(200, 2, generator=generator) * 500], 1)
    deltas = (torch.randn(200, 8, generator=generator) * 2).half()
    coder = B.BoxCoder((10, 10, 5, 5))
    decoded = coder.decode(deltas, reference)
    assert decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, coder.decode(deltas.float(), reference), rtol=0, atol=0)
    # what rounding the references to float16 costs: whole pixels at this size
    assert (coder.decode(deltas, reference.half()).float() - decoded).abs().max() > 0.1


def test_batched_nms_keeps_boxes_of_other_classes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10.5], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert B.nms(boxes, scores, 0.5).tolist() == [0]
    assert sorted(B.batched_nms(boxes, scores, torch.tensor([1, 1, 2]), 0.5).tolist()) == [0, 2]


def test_merge_boxes_weights_by_score_and_respects_classes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 2, 12, 12], [0, 0, 10, 10], [100, 100, 110, 110]])
    scores = torch.tensor([0.75, 0.25, 0.5, 0.4])
    labels = torch.tensor([1, 1, 2, 1])
    merged, merged_scores, merged_labels = B.merge_boxes(boxes, scores, labels, iou_threshold=0.3)
    assert merged_labels.tolist() == [1, 2, 1]
    # class 1 group: 0.75 * [0,0,10,10] + 0.25 * [2,2,12,12] -> [0.5, 0.5, 10.5, 10.5], score 1.0
    torch.testing.assert_close(merged[0], torch.tensor([0.5, 0.5, 10.5, 10.5]))
    assert merged_scores.tolist() == pytest.approx([1.0, 0.5, 0.4])
    empty = B.merge_boxes(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert [t.shape[0] for t in empty] == [0, 0, 0]
