"""Drawing boxes on images and tiling annotated samples into a grid."""

from __future__ import annotations

import colorsys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_keypoints, make_grid

from detlab.data.images import save_image


def class_colours(num_classes: int) -> list[tuple[int, int, int]]:
    """One well-separated, saturated colour per class (label ``k`` -> index ``k - 1``)."""
    colours = []
    for index in range(max(num_classes, 1)):
        red, green, blue = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.9, 1.0)
        colours.append((int(red * 255), int(green * 255), int(blue * 255)))
    return colours


def draw_detections(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    classes: list[str],
    scores: Tensor | None = None,
    width: int = 2,
    font_size: int | None = None,
    keypoints: Tensor | None = None,
) -> Tensor:
    """Draw ``Tensor[N, 4]`` xyxy ``boxes`` with class names (and scores) on a ``Tensor[3, H, W]``
    image in [0, 1] (or uint8), and each box's ``keypoints`` ``Tensor[N, K, 2]`` when given (NaN
    points are not drawn). Returns a uint8 ``Tensor[3, H, W]``."""
    if image.dtype != torch.uint8:
        image = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    if len(boxes) == 0:
        return image
    if keypoints is not None and len(keypoints):
        visible = torch.isfinite(keypoints).all(dim=-1)
        image = draw_keypoints(
            image,
            torch.nan_to_num(keypoints.float()),
            colors="yellow",
            radius=max(2, width),
            visibility=visible,
        )
    colours = class_colours(len(classes))
    names = []
    for index, label in enumerate(labels.tolist()):
        name = classes[label - 1] if 1 <= label <= len(classes) else f"class {label}"
        names.append(f"{name} {scores[index]:.2f}" if scores is not None else name)
    box_colours = [colours[(label - 1) % len(colours)] for label in labels.tolist()]
    return draw_bounding_boxes(
        image, boxes.float(), labels=names, colors=box_colours, width=width, font_size=font_size
    )


def _fit(image: Tensor, tile_height: int, tile_width: int) -> Tensor:
    """Resize a uint8 ``Tensor[3, H, W]`` to fit a ``tile_height x tile_width`` cell (aspect kept, padded)."""
    height, width = image.shape[-2:]
    scale = min(tile_height / height, tile_width / width)
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(image[None].float(), size=new_size, mode="bilinear", align_corners=False)[0]
    canvas = torch.full((3, tile_height, tile_width), 255.0)
    canvas[:, : new_size[0], : new_size[1]] = resized
    return canvas.clamp(0, 255).to(torch.uint8)


def save_grid(images: list[Tensor], path: str | Path, tile: int = 320, columns: int = 4) -> Path:
    """Tile uint8 images into one PNG/JPEG at ``path``."""
    if not images:
        raise ValueError("no images to draw")
    # Cells take the median aspect ratio of the images, so a set of landscape photos fills its cells.
    aspect = sorted(image.shape[-2] / image.shape[-1] for image in images)[len(images) // 2]
    tile_height = max(1, round(tile * min(aspect, 1.0)))
    tile_width = max(1, round(tile / max(aspect, 1.0)))
    tiles = [_fit(image, tile_height, tile_width) for image in images]
    grid = make_grid(torch.stack(tiles), nrow=min(columns, len(tiles)), padding=4, pad_value=255)
    save_image(grid, path)
    return Path(path)


def show_dataset(dataset, path: str | Path, num: int = 8, seed: int = 0, tile: int = 320) -> Path:
    """Draw ``num`` samples of ``dataset`` (chosen with ``seed``) with their ground truth into a grid."""
    generator = torch.Generator().manual_seed(seed)
    count = min(num, len(dataset))
    if count == 0:
        raise ValueError(f"{dataset.name or 'data set'} has no images to show")
    indices = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    drawn = []
    for index in indices:
        image, target = dataset[index]
        drawn.append(
            draw_detections(
                image,
                target["boxes"],
                target["labels"],
                dataset.classes,
                width=max(2, round(max(image.shape[-2:]) / 200)),
            )
        )
    return save_grid(drawn, path, tile=tile)
