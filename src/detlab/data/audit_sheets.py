"""Contact sheets of an audit: PNG grids a person checks the findings on by eye.

- duplicates: each pair side by side, captioned with its splits and file names (a pair across
  splits, a leak, has a red heading);
- box findings and suspects: a crop around the boxes concerned, the label drawn in green and the
  model's detection in orange, captioned with the finding and its score.

Drawn with PIL alone (no torch). Boxes are ``(x1, y1, x2, y2)`` pixels of the stored image, EXIF
orientation applied (as :func:`detlab.image_files.open_rgb` decodes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from detlab.image_files import open_rgb

LABEL_COLOUR = (0, 170, 0)
DETECTION_COLOUR = (255, 120, 0)
OTHER_COLOUR = (30, 90, 255)
LEAK_COLOUR = (200, 0, 0)
TEXT_COLOUR = (20, 20, 20)
CAPTION_LINE = 14
GAP = 6


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` scaled to fit ``width x height`` (aspect kept), on white."""
    scale = min(width / image.width, height / image.height)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(resized, ((width - resized.width) // 2, (height - resized.height) // 2))
    return canvas


def _shorten(text: str, width: int) -> str:
    """``text`` cut to about ``width`` pixels of the default 12-px font (6 px a character)."""
    limit = max(4, width // 6)
    return text if len(text) <= limit else text[: limit - 1] + "~"


def _grid(cells: list[Image.Image], columns: int, path: Path) -> Path:
    rows = (len(cells) + columns - 1) // columns
    width, height = cells[0].size
    sheet = Image.new("RGB", (columns * (width + GAP) + GAP, rows * (height + GAP) + GAP), (235, 235, 235))
    for index, cell in enumerate(cells):
        sheet.paste(
            cell, (GAP + (index % columns) * (width + GAP), GAP + (index // columns) * (height + GAP))
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, compress_level=1)  # a quarter of the default's time, a third larger
    return path


def duplicate_sheet(pairs: Sequence, path: str | Path, max_pairs: int = 24, tile: int = 240) -> Path | None:
    """Draw ``pairs`` (:class:`detlab.data.auditing.DuplicatePair`, the first ``max_pairs``) into a
    PNG at ``path``, two pairs a row; ``None`` (no file) when there are none."""
    if not pairs:
        return None
    font = _font()
    tile_height = round(tile * 0.75)
    cells = []
    for pair in list(pairs)[:max_pairs]:
        cell = Image.new("RGB", (2 * tile + GAP, tile_height + 3 * CAPTION_LINE + GAP), "white")
        draw = ImageDraw.Draw(cell)
        heading = f"{'LEAK ' if pair.across_splits else ''}hash {pair.hash_distance} bits, pixels {pair.pixel_similarity:.3f}"
        draw.text((2, 1), heading, fill=LEAK_COLOUR if pair.across_splits else TEXT_COLOUR, font=font)
        for column, (image_path, splits) in enumerate(
            ((pair.path_a, pair.splits_a), (pair.path_b, pair.splits_b))
        ):
            left = column * (tile + GAP)
            cell.paste(_fit(open_rgb(image_path), tile, tile_height), (left, CAPTION_LINE + 2))
            caption = f"{'+'.join(splits)}: {Path(image_path).name}"
            draw.text(
                (left + 2, CAPTION_LINE + tile_height + 4),
                _shorten(caption, tile),
                fill=TEXT_COLOUR,
                font=font,
            )
        cells.append(cell)
    return _grid(cells, 2, Path(path))


def _crop_around(image: Image.Image, boxes: list[Sequence[float]], context: float = 1.0, min_side: int = 96):
    """The region around the union of ``boxes`` with ``context`` times its size on each side
    (at least ``min_side`` pixels), clipped to the image: ``(left, top, right, bottom)``."""
    x1 = min(box[0] for box in boxes)
    y1 = min(box[1] for box in boxes)
    x2 = max(box[2] for box in boxes)
    y2 = max(box[3] for box in boxes)
    half_width = max((x2 - x1) * (0.5 + context), min_side / 2)
    half_height = max((y2 - y1) * (0.5 + context), min_side / 2)
    centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
    return (
        max(0, int(centre_x - half_width)),
        max(0, int(centre_y - half_height)),
        min(image.width, int(centre_x + half_width) + 1),
        min(image.height, int(centre_y + half_height) + 1),
    )


def _box_cell(
    image_path: str, drawn: list[tuple[Sequence[float], str, tuple]], captions: list[str], tile: int
):
    """One cell: the crop around the ``drawn`` boxes ``(box, text, colour)`` scaled to ``tile``,
    the texts over the boxes, the ``captions`` below."""
    font = _font()
    image = open_rgb(image_path)
    left, top, right, bottom = _crop_around(image, [box for box, _, _ in drawn])
    crop = image.crop((left, top, right, bottom))
    scale = min(tile / crop.width, tile / crop.height)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
    cell = Image.new("RGB", (tile, tile + len(captions) * CAPTION_LINE + 4), "white")
    cell.paste(crop, ((tile - crop.width) // 2, 0))
    offset_x = (tile - crop.width) // 2
    draw = ImageDraw.Draw(cell)
    for index, (box, text, colour) in enumerate(drawn):
        corners = [
            offset_x + (box[0] - left) * scale,
            (box[1] - top) * scale,
            offset_x + (box[2] - left) * scale,
            (box[3] - top) * scale,
        ]
        draw.rectangle(corners, outline=colour, width=2)
        # The first box's text above it, the second's below: a swapped class has both on one spot.
        above = corners[1] - CAPTION_LINE if corners[1] >= CAPTION_LINE else corners[1] + 1
        below = corners[3] + 1 if corners[3] + CAPTION_LINE <= crop.height else corners[3] - CAPTION_LINE
        position = (corners[0] + 2, above if index == 0 else below)
        draw.rectangle(draw.textbbox(position, text, font=font), fill="white")  # legible on any image
        draw.text(position, text, fill=colour, font=font)
    for line, caption in enumerate(captions):
        draw.text((2, tile + 2 + line * CAPTION_LINE), _shorten(caption, tile), fill=TEXT_COLOUR, font=font)
    return cell


def box_sheet(findings: Sequence, path: str | Path, max_items: int = 24, tile: int = 240) -> Path | None:
    """Draw box findings (:class:`detlab.data.auditing.BoxFinding`, the first ``max_items``): the box
    in green, the other box of a pair in blue; ``None`` when there are none."""
    if not findings:
        return None
    cells = []
    for finding in list(findings)[:max_items]:
        drawn = [(finding.box, finding.label, LABEL_COLOUR)]
        if finding.other_box is not None:
            drawn.append((finding.other_box, finding.other_label, OTHER_COLOUR))
        measure = (
            f"IoU {finding.value:.2f}" if finding.z is None else f"{finding.value:.3g}, z {finding.z:+.1f}"
        )
        captions = [f"{finding.kind} {measure}", f"{'+'.join(finding.splits)}: {Path(finding.path).name}"]
        cells.append(_box_cell(finding.path, drawn, captions, tile))
    return _grid(cells, 4, Path(path))


def suspect_sheet(suspects: Sequence, path: str | Path, max_items: int = 24, tile: int = 240) -> Path | None:
    """Draw the top ``max_items`` suspects (:class:`detlab.data.auditing.Suspect`): the label in
    green, the detection in orange with its score; ``None`` when there are none."""
    if not suspects:
        return None
    cells = []
    for suspect in list(suspects)[:max_items]:
        drawn = []
        if suspect.label_box is not None:
            drawn.append((suspect.label_box, f"label {suspect.label_class}", LABEL_COLOUR))
        if suspect.det_box is not None:
            drawn.append(
                (suspect.det_box, f"model {suspect.det_class} {suspect.det_score:.2f}", DETECTION_COLOUR)
            )
        captions = [
            f"#{suspect.rank} {suspect.kind} {suspect.score:.2f}",
            f"{'+'.join(suspect.splits)}: {Path(suspect.path).name}",
        ]
        cells.append(_box_cell(suspect.path, drawn, captions, tile))
    return _grid(cells, 4, Path(path))
