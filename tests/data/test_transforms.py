import pytest
import torch

from detlab.data.transforms import build_transforms, collate


def block_image(height=60, width=80, box=(10, 20, 30, 50)):
    image = torch.zeros(3, height, width)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 1.0
    return image, {
        "boxes": torch.tensor([box], dtype=torch.float32),
        "labels": torch.tensor([2]),
        "image_id": "a",
    }


def bright_box(image):
    ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_flip_moves_boxes_exactly():
    image, target = block_image()
    transform = build_transforms(train=True, horizontal_flip=True)
    torch.manual_seed(0)
    seen_flipped = seen_plain = False
    for _ in range(20):
        out_image, out_target = transform(image, target)
        assert out_target["boxes"][0].tolist() == bright_box(out_image)
        assert out_target["labels"].tolist() == [2] and out_target["image_id"] == "a"
        flipped = out_target["boxes"][0, 0].item() == 80 - 30
        seen_flipped |= flipped
        seen_plain |= not flipped
    assert seen_flipped and seen_plain


@pytest.mark.parametrize("min_size, max_size, expected", [(120, 1000, (120, 160)), (120, 100, (75, 100))])
def test_resize_keeps_aspect_and_scales_boxes(min_size, max_size, expected):
    image, target = block_image()
    out_image, out_target = build_transforms(train=False, min_size=min_size, max_size=max_size)(image, target)
    assert tuple(out_image.shape[-2:]) == expected
    scale = expected[0] / 60
    torch.testing.assert_close(out_target["boxes"], target["boxes"] * scale)


def test_scale_jitter_photometric_and_extra_box_keys():
    image, target = block_image()
    target["proposals"] = torch.tensor([[0.0, 0, 40, 30], [10, 20, 30, 50]])
    target["keypoints"] = torch.tensor([[[10.0, 20.0], [30.0, 50.0]]])
    transform = build_transforms(train=True, scale_jitter=(30, 90, 120), max_size=1000, photometric=True)
    torch.manual_seed(1)
    sizes = set()
    for _ in range(12):
        out_image, out = transform(image, dict(target))
        scale = out_image.shape[-2] / 60
        sizes.add(out_image.shape[-2])
        # proposals and keypoints move exactly like the boxes do
        torch.testing.assert_close(out["proposals"][1], out["boxes"][0])
        box = out["boxes"][0]
        xs = sorted(out["keypoints"][0, :, 0].tolist())
        assert xs == pytest.approx(sorted([box[0].item(), box[2].item()]), abs=1e-4)
        assert (box[3] - box[1]).item() == pytest.approx(30 * scale, rel=1e-4)
    assert sizes == {30, 90, 120}


def test_collate_keeps_lists_of_different_sizes():
    batch = [block_image(60, 80), block_image(40, 50, (1, 2, 3, 4))]
    images, targets = collate(batch)
    assert [tuple(i.shape) for i in images] == [(3, 60, 80), (3, 40, 50)]
    assert len(targets) == 2 and targets[1]["boxes"].tolist() == [[1, 2, 3, 4]]


def test_vertical_flip_and_quarter_turns_move_boxes_exactly():
    image, target = block_image()
    transform = build_transforms(train=True, horizontal_flip=False, vertical_flip=True, rotate90=True)
    torch.manual_seed(0)
    shapes, tops = set(), set()
    for _ in range(30):
        out_image, out_target = transform(image, target)
        assert out_target["boxes"][0].tolist() == bright_box(out_image)
        shapes.add(tuple(out_image.shape[-2:]))
        tops.add(bright_box(out_image)[1])
    assert shapes == {(60, 80), (80, 60)}  # turned and not turned
    assert len(tops) >= 3  # plain, flipped, turned give different boxes


def test_warped_and_cached_images_are_the_same_values_and_boxes_follow(tmp_path):
    from detlab.data.loading import load_dataset

    dataset = load_dataset("synthetic", "train", root=tmp_path / "s", num_synthetic=6)
    plain = dataset.with_options(resize_to=(64, 48))
    cached = dataset.with_options(resize_to=(64, 48), cache_images=True)
    for index in range(len(dataset)):
        image, target = plain[index]
        again, again_target = cached[index]
        twice, _ = cached[index]  # from the cache now
        assert image.shape == (3, 64, 48) and torch.equal(image, again) and torch.equal(again, twice)
        torch.testing.assert_close(again_target["boxes"], target["boxes"])
        record = dataset.records[index]
        scale = torch.tensor([48 / record.width, 64 / record.height] * 2)
        torch.testing.assert_close(target["boxes"], record.boxes * scale)
    assert len(cached._decoded) == len(dataset) and not plain._decoded


def test_colour_jitter_matches_torchvisions_steps_where_nothing_clips():
    import torchvision.transforms.v2.functional as TF

    from detlab.data.transforms import jitter_colours

    torch.manual_seed(0)
    image = 0.35 + 0.3 * torch.rand(3, 24, 20)  # mid-range values: no step clips
    for brightness, contrast, saturation in ((1.1, 0.9, 1.2), (0.8, 1.25, 0.7), (1.0, 1.0, 1.0)):
        reference = TF.adjust_saturation(
            TF.adjust_contrast(TF.adjust_brightness(image, brightness), contrast), saturation
        )
        torch.testing.assert_close(
            jitter_colours(image, brightness, contrast, saturation), reference, atol=2e-5, rtol=0
        )
    # Clipped once, at the end: far out factors stay in [0, 1].
    extreme = jitter_colours(torch.rand(3, 8, 8), 1.9, 1.9, 1.9, 0.3)
    assert extreme.min() >= 0 and extreme.max() <= 1
    # One channel: brightness and contrast as torchvision's, no colour steps.
    single = 0.35 + 0.3 * torch.rand(1, 8, 8)
    reference = TF.adjust_contrast(TF.adjust_brightness(single, 1.2), 0.8)
    torch.testing.assert_close(jitter_colours(single, 1.2, 0.8, 1.5, 0.2), reference, atol=2e-5, rtol=0)
    # 8-bit images come back as 8 bits, within rounding of the float result.
    as_bytes = (image * 255).round().to(torch.uint8)
    jittered_bytes = jitter_colours(as_bytes, 1.1, 0.9, 1.2, 0.05)
    assert jittered_bytes.dtype == torch.uint8
    expected = jitter_colours(as_bytes.float() / 255, 1.1, 0.9, 1.2, 0.05)
    assert (jittered_bytes.float() / 255 - expected).abs().max() <= 0.5 / 255 + 1e-6


def test_hue_shift_follows_torchvision_hue_keeps_grays_and_boxes():
    import torchvision.transforms.v2.functional as TF

    from detlab.data.transforms import RandomColourJitter, jitter_colours

    torch.manual_seed(0)
    image = torch.rand(3, 32, 32)
    low, high = image.min(0).values, image.max(0).values
    image = (image - low) / (high - low)  # saturated colours: each pixel spans 0..1
    for hue in (0.05, -0.05, 0.1):
        shifted = jitter_colours(image, hue=hue)
        reference, opposite = TF.adjust_hue(image, hue), TF.adjust_hue(image, -hue)
        # The same direction as torchvision's HSV hue, and nearer to its result than no shift is.
        assert (shifted - reference).abs().mean() < 0.7 * (shifted - opposite).abs().mean()
        assert (shifted - reference).abs().mean() < 0.8 * (image - reference).abs().mean()
    gray = torch.rand(1, 16, 16).expand(3, 16, 16)
    torch.testing.assert_close(jitter_colours(gray, saturation=1.3, hue=0.2), gray, atol=1e-4, rtol=0)
    # As a transform: factors drawn in their ranges, boxes untouched, the same draw for the same seed.
    block, target = block_image()
    block[0] *= 0.5  # a coloured block, so the hue shows
    transform = build_transforms(train=True, horizontal_flip=False, photometric=True)
    outputs = []
    for _ in range(5):
        out_image, out_target = transform(block, target)
        torch.testing.assert_close(out_target["boxes"], target["boxes"])
        outputs.append(out_image)
    assert not torch.equal(outputs[0], outputs[1])
    jitter = RandomColourJitter(0.3, 0.2, 0.1, 0.05)
    for _ in range(20):
        params = jitter.make_params([])
        assert abs(params["brightness"] - 1) <= 0.3 and abs(params["contrast"] - 1) <= 0.2
        assert abs(params["saturation"] - 1) <= 0.1 and abs(params["hue"]) <= 0.05
    torch.manual_seed(3)
    first = transform(block, target)[0]
    torch.manual_seed(3)
    torch.testing.assert_close(transform(block, target)[0], first)
    for bad in ({"hue": 0.7}, {"brightness": 1.5}, {"saturation": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RandomColourJitter(**bad)


def test_resize_to_a_longer_side_keeps_the_aspect_and_matches_the_detectors_resize(tmp_path):
    from PIL import Image

    from detlab.data.schema import DetectionDataset, Record
    from detlab.models.transform import ImageBatcher

    image, target = block_image(height=60, width=80, box=(10, 20, 30, 50))
    path = tmp_path / "block.png"
    Image.fromarray((image.permute(1, 2, 0) * 255).byte().numpy()).save(path)
    record = Record("block", path, 80, 60, boxes=target["boxes"], labels=target["labels"])
    dataset = DetectionDataset([record], ["a", "b"])
    resized, resized_target = dataset.with_options(resize_to=40)[0]
    assert resized.shape == (3, 30, 40)
    torch.testing.assert_close(resized_target["boxes"], target["boxes"] * 0.5)
    # The same pixels the model's own batcher would make of the full-size image (up to 8 bits).
    batcher = ImageBatcher(min_size=10**6, max_size=40, mean=(0, 0, 0), std=(1, 1, 1))
    batch, sizes, _, scaled = batcher([dataset[0][0]], [dataset[0][1]])
    assert sizes == [(30, 40)]
    assert (batch[0, :, :30, :40] - resized).abs().max() <= 0.5 / 255 + 1e-6
    torch.testing.assert_close(scaled[0]["boxes"], resized_target["boxes"])
    # Already at its size, the batcher leaves the resized image as it is.
    again, _, scales, _ = batcher([resized], [resized_target])
    assert scales == [1.0] and torch.equal(again[0, :, :30, :40], resized)
