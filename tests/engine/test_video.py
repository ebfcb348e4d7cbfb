"""``detlab predict`` on a video file, a stream and a pipe: every frame predicted as that frame
alone would be, RGB end to end, the annotated video and detections.jsonl written (also when
interrupted). The clips are made here, from synthetic images and from plain colours."""

import io
import json
import os
import sys
import threading

import numpy as np
import pytest
import torch
from scipy import ndimage

from detlab.cli import main
from detlab.engine.predict import Predictor
from detlab.engine.predict_video import predict_video
from detlab.models.contract import DetectorModule
from detlab.video_files import VideoReader, VideoWriter, is_video_source, source_name

pytest.importorskip("av")


class ColourRegions(DetectorModule):
    """One box a connected red (label 1) or blue (label 2) region: colours in, labels out."""

    def forward(self, images, targets=None, *, trace=None):
        outputs = []
        for image in images:
            boxes, labels = [], []
            for label, channel in ((1, 0), (2, 2)):
                found, _ = ndimage.label((image[channel] > 0.6) & (image[2 - channel] < 0.4))
                for rows, columns in ndimage.find_objects(found.numpy() if torch.is_tensor(found) else found):
                    boxes.append([columns.start, rows.start, columns.stop, rows.stop])
                    labels.append(label)
            outputs.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.full((len(boxes),), 0.9),
                    "labels": torch.tensor(labels, dtype=torch.int64),
                }
            )
        return outputs


def write_clip(path, frames, fps=10.0):
    with VideoWriter(path, fps, quality=18) as writer:
        for pixels in frames:
            writer.write(pixels)
    return path


@pytest.fixture(scope="module")
def synthetic_clip(tmp_path_factory):
    """Eight synthetic test images (256 x 256) as an H.264 clip."""
    from detlab.data.synthetic import render_image

    folder = tmp_path_factory.mktemp("clip")
    frames = [np.asarray(render_image(seed=3, index=index)[0]) for index in range(8)]
    return write_clip(folder / "shapes.mp4", frames)


def decoded_frames(path):
    with VideoReader(path) as reader:
        return [frame.pixels for frame in reader]


def test_every_frame_is_predicted_as_that_decoded_frame_alone(synthetic_clip, tmp_path, tiny_run):
    predictor = Predictor.from_checkpoint(tiny_run, device="cpu")
    summary = predict_video(predictor, synthetic_clip, tmp_path / "out", draw_threshold=0.0, batch_size=3)
    assert summary["frames"] == 8 and summary["fps"] > 0
    lines = [json.loads(line) for line in (tmp_path / "out" / "detections.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(8))
    assert [line["time"] for line in lines] == pytest.approx([index / 10 for index in range(8)], abs=1e-3)
    for line, pixels in zip(lines, decoded_frames(synthetic_clip)):
        alone = predictor.predict(pixels)
        assert [d["category_id"] for d in line["detections"]] == alone["labels"].tolist()
        boxes = np.array([d["bbox"] for d in line["detections"]]).reshape(-1, 4)
        expected = alone["boxes"].numpy().copy()
        expected[:, 2:] -= expected[:, :2]
        np.testing.assert_allclose(boxes, expected, atol=0.011)
        assert [d["score"] for d in line["detections"]] == pytest.approx(alone["scores"].tolist(), abs=1e-4)
    annotated = decoded_frames(tmp_path / "out" / "shapes.mp4")
    assert len(annotated) == 8 and annotated[0].shape == (256, 256, 3)


def test_frames_are_rgb_from_the_file_to_the_model_and_back(tmp_path):
    red, blue = np.zeros((64, 96, 3), np.uint8), np.zeros((64, 96, 3), np.uint8)
    red[16:48, 20:60, 0] = 255
    blue[16:48, 20:60, 2] = 255
    clip = write_clip(tmp_path / "colours.mp4", [red] * 3 + [blue] * 3)
    decoded = decoded_frames(clip)
    assert decoded[0][32, 40, 0] > 200 and decoded[0][32, 40, 2] < 60  # PyAV gives RGB, not BGR
    predictor = Predictor(ColourRegions(), ["red", "blue"], device="cpu")
    predict_video(predictor, clip, tmp_path / "out", batch_size=2)
    lines = [json.loads(line) for line in (tmp_path / "out" / "detections.jsonl").read_text().splitlines()]
    assert [[d["category_name"] for d in line["detections"]] for line in lines] == [["red"]] * 3 + [
        ["blue"]
    ] * 3
    first_box = lines[0]["detections"][0]["bbox"]
    assert first_box == pytest.approx([20, 16, 40, 32], abs=2)
    written = decoded_frames(tmp_path / "out" / "colours.mp4")
    assert written[0][32, 40, 0] > 200 and written[0][32, 40, 2] < 60  # written back as RGB too
    assert written[5][32, 40, 2] > 200 and written[5][32, 40, 0] < 60


def test_a_stream_url_and_a_pipe_are_read_like_a_file(tmp_path, monkeypatch):
    frames = [np.zeros((32, 48, 3), np.uint8) for _ in range(4)]
    for pixels in frames:
        pixels[8:24, 8:30, 0] = 255
    clip = write_clip(tmp_path / "piped.ts", frames)  # MPEG-TS: a container read without seeking
    predictor = Predictor(ColourRegions(), ["red", "blue"], device="cpu")
    url = clip.as_uri()
    assert is_video_source(url) and source_name(url) == "piped"
    summary = predict_video(predictor, url, tmp_path / "from-url")
    assert summary["frames"] == 4 and (tmp_path / "from-url" / "piped.mp4").is_file()
    read_end, write_end = os.pipe()
    feeder = threading.Thread(target=lambda: (os.write(write_end, clip.read_bytes()), os.close(write_end)))
    feeder.start()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(os.fdopen(read_end, "rb")))
    summary = predict_video(predictor, "-", tmp_path / "from-pipe")
    feeder.join()
    assert summary["frames"] == 4 and summary["video"].endswith("stdin.mp4")
    lines = (tmp_path / "from-pipe" / "detections.jsonl").read_text().splitlines()
    assert [json.loads(line)["detections"][0]["category_name"] for line in lines] == ["red"] * 4


def test_ctrl_c_writes_what_was_done(tmp_path, capsys, monkeypatch, tiny_run):
    clip = write_clip(
        tmp_path / "long.mp4", [np.full((32, 32, 3), 40 * index, np.uint8) for index in range(6)]
    )
    calls = []
    real = Predictor.predict_batch

    def interrupted_on_the_third_batch(self, images, *args, **kwargs):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_batch", interrupted_on_the_third_batch)
    command = ["predict", "--checkpoint", str(tiny_run), "--input", str(clip), "--out", str(tmp_path / "out")]
    assert main([*command, "--device", "cpu", "--batch-size", "2"]) == 130
    assert "interrupted" in capsys.readouterr().err
    lines = (tmp_path / "out" / "detections.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 1, 2, 3]
    assert len(decoded_frames(tmp_path / "out" / "long.mp4")) == 4  # a finished, readable file


def test_video_sources_and_their_errors(tmp_path, monkeypatch, tiny_run, capsys):
    assert [is_video_source(text) for text in ("a.MP4", "0", "rtsp://cam/live", "-", "a.jpg", "folder")] == [
        True, True, True, True, False, False,
    ]  # fmt: skip
    assert [source_name(text) for text in ("/x/a.mp4", "0", "rtsp://host:554/live", "rtsp://host:554")] == [
        "a", "camera0", "live", "host_554",
    ]  # fmt: skip
    command = ["predict", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "o"), "--input"]
    assert main([*command, str(tmp_path / "none.mp4")]) == 2
    assert "no such video file" in capsys.readouterr().err
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert main([*command, str(tmp_path / "bad.mp4")]) == 2
    assert "cannot open it as a video" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    assert main([*command, str(tmp_path / "bad.mp4")]) == 2
    assert "pip install 'detlab[video]'" in capsys.readouterr().err
