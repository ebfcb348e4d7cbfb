"""``detlab predict`` and ``detlab eval --checkpoint`` on the inputs users have: tiled inference
(``--tile``, ``--overlap``, ``--tile-full-image``, ``--tile-merge``: the names of
:func:`detlab.load`'s keywords) and ``detlab predict`` on a video file, a camera or a stream."""

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


def run_predict_video(predictor, args: argparse.Namespace) -> int:
    """``detlab predict --input VIDEO | CAMERA | URL`` (:func:`detlab.engine.predict_video.predict_video`)."""
    from detlab.engine.predict import DEFAULT_SCORE_THRESHOLD, score_threshold_for
    from detlab.engine.predict_video import predict_video

    threshold = score_threshold_for(predictor, args.score_threshold or DEFAULT_SCORE_THRESHOLD)
    summary = predict_video(
        predictor, args.input, args.out, draw_threshold=threshold, batch_size=args.batch_size
    )
    print(
        f"{summary['frames']} frames at {summary['fps']:.1f} frames/s, {summary['detections']} detections; "
        f"{summary['video']} (annotated) and {summary['detections_file']} (one line a frame)"
    )
    return 0
