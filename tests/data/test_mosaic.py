import copy
import pickle

import pytest
import torch

from detlab.data.mosaic import FILL, MosaicDataset
from detlab.engine.sampling import SeededSamples

# Corners of the RGB cube: none is a mix of the others, of black or of the gray fill, so a pixel
# within 0.3 of one of them is mostly that colour.
COLOURS = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]]).float()


def colour(label: int) -> torch.Tensor:
    return COLOURS[(label - 1) % len(COLOURS)]


class Rectangles(torch.utils.data.Dataset):
    """Black images of various sizes; object ``k`` is a filled rectangle of colour ``colour(k)``."""

    def __init__(self, specs, transforms=None):
        self.records = list(specs)  # per image: (height, width, [(x1, y1, x2, y2, label), ...])
        self.classes = [f"object{k}" for k in range(1, 1 + sum(len(s[2]) for s in specs))]
        self.name = "rectangles"
        self.transforms = transforms

    @property
    def num_classes(self):
        return len(self.classes)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        height, width, objects = self.records[index]
        image = torch.zeros(3, height, width)
        for x1, y1, x2, y2, label in objects:
            image[:, y1:y2, x1:x2] = colour(label)[:, None, None]
        count = len(objects)
        target = {
            "boxes": torch.tensor([o[:4] for o in objects], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([o[4] for o in objects], dtype=torch.int64),
            "image_id": f"image{index}",
            "difficult": torch.tensor([o[4] % 2 == 0 for o in objects], dtype=torch.bool),
            "iscrowd": torch.tensor([o[4] % 3 == 0 for o in objects], dtype=torch.bool),
        }
        assert len(target["labels"]) == count
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def with_transforms(self, transforms):
        return Rectangles(self.records, transforms)

    def with_options(self, **options):
        copy = Rectangles(self.records, self.transforms)
        copy.options = options
        return copy

    def subset(self, indices):
        return Rectangles([self.records[i] for i in indices], self.transforms)


def labelled(specs):
    """``specs`` with labels 1, 2, ... given to the objects in order."""
    label, out = 0, []
    for height, width, boxes in specs:
        objects = []
        for box in boxes:
            label += 1
            objects.append((*box, label))
        out.append((height, width, objects))
    return out


# Sizes above and below the mosaic's 64, tall and wide; objects touching image edges too.
SHAPES = labelled(
    [
        (48, 80, [(4, 6, 30, 40), (40, 0, 80, 20)]),
        (100, 60, [(0, 10, 25, 45), (30, 60, 58, 97)]),
        (64, 64, [(20, 20, 44, 44)]),
        (30, 120, [(2, 2, 40, 28), (70, 10, 120, 30)]),
        (90, 90, [(5, 50, 45, 88), (55, 5, 85, 35)]),
        (40, 40, []),
    ]
)


def near(image, rgb, tolerance):
    return ((image - rgb[:, None, None]).abs() <= tolerance).all(dim=0)


@pytest.mark.parametrize("min_side, min_visible", [(0.0, 0.0), (2.0, 0.25)])
def test_boxes_follow_the_pixels(min_side, min_visible):
    dataset = MosaicDataset(Rectangles(SHAPES), size=64, min_side=min_side, min_visible=min_visible)
    rows, cols = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    seen_boxes = 0
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = dataset[seed % len(SHAPES)]
        assert target["image_id"] == f"image{seed % len(SHAPES)}"
        boxes, labels = target["boxes"], target["labels"]
        seen_boxes += len(boxes)
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
            # Inside the box (away from the blur at its edges): the object's colour.
            inside = (cols > x1 + 2) & (cols < x2 - 2) & (rows > y1 + 2) & (rows < y2 - 2)
            assert near(image, colour(label), 0.05)[inside].all(), (seed, label)
        # Tight: no pixel of a colour more than 2 pixels outside every box of that colour. (Run
        # without dropping, as a dropped sliver still shows its colour.)
        if min_side == 0 and min_visible == 0:
            for rgb in COLOURS:
                covered = torch.zeros(64, 64, dtype=torch.bool)
                for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
                    if torch.equal(colour(label), rgb):
                        covered |= (cols > x1 - 2) & (cols < x2 + 2) & (rows > y1 - 2) & (rows < y2 + 2)
                assert not (near(image, rgb, 0.3) & ~covered).any(), (seed, rgb.tolist())
    assert seen_boxes > 30


def test_the_quadrants_and_the_crop():
    """Four 64x64 images around the canvas centre at zoom 1: the output is the middle of the canvas."""
    dataset = MosaicDataset(Rectangles(labelled([(64, 64, [])] * 4)), size=64)
    samples = [
        (torch.full((3, 64, 64), value), {"boxes": torch.zeros(0, 4)}) for value in (0.1, 0.2, 0.3, 0.4)
    ]
    image, target = dataset.compose(samples, (64, 64), 1.0)
    assert [image[0, 0, 0], image[0, 0, 63], image[0, 63, 0], image[0, 63, 63]] == pytest.approx(
        [0.1, 0.2, 0.3, 0.4]
    )
    assert image[:, :32, :32].eq(image[0, 0, 0]).all() and image[:, 32:, 32:].eq(image[0, 63, 63]).all()
    # Zoomed out to the whole canvas, with the centre off the middle: the gray shows at the border.
    image, _ = dataset.compose(samples, (40, 90), 0.5)
    assert image[:, 0, 63].tolist() == pytest.approx([FILL] * 3)
    assert image[:, 30, 0].tolist() == pytest.approx([0.1] * 3)  # canvas (0, 60): the top-left image


def crop_scene(min_side=2.0, min_visible=0.25):
    """Image 0 (top left, 64x64) around the canvas centre at zoom 1: the output is canvas
    [32, 96]^2, so the image's pixel (x, y) lands at (x - 32, y - 32)."""
    objects = [
        (10, 10, 50, 50),  # -> (-22, -22, 18, 18): 324 of 1600 visible, below 1/4
        (20, 20, 60, 60),  # -> (0, 0, 28, 28) once clipped: 784 of 1600
        (33, 40, 63, 60),  # -> (1, 8, 31, 28), not cut
        (30, 40, 33.5, 44),  # -> (0, 8, 1.5, 12): 43% visible, but 1.5 pixels wide
        (0, 0, 20, 20),  # -> entirely outside
        (50, 62, 64, 66),  # sticks out of its image: cut at the image's border, -> (18, 30, 32, 32)
    ]
    target = {
        "boxes": torch.tensor(objects, dtype=torch.float32),
        "labels": torch.tensor([1, 2, 3, 4, 5, 6]),
        "image_id": 7,
        "difficult": torch.tensor([False, True, False, True, False, True]),
        "iscrowd": torch.tensor([0, 0, 1, 0, 1, 1]),
    }
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "image_id": 9,
        "difficult": torch.zeros(0, dtype=torch.bool),
        "iscrowd": torch.zeros(0, dtype=torch.int64),
    }
    samples = [(torch.zeros(3, 64, 64), target)] + [(torch.zeros(3, 64, 64), empty)] * 3
    dataset = MosaicDataset(Rectangles([]), size=64, min_side=min_side, min_visible=min_visible)
    return dataset.compose(samples, (64, 64), 1.0)[1]


def test_objects_cut_by_the_crop_are_clipped_and_slivers_dropped():
    target = crop_scene()
    assert target["boxes"].tolist() == [[0, 0, 28, 28], [1, 8, 31, 28], [18, 30, 32, 32]]
    assert target["labels"].tolist() == [2, 3, 6] and target["image_id"] == 7
    assert target["difficult"].tolist() == [True, False, True]
    assert target["iscrowd"].tolist() == [0, 1, 1] and target["iscrowd"].dtype == torch.int64

    kept = crop_scene(min_side=0.0, min_visible=0.0)  # the slivers stay; what is out of view does not
    assert kept["labels"].tolist() == [1, 2, 3, 4, 6]
    assert kept["boxes"][0].tolist() == [0, 0, 18, 18] and kept["boxes"][3].tolist() == [0, 8, 1.5, 12]
    assert crop_scene(min_side=0.0, min_visible=0.2)["labels"].tolist() == [1, 2, 3, 4, 6]
    assert crop_scene(min_side=0.0, min_visible=0.21)["labels"].tolist() == [2, 3, 4, 6]


def test_zoom_scales_boxes():
    samples = [
        (
            torch.zeros(3, 32, 64),
            {"boxes": torch.tensor([[8.0, 4.0, 24.0, 20.0]]), "labels": torch.tensor([1])},
        )
    ]
    samples += [(torch.zeros(3, 64, 64), {"boxes": torch.zeros(0, 4)})] * 3
    dataset = MosaicDataset(Rectangles([]), size=64)
    # Zoom 1/2: the whole canvas shrunk by 2; the 64x32 image's bottom-right corner at (64, 64).
    _, target = dataset.compose(samples, (64, 64), 0.5)
    assert target["boxes"].tolist() == [[4.0, 18.0, 12.0, 26.0]]
    assert target["difficult"].dtype == torch.bool and target["image_id"] is None


def test_off_after_and_probability_zero_give_the_original_sample():
    dataset = Rectangles(SHAPES)
    mosaic = MosaicDataset(dataset, size=64, off_after=0.85)
    mosaic.set_progress(0.5)
    assert mosaic[0][0].shape == (3, 64, 64)  # still on
    mosaic.set_progress(0.9)
    assert mosaic.progress == 0.9
    for wrapped in (mosaic, MosaicDataset(dataset, size=64, probability=0.0)):
        for index in range(len(dataset)):
            image, target = wrapped[index]
            original_image, original_target = dataset[index]
            assert torch.equal(image, original_image)
            assert target.keys() == original_target.keys()
            assert all(
                torch.equal(target[k], original_target[k])
                for k in ("boxes", "labels", "difficult", "iscrowd")
            )


def test_probability_mixes_mosaics_and_originals():
    mosaic = MosaicDataset(Rectangles(SHAPES), size=64, probability=0.5)
    torch.manual_seed(0)
    shapes = [tuple(mosaic[0][0].shape) for _ in range(40)]
    assert 10 < shapes.count((3, 64, 64)) < 30 and shapes.count((3, 48, 80)) == 40 - shapes.count((3, 64, 64))


def test_the_same_seed_gives_the_same_mosaic():
    mosaic = MosaicDataset(Rectangles(SHAPES), size=64)
    outputs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        outputs.append(mosaic[1])
    (a, ta), (b, tb), (c, _) = outputs
    assert (
        torch.equal(a, b)
        and torch.equal(ta["boxes"], tb["boxes"])
        and torch.equal(ta["labels"], tb["labels"])
    )
    assert not torch.equal(a, c)
    # Through the engine's per-sample seeding: a function of (seed, epoch, index) only.
    seeded = SeededSamples(mosaic, seed=1)
    first, again = seeded[2], seeded[2]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    seeded.set_epoch(1)
    assert not torch.equal(seeded[2][0], first[0])


def test_empty_images_give_well_typed_empty_targets():
    empty = MosaicDataset(Rectangles(labelled([(40, 50, []), (70, 30, [])])), size=32)
    mixed = MosaicDataset(Rectangles(labelled([(40, 50, []), (70, 30, [(5, 5, 25, 60)])])), size=32)
    for seed in range(6):
        torch.manual_seed(seed)
        image, target = empty[seed % 2]
        assert image.shape == (3, 32, 32)
        assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
        assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
        assert target["difficult"].shape == (0,) and target["difficult"].dtype == torch.bool
        assert target["iscrowd"].shape == (0,)
        _, target = mixed[0]
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1:] == (4,)
        assert target["labels"].dtype == torch.int64 and len(target["labels"]) == len(target["boxes"])


def test_output_shape_and_range():
    tiny = labelled([(5, 300, [(10, 0, 200, 5)]), (300, 7, []), (1, 1, [])])
    for shapes, size in ((SHAPES, 64), (tiny, 48)):
        mosaic = MosaicDataset(Rectangles(shapes), size=size, scale=(0.3, 2.0))
        for seed in range(8):
            torch.manual_seed(seed)
            image, target = mosaic[seed % len(shapes)]
            assert image.shape == (3, size, size) and image.dtype == torch.float32
            assert image.min() >= 0.0 and image.max() <= 1.0
            assert ((target["boxes"] >= 0) & (target["boxes"] <= size)).all()


def test_passes_the_data_set_through():
    dataset = Rectangles(SHAPES)
    mosaic = MosaicDataset(dataset, size=64, probability=0.7, scale=(0.8, 1.2), off_after=0.5, min_side=3)
    mosaic.set_progress(0.25)
    assert len(mosaic) == 6 and mosaic.classes == dataset.classes and mosaic.records is dataset.records
    assert mosaic.num_classes == 9 and mosaic.name == "rectangles"
    with pytest.raises(AttributeError):
        mosaic.no_such_attribute  # noqa: B018
    transforms = object()
    for derived in (
        mosaic.with_transforms(transforms),
        mosaic.with_options(cache_images=True),
        mosaic.subset([1, 2]),
    ):
        assert isinstance(derived, MosaicDataset)
        assert (derived.size, derived.probability, derived.scale, derived.off_after, derived.min_side) == (
            64,
            0.7,
            (0.8, 1.2),
            0.5,
            3.0,
        )
        assert derived.progress == 0.25
    assert mosaic.with_transforms(transforms).dataset.transforms is transforms
    assert mosaic.with_options(cache_images=True).dataset.options == {"cache_images": True}
    assert len(mosaic.subset([1, 2])) == 2
    for clone in (pickle.loads(pickle.dumps(mosaic)), copy.deepcopy(mosaic), copy.copy(mosaic)):
        assert clone.classes == dataset.classes and clone.progress == 0.25
        torch.manual_seed(0)
        first = clone[0]
        torch.manual_seed(0)
        assert torch.equal(first[0], mosaic[0][0])
