"""Options of ``detlab predict`` and ``detlab eval --checkpoint`` about the inputs: tiled
inference (``--tile``, ``--overlap``, ``--tile-full-image``, ``--tile-merge``), the same names
as :func:`detlab.load`'s keywords."""

from __future__ import annotations

import argparse

from detlab.tiles import MERGES, Tiling, tiling_of


def add_tiling_options(parser: argparse.ArgumentParser) -> None:
    """The tiled-inference options (docs/inference.md)."""
    parser.add_argument(
        "--tile",
        type=int,
        default=0,
        metavar="SIZE",
        help="tiled inference: run the model on SIZE x SIZE tiles of each image and merge (0: off)",
    )
    parser.add_argument(
        "--overlap",
        type=float,
        default=0.2,
        help="with --tile: the share of a tile's side neighbours share (0.2)",
    )
    parser.add_argument(
        "--tile-full-image",
        action="store_true",
        help="with --tile: also run the model on the whole image (for large objects every tile cuts)",
    )
    parser.add_argument(
        "--tile-merge",
        choices=MERGES,
        default="fusion",
        help="with --tile: fusion (a box enclosing the pieces of a cut object, default) or nms (the best box)",
    )


def tiling_from_args(args: argparse.Namespace) -> Tiling | None:
    return tiling_of(args.tile, args.overlap, args.tile_full_image, args.tile_merge)
