"""The page's sample images: a few images of detlab's synthetic set, made once by

    PYTHONPATH=src python -m detlab.serve.samples

and shipped in ``static/samples/`` (PNG, 128 colours, under 50 KB each). They are images of the
test split of the set ``make demo`` trains on (seed 0, 2,000 images: indices 1,700 and up), so the
demo's model has never seen them.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

SAMPLES_DIR = Path(__file__).parent / "static" / "samples"
# name -> index of the image in the synthetic set of seed 0 (make demo's test split: 1700..1999).
SAMPLES = {"shapes-1": 1700, "shapes-2": 1707, "shapes-3": 1710}
COLOURS = 128  # a palette PNG of the noisy synthetic images is a third of the full-colour one


def make_samples(out_dir: str | Path = SAMPLES_DIR, image_size: int = 256) -> list[Path]:
    """Render :data:`SAMPLES` and write them as palette PNGs in ``out_dir``; returns the files."""
    from detlab.data.synthetic import render_image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, index in SAMPLES.items():
        image, _ = render_image(seed=0, index=index, size=image_size)
        palette = image.quantize(COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        path = out_dir / f"{name}.png"
        palette.save(path, optimize=True)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in make_samples():
        print(f"{path} ({path.stat().st_size // 1024} KB)")
