"""to_image_tensor: every form a user holds gives the tensor loading the file gives; other forms
are refused with a message naming what is accepted and what was given."""

import numpy as np
import pytest
import torch
from PIL import Image

from detlab.data.images import load_image, to_image_tensor
from detlab.proposals import build_method


def noise(height=30, width=40, channels=3, seed=0):
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def rgb_file(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(noise()).save(path)
    return path


def assert_same(image, reference):
    assert image.dtype == torch.float32 and image.shape == reference.shape
    assert torch.equal(image, reference)


def test_rgb_forms_equal_the_loaded_file(rgb_file):
    reference = load_image(rgb_file)
    array = noise()
    bgr = np.ascontiguousarray(array[..., ::-1])
    forms = {
        "str": str(rgb_file),
        "Path": rgb_file,
        "PIL from file": Image.open(rgb_file),
        "PIL in memory": Image.fromarray(array),
        "uint8 array": array,
        "float array": array.astype(np.float32) / np.float32(255),
        "float64 array": array / 255.0,
        "BGR array reversed (negative stride)": bgr[..., ::-1],
        "uint8 tensor": torch.from_numpy(array).permute(2, 0, 1),
        "float tensor": reference.clone(),
        "HWC-strided tensor": reference.permute(1, 2, 0).contiguous().permute(2, 0, 1),
    }
    for name, form in forms.items():
        image = to_image_tensor(form)
        if name == "float64 array":  # rounded once more on the way to float32
            torch.testing.assert_close(image, reference, rtol=0, atol=1e-7)
        else:
            assert image.dtype == torch.float32 and torch.equal(image, reference), name
    flipped = to_image_tensor(array[::-1, ::-1])
    assert_same(flipped, reference.flip(1, 2))


def test_result_is_a_new_tensor():
    image = torch.rand(3, 5, 6)
    result = to_image_tensor(image)
    result.zero_()
    assert image.sum() > 0


def test_greyscale_forms_equal_the_loaded_file(tmp_path):
    grey = noise(channels=1)
    path = tmp_path / "grey.png"
    Image.fromarray(grey).save(path)
    reference = load_image(path)
    assert torch.equal(reference[0], reference[1])
    as_tensor = torch.from_numpy(grey)
    for form in (
        Image.open(path),
        grey,
        grey[:, :, None],
        as_tensor,
        as_tensor[None],
        as_tensor[None].float() / 255,
    ):
        assert_same(to_image_tensor(form), reference)


def test_rgba_forms_equal_the_loaded_file(tmp_path):
    rgba = noise(channels=4, seed=1)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    reference = load_image(path)
    as_tensor = torch.from_numpy(rgba).permute(2, 0, 1)
    for form in (Image.open(path), rgba, as_tensor):
        assert_same(to_image_tensor(form), reference)
    # Composited in float: the same picture up to PIL's integer rounding.
    torch.testing.assert_close(to_image_tensor(as_tensor.float() / 255), reference, rtol=0, atol=1.01 / 255)
    transparent = np.zeros((4, 5, 4), np.uint8)
    assert to_image_tensor(transparent).eq(1).all()  # on white, as the loader does


@pytest.mark.parametrize("kind", ["palette_with_transparency", "sixteen_bit", "exif_rotated"])
def test_pil_images_of_odd_files_convert_as_the_loader_does(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "palette_with_transparency":
        image = Image.fromarray(noise(seed=2)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        image.info["transparency"] = 0
        image.save(path, transparency=0)
    elif kind == "sixteen_bit":
        Image.fromarray(noise(channels=1).astype(np.uint16) * 257).save(path)
    else:
        path = tmp_path / "rotated.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(noise(seed=3)).save(path, exif=exif.tobytes())
    reference = load_image(path)
    with Image.open(path) as opened:
        assert_same(to_image_tensor(opened), reference)
    if kind == "exif_rotated":
        assert reference.shape == (3, 40, 30)
        # An image already turned upright has lost its orientation tag: it is not turned twice.
        from PIL import ImageOps

        with Image.open(path) as opened:
            assert_same(to_image_tensor(ImageOps.exif_transpose(opened)), reference)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([[0, 1], [2, 3]], r"cannot use a list as an image; accepted: a path"),
        (None, "cannot use a NoneType"),
        (np.zeros((3, 30, 40), np.uint8), r"shape \(3, 30, 40\).*numpy arrays are channels last"),
        (np.zeros((30, 40, 2), np.uint8), r"numpy.ndarray of shape \(30, 40, 2\)"),
        (np.zeros((30, 40, 3), np.int64), "expected uint8 .* or float .*dtype int64"),
        (np.zeros((30, 40, 3), bool), "dtype bool"),
        (np.full((30, 40, 3), 200.0, np.float32), r"must lie in \[0, 1\].*divide by 255"),
        (torch.zeros(30, 40, 3, dtype=torch.uint8), "tensors are channels first"),
        (torch.zeros(1, 3, 30, 40), r"a batch of one: pass image\[0\]"),
        (torch.zeros(3, 30, 40, dtype=torch.int64), "dtype torch.int64"),
        (torch.randn(3, 30, 40) * 2, "do not normalise with a mean and std"),
        (torch.zeros(3, 0, 40), "empty image"),
        (np.zeros((0, 40, 3), np.uint8), "empty image"),
        (np.zeros((30, 0), np.uint8), "empty image"),
        (Image.new("RGB", (0, 10)), "empty image"),
    ],
)
def test_bad_forms_name_the_problem(bad, message):
    with pytest.raises(ValueError, match=message):
        to_image_tensor(bad)


def test_small_excursions_are_clipped_and_nan_is_zero():
    image = torch.full((3, 2, 2), 0.5)
    image[0, 0, 0], image[1, 0, 0], image[2, 0, 0] = -0.1, 1.2, float("nan")
    result = to_image_tensor(image)
    assert result[:, 0, 0].tolist() == [0.0, 1.0, 0.0]


def test_propose_gives_the_same_boxes_for_every_form(rgb_file, tmp_path):
    # Blocks of colour, so proposals depend on the pixels (not only on the image size).
    array = np.full((48, 64, 3), 200, np.uint8)
    array[5:30, 8:30] = (220, 20, 20)
    array[20:45, 35:60] = (20, 40, 200)
    path = tmp_path / "blocks.png"
    Image.fromarray(array).save(path)
    method = build_method("ss-fast", max_proposals=100)
    expected = method.propose(path)
    assert len(expected) > 2
    for form in (
        str(path),
        Image.open(path),
        array,
        array[..., ::-1][..., ::-1],
        torch.from_numpy(array).permute(2, 0, 1),
        load_image(path),
    ):
        assert torch.equal(method.propose(form), expected)
    with pytest.raises(ValueError, match="channels last"):
        method.propose(np.ascontiguousarray(array.transpose(2, 0, 1)))
