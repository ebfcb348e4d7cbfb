"""Prediction on a video file, a camera or a stream (``detlab predict --input clip.mp4 | 0 |
rtsp://...``): frames decoded by :mod:`detlab.video_files` (RGB, as the models were trained),
predicted ``batch_size`` at a time, drawn and encoded into ``OUT/<name>.mp4``, and their
detections written to ``OUT/detections.jsonl`` as they come, one line a frame::

    {"frame": 0, "time": 0.0, "detections": [{"bbox": [x, y, w, h], "score", "category_id",
     "category_name"}]}

(COCO boxes in the frame's pixels, category ids = labels 1..C). Ctrl-C stops reading: the frames
already predicted are written, both files are finished properly, then the interrupt goes on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from detlab.data.drawing import draw_detections
from detlab.eval.results import coco_result_entries
from detlab.progress import progress_bar
from detlab.video_files import Frame, VideoReader, VideoWriter, source_name


def predict_video(
    predictor,
    source: str | Path,
    out_dir: str | Path,
    draw_threshold: float = 0.5,
    batch_size: int | None = None,
) -> dict:
    """Predict every frame of ``source`` with ``predictor`` (a
    :class:`~detlab.engine.predict.Predictor` or an ONNX one) and write the annotated video and
    ``detections.jsonl`` into ``out_dir`` (see the module docstring); ``batch_size``: frames a
    forward pass (``None``: the run's training batch on a GPU, 1 on a CPU). Returns ``{"frames",
    "detections", "seconds", "fps" (frames predicted a second, decoding and writing included),
    "video", "detections_file", "out_dir"}``. A progress bar shows the frames done (of a file's
    count) and the frames a second."""
    out_dir = Path(out_dir)
    reader = VideoReader(source)
    video = out_dir / f"{source_name(source)}.mp4"
    if reader.is_file and video.resolve() == Path(source).resolve():
        reader.close()
        raise ValueError(f"--out {out_dir} would overwrite the input video {source}; choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    batch_size = batch_size or frames_a_pass(predictor)
    summary = {"frames": 0, "detections": 0, "video": str(video), "out_dir": str(out_dir)}
    summary["detections_file"] = str(out_dir / "detections.jsonl")
    started = time.perf_counter()
    # a file's bar runs to its frame count; a camera's or stream's counts frames and their rate
    frames = progress_bar(reader, total=reader.total, desc="predict", unit="frame")
    try:
        with VideoWriter(video, reader.fps) as writer, open(summary["detections_file"], "w") as lines:
            batch: list[Frame] = []
            for frame in frames:
                batch.append(frame)
                if len(batch) == batch_size:
                    summary["detections"] += write_batch(predictor, batch, writer, lines, draw_threshold)
                    summary["frames"] += len(batch)
                    batch = []
            if batch:
                summary["detections"] += write_batch(predictor, batch, writer, lines, draw_threshold)
                summary["frames"] += len(batch)
    finally:
        reader.close()
        summary["seconds"] = time.perf_counter() - started
        summary["fps"] = summary["frames"] / max(summary["seconds"], 1e-9)
    return summary


def frames_a_pass(predictor) -> int:
    """The default batch: the run's training batch size on a GPU, one frame on a CPU."""
    device = torch.device(predictor.device)
    run_config = predictor.run_config
    return run_config.train.batch_size if device.type == "cuda" and run_config is not None else 1


def write_batch(predictor, batch: list[Frame], writer: VideoWriter, lines, draw_threshold: float) -> int:
    """Predict ``batch`` (one forward pass: the frames share a size), write each frame's line and
    its annotated pixels; returns the number of detections."""
    found = predictor.predict_batch([frame.pixels for frame in batch])
    count = 0
    for frame, prediction in zip(batch, found):
        boxes, scores, labels = (torch.as_tensor(prediction[key]) for key in ("boxes", "scores", "labels"))
        entries = coco_result_entries(boxes, scores, labels, frame.index, decimals=2)
        detections = [
            {
                "bbox": entry["bbox"],
                "score": entry["score"],
                "category_id": entry["category_id"],
                "category_name": name,
            }
            for entry, name in zip(entries, prediction["names"])
        ]
        lines.write(
            json.dumps({"frame": frame.index, "time": round(frame.time, 4), "detections": detections}) + "\n"
        )
        shown = scores >= draw_threshold
        image = torch.from_numpy(frame.pixels).permute(2, 0, 1)
        points = torch.as_tensor(prediction["keypoints"])[shown] if "keypoints" in prediction else None
        annotated = draw_detections(
            image, boxes[shown], labels[shown], predictor.classes, scores[shown], keypoints=points
        )
        writer.write(annotated.permute(1, 2, 0).numpy())
        count += len(detections)
    lines.flush()  # a crash or a kill later still leaves every finished frame's line
    return count
