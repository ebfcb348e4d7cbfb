"""Video files, cameras and streams as frames, and annotated frames back into a video file.

Decoding and encoding are PyAV's (FFmpeg's libraries, as torchvision's video readers use), an
optional dependency imported only when a video is opened (``pip install 'detlab[video]'``).
Frames are ``uint8[H, W, 3]`` **RGB** end to end: PyAV converts each decoded frame to ``rgb24``
and the writer encodes from ``rgb24`` (OpenCV's readers hand out BGR, which peers then feed to
RGB-trained models: the known source of swapped colours).

Sources (:func:`is_video_source`): a video file (:data:`VIDEO_SUFFIXES`), a camera number
(``0``: ``/dev/video0`` on Linux, AVFoundation's camera 0 on macOS), a stream URL (``rtsp://``,
``http://``, ``udp://``, ``file://``, ...: :data:`STREAM_SCHEMES`) or ``-`` (a video piped into
standard input, in a container that needs no seeking: MPEG-TS, Matroska).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "file")
STDIN = "-"


def missing_pyav() -> ValueError:
    return ValueError("reading and writing video needs PyAV: pip install 'detlab[video]' (or pip install av)")


def import_av():
    try:
        import av
    except ImportError:
        raise missing_pyav() from None
    return av


def is_video_source(source: str | Path) -> bool:
    """Whether ``source`` names a video (file, camera number, stream URL or ``-``) rather than an
    image file or a folder of images. A number is a camera unless a file or folder has that name."""
    text = str(source)
    if text == STDIN:
        return True
    if text.isdigit():
        return not Path(text).exists()
    if "://" in text:
        return text.split("://", 1)[0].lower() in STREAM_SCHEMES
    return Path(text).suffix.lower() in VIDEO_SUFFIXES


def source_name(source: str | Path) -> str:
    """The name of a source's outputs: a file's stem (``clip.mp4``, ``file:///a/clip.mp4`` ->
    ``clip``), ``camera0``, ``stdin``, or a stream's last path part (``rtsp://host/live`` -> ``live``)."""
    text = str(source)
    if text == STDIN:
        return "stdin"
    if text.isdigit():
        return f"camera{text}"
    if "://" in text:
        host, _, path = text.split("://", 1)[1].split("?", 1)[0].rstrip("/").partition("/")
        return re.sub(r"[^\w.-]", "_", Path(path).stem if path else host) or "stream"
    return Path(text).stem


@dataclasses.dataclass
class Frame:
    """One decoded frame: its number from 0, its time in seconds from the stream's start, and its
    pixels ``uint8[H, W, 3]`` RGB."""

    index: int
    time: float
    pixels: np.ndarray


class VideoReader:
    """The frames of a video source (see the module's list), in order: iterate it for
    :class:`Frame` objects; ``total`` is the file's frame count (``None``: a camera, a stream or
    a file that does not say); ``fps`` its frame rate (25 when it gives none)."""

    def __init__(self, source: str | Path):
        av = import_av()
        self.source = str(source)
        text = self.source
        self.is_file = not (text == STDIN or text.isdigit() or "://" in text)
        if self.is_file and not Path(text).is_file():
            raise FileNotFoundError(f"{text}: no such video file")
        try:
            self.container = self.open(av, text)
        except av.FFmpegError as error:
            raise ValueError(f"{text}: cannot open it as a video ({error})") from None
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"{text}: holds no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # FFmpeg decodes on its own threads, outside the GIL
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 25.0
        self.total = self.stream.frames or None

    @staticmethod
    def open(av, text: str):
        if text == STDIN:
            return av.open(sys.stdin.buffer, mode="r")
        if text.isdigit():  # a camera
            if sys.platform == "darwin":
                return av.open(text, format="avfoundation")
            return av.open(f"/dev/video{text}", format="v4l2")
        if text.lower().startswith(("rtsp://", "rtsps://")):
            return av.open(text, options={"rtsp_transport": "tcp"})  # no lost UDP packets
        return av.open(text)

    def __iter__(self) -> Iterator[Frame]:
        for index, frame in enumerate(self.container.decode(self.stream)):
            time = float(frame.time) if frame.time is not None else index / self.fps
            yield Frame(index, time, frame.to_ndarray(format="rgb24"))

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exception) -> None:
        self.close()


class VideoWriter:
    """Frames ``uint8[H, W, 3]`` RGB -> an H.264 video file (``.mp4``) at ``fps``; the first
    frame fixes the size (an odd side is padded by one edge pixel: 4:2:0 colour needs even sides).
    ``close`` (or leaving a ``with`` block) flushes the encoder and finishes the file."""

    def __init__(self, path: str | Path, fps: float, quality: int = 23):
        self.av = import_av()
        self.path = Path(path)
        self.fps, self.quality = fps, quality
        self.container = None
        self.stream = None
        self.frames = 0

    def start(self, height: int, width: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = self.av.open(str(self.path), mode="w")
        rate = Fraction(self.fps).limit_denominator(1001)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(self.quality), "preset": "veryfast"}

    def write(self, pixels: np.ndarray) -> None:
        if self.stream is None:
            self.start(*pixels.shape[:2])
        height, width = pixels.shape[:2]
        if (width, height) != (self.stream.width, self.stream.height):
            pixels = np.pad(
                pixels,
                ((0, self.stream.height - height), (0, self.stream.width - width), (0, 0)),
                mode="edge",
            )
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        if self.container is None:
            return
        self.container.mux(self.stream.encode(None))  # the frames the encoder still holds
        self.container.close()
        self.container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exception) -> None:
        self.close()
