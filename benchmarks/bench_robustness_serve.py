"""``detlab serve`` under hostile load, and the memory every method's pass takes. Two parts:

``--part memory``: for every method of ``detlab.models.MODELS`` (its default configuration,
untrained: memory does not depend on the weights' values; 4 classes) and each image side of
``--sides`` (``--overfeat-sides`` for OverFeat, whose memory grows fastest), a fresh process
builds the model, warms it up on a 64 x 64 image, then measures the peak resident memory
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``, glibc's free memory given back
first) that decoding a noise PNG of that side adds, and that ``Predictor.predict`` and the
look-inside pass add with the decoded image held. The table puts beside them what the method
states (:meth:`~detlab.models.contract.Detector.memory_cost`) and what ``detlab serve`` assumes
for decoding (``DECODE_BYTES_PER_PIXEL``); the run fails when a statement is below a measurement.

``--part load``: a server (this script in a subprocess, uvicorn on 127.0.0.1) serving an
untrained default Faster R-CNN and OverFeat under one ``--memory-budget``, and ``--clients``
clients for ``--duration`` seconds: half of them hostile (stalling their uploads, or sending them
a few bytes at a time), one uploading images of exactly OverFeat's pixel limit to OverFeat, one
sending malformed requests (random bytes, broken multipart framing and headers, absurd lengths,
disconnects mid-upload), the rest healthy clients detecting a sample image with Faster R-CNN.
Reports the healthy requests' p50/p99 latency and throughput beside ``Predictor.predict`` alone,
every status seen (5xx counted), the server's peak resident memory against the budget (sampled
every 0.2 s, and its ``VmHWM``), requests sent and malformed inputs tried.

Usage (from the repository root, under the shared CPU lock):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_robustness_serve.py --part memory
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_robustness_serve.py --part load
Results: ``benchmarks/results/robustness_serve.{json,md}`` (one section a part).
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, header_lines, stamp, write_results

CLASSES = ["circle", "square", "triangle", "star"]
MIB = 1024 * 1024
RESULTS_NAME = "robustness_serve"
SAMPLE = (
    Path(__file__).resolve().parents[1] / "src" / "detlab" / "serve" / "static" / "samples" / "shapes-1.png"
)


# -- the memory part -------------------------------------------------------------------------------


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"/proc/self/status has no {field}")


def reset_peak() -> int:
    """Give glibc's free memory back, reset ``VmHWM`` to ``VmRSS``; returns ``VmRSS``."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return status_bytes("VmRSS")


def peak_of(function):
    """``(function(), bytes the process's peak resident memory rose by while it ran)``."""
    before = reset_peak()
    result = function()
    return result, status_bytes("VmHWM") - before


def noise_png(side: int, mode: str = "RGB") -> bytes:
    """A PNG of random pixels (incompressible: the file is as large as such an image gets)."""
    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def untrained_predictor(method: str, overrides: list[str] | None = None):
    """A :class:`Predictor` of ``method``'s default model, untrained, on the CPU, 4 classes."""
    import torch

    from detlab.engine.predict import Predictor
    from detlab.engine.run import build_model, resolve_run_config

    torch.manual_seed(0)
    run_config = resolve_run_config(method, overrides=overrides)
    model = build_model(run_config, len(CLASSES), weights_from_checkpoint=True)
    model.stop_disk_caches()
    return Predictor(model, CLASSES, run_config, device="cpu")


def measure_child(method: str, side: int) -> dict:
    """One method at one side, in this (fresh) process: the numbers of the module's text."""
    import torch

    from detlab.serve.limits import Limits
    from detlab.serve.upload import DECODE_BYTES_PER_PIXEL, decode_upload

    torch.set_num_threads(2)
    limits = Limits(max_upload_bytes=1 << 40, max_pixels=1 << 40, max_aspect_ratio=50)
    if method == "decode":  # every PNG mode PIL converts differently
        decoded = {}
        for mode in ("RGB", "RGBA", "L", "P", "I;16"):
            data = noise_png(side, mode)
            _, decoded[mode] = peak_of(lambda data=data: decode_upload(data, limits))
        return {
            "method": "decode",
            "side": side,
            "decode_bytes": decoded,
            "stated_per_pixel": DECODE_BYTES_PER_PIXEL,
        }
    predictor = untrained_predictor(method)
    predictor.predict(torch.rand(3, 64, 64))
    predictor.model.look_inside(torch.rand(3, 64, 64), predictor.class_name)
    data = noise_png(side)
    image, decode = peak_of(lambda: decode_upload(data, limits))
    started = time.perf_counter()
    _, model = peak_of(lambda: predictor.predict(image, 0.5))
    seconds = time.perf_counter() - started
    _, inside = peak_of(lambda: predictor.model.look_inside(image, predictor.class_name))
    cost = predictor.model.memory_cost()
    return {
        "method": method,
        "side": side,
        "pixels": side * side,
        "decode_bytes": decode,
        "model_bytes": model,
        "inside_bytes": inside,
        "predict_s": round(seconds, 3),
        "stated_bytes": cost.bytes_for(side * side),
        "stated": {"bytes_per_input_pixel": cost.bytes_per_input_pixel, "fixed_bytes": cost.fixed_bytes},
    }


def memory_part(args) -> dict:
    """Every method at every side, each in its own process."""
    from detlab.models import MODELS

    rows = []
    for method in [*MODELS, "decode"]:
        sides = args.overfeat_sides if method == "overfeat" else args.sides
        for side in sides if method != "decode" else sides[-1:]:
            command = [sys.executable, __file__, "--child-memory", method, str(side)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.child_timeout)
            if done.returncode != 0:
                raise RuntimeError(f"{method} at {side}: {done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    measured = [row for row in rows if row["method"] != "decode"]
    for row in measured:
        row["stated_over_measured"] = round(
            row["stated_bytes"] / max(row["model_bytes"], row["inside_bytes"], 1), 2
        )
    (decode,) = [row for row in rows if row["method"] == "decode"]
    decode["worst_per_pixel"] = round(max(decode["decode_bytes"].values()) / decode["side"] ** 2, 1)
    return {
        **stamp(),
        "rows": measured,
        "decode": decode,
        "covered": all(row["stated_over_measured"] >= 1 for row in measured)
        and decode["worst_per_pixel"] <= decode["stated_per_pixel"],
    }


def memory_markdown(report: dict) -> list[str]:
    decode = report["decode"]
    lines = [
        "## Memory of one pass, every method",
        "",
        *header_lines(report),
        "Default configurations, untrained, 4 classes; a noise PNG of side S. Peak resident memory added "
        "(VmHWM reset before each): decoding, `Predictor.predict` and the look-inside pass with the decoded "
        "image held; stated: the method's `memory_cost()` for that image. OverFeat is the only method whose "
        "pass grows much with the image (it runs on the whole image at up to 3 times its size).",
        "",
        "| method | S | decode B/px | predict MiB | look inside MiB | per pixel (B) | stated MiB | stated / measured | predict s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        peak = max(row["model_bytes"], row["inside_bytes"])
        lines.append(
            f"| {row['method']} | {row['side']} | {row['decode_bytes'] / row['pixels']:.1f} | "
            f"{row['model_bytes'] / MIB:.1f} | {row['inside_bytes'] / MIB:.1f} | {peak / row['pixels']:.0f} | "
            f"{row['stated_bytes'] / MIB:.1f} | {row['stated_over_measured']:.2f} | {row['predict_s']:.2f} |"
        )
    modes = ", ".join(
        f"{mode} {value / decode['side'] ** 2:.1f}" for mode, value in decode["decode_bytes"].items()
    )
    lines += [
        "",
        f"Decoding a {decode['side']} x {decode['side']} PNG, bytes a pixel by mode: {modes}; stated "
        f"`DECODE_BYTES_PER_PIXEL` {decode['stated_per_pixel']:g}.",
        "",
        f"Every statement covers every measurement: **{'yes' if report['covered'] else 'NO'}**.",
        "",
    ]
    return lines


# -- the load part ---------------------------------------------------------------------------------


def serve_child(port: int, budget: int, max_concurrent: int, time_limit_s: float) -> None:
    """The server of the load part: untrained default Faster R-CNN and OverFeat under ``budget``.
    Prints the memory plan first, and the statuses it answered when it stops (SIGINT)."""
    import uvicorn

    from detlab.serve.app import create_app
    from detlab.serve.limits import Limits

    limits = Limits(memory_budget=budget, max_concurrent=max_concurrent, time_limit_s=time_limit_s)
    models = {name: untrained_predictor(name) for name in ("faster_rcnn", "overfeat")}
    app = create_app(models, limits)
    print(json.dumps(app.state.memory.describe()), flush=True)
    try:  # stopped by SIGINT, which uvicorn raises again once it has shut down
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=5)
    except KeyboardInterrupt:
        pass
    print(json.dumps({"answered": {str(k): v for k, v in sorted(app.state.answered.items())}}), flush=True)


def http_status(answer: bytes) -> int | str:
    """The status of a raw HTTP answer (``"none"``: the server closed without one)."""
    if not answer.startswith(b"HTTP/1.1 "):
        return "none"
    return int(answer[9:12])


def raw_exchange(port: int, request: bytes, close_after: bool, timeout: float) -> int | str:
    """Send ``request`` on a fresh connection; ``close_after``: hang up at once (a disconnect
    mid-upload), else read the answer's status."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        try:
            connection.sendall(request)
        except OSError:
            return "reset"
        if close_after:
            return "hung up"
        try:
            return http_status(connection.recv(64))
        except OSError:
            return "reset"


def multipart(image: bytes, boundary: str = "detlab", model: str = "faster_rcnn") -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )


def request_head(port: int, length: int | str, boundary: str = "detlab", extra: str = "") -> bytes:
    return (
        f"POST /api/detect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


def malformed_request(port: int, random, image: bytes) -> tuple[bytes, bool]:
    """One malformed request of a random kind: ``(bytes, hang up after sending)``."""
    body = multipart(image)
    kind = random.randrange(7)
    if kind == 0:  # random bytes for a body
        junk = random.randbytes(random.randrange(1, 4000))
        return request_head(port, len(junk)) + junk, False
    if kind == 1:  # the body cut anywhere, hung up
        return request_head(port, len(body)) + body[: random.randrange(len(body))], True
    if kind == 2:  # one byte of the framing flipped
        at = random.randrange(min(len(body), 400))
        flipped = body[:at] + bytes([random.randrange(256)]) + body[at + 1 :]
        return request_head(port, len(flipped)) + flipped, False
    if kind == 3:  # an absurd Content-Length
        return request_head(port, "9" * random.choice([19, 100, 5000])) + body[:100], False
    if kind == 4:  # another boundary than the body's
        return request_head(port, len(body), boundary="other") + body, False
    if kind == 5:  # junk header values
        origin = random.choice(["null", "http://evil.example", "\x7f"])
        extra = f"Origin: {origin}\r\nX-Junk: {'a' * 5000}\r\n"
        return request_head(port, len(body), extra=extra) + body, False
    return request_head(port, len(body)).replace(b"127.0.0.1", b"evil.example", 1) + body, False


class Load:
    """The clients of the load part, sharing a stop time and what they saw."""

    def __init__(self, port: int, stop_at: float, overfeat_image: bytes):
        import threading
        from collections import Counter

        self.port, self.stop_at, self.overfeat_image = port, stop_at, overfeat_image
        self.lock = threading.Lock()
        self.statuses: dict[str, Counter] = {
            kind: Counter() for kind in ("healthy", "overfeat", "hostile", "fuzz")
        }
        self.healthy_seconds: list[float] = []
        self.overfeat_seconds: list[float] = []

    def seen(self, kind: str, status, seconds: float | None = None) -> None:
        with self.lock:
            self.statuses[kind][str(status)] += 1
            if seconds is not None and status == 200:
                (self.healthy_seconds if kind == "healthy" else self.overfeat_seconds).append(seconds)

    def poster(self, kind: str, image: bytes, model: str) -> None:
        import httpx

        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=180) as client:
            while time.monotonic() < self.stop_at:
                started = time.perf_counter()
                try:
                    status = client.post(
                        "/api/detect", files={"image": ("a.png", image, "image/png")}, data={"model": model}
                    ).status_code
                except httpx.TransportError as error:
                    status = type(error).__name__
                self.seen(kind, status, time.perf_counter() - started)

    def staller(self, slow: bool) -> None:
        """Uploads that never finish: 1 KiB and silence, or 16 bytes every half second."""
        import socket

        body = multipart(noise_png(256))
        while time.monotonic() < self.stop_at:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as connection:
                    connection.settimeout(0.5)
                    connection.sendall(request_head(self.port, len(body)) + body[:1024])
                    sent, answer = 1024, b""
                    while time.monotonic() < self.stop_at and not answer:
                        if slow and sent < len(body):
                            connection.sendall(body[sent : sent + 16])
                            sent += 16
                        try:
                            answer = connection.recv(64)
                        except TimeoutError:
                            continue
                        except OSError:
                            break
                    self.seen("hostile", http_status(answer) if answer else "held to the end")
            except OSError as error:
                self.seen("hostile", type(error).__name__)

    def fuzzer(self, seed: int) -> None:
        import random as random_module

        random, image = random_module.Random(seed), noise_png(48)
        while time.monotonic() < self.stop_at:
            request, hang_up = malformed_request(self.port, random, image)
            try:
                status = raw_exchange(self.port, request, hang_up, timeout=30)
            except OSError as error:
                status = type(error).__name__
            self.seen("fuzz", status)


def start_server(args, log) -> tuple[subprocess.Popen, int, dict]:
    """The server subprocess, once it answers ``/healthz``: ``(process, port, memory plan)``."""
    import httpx
    from bench_serve import free_port

    port = free_port()
    command = [
        sys.executable,
        __file__,
        "--child-server",
        str(port),
        str(args.memory_budget),
        str(args.max_concurrent),
        str(args.time_limit_s),
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    plan = json.loads(server.stdout.readline())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server, port, plan
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not answer /healthz within 120 s")


def run_clients(args, port: int, overfeat_side: int) -> tuple[Load, list[int]]:
    """Every client of the load part for ``args.duration`` seconds; ``(load, server RSS samples)``."""
    import threading

    from bench_serve import rss_mb

    load = Load(port, time.monotonic() + args.duration, noise_png(overfeat_side))
    hostile = args.clients // 2
    healthy = args.clients - hostile - 2
    workers = [threading.Thread(target=load.staller, args=(index % 2 == 1,)) for index in range(hostile)]
    workers += [
        threading.Thread(target=load.poster, args=("healthy", SAMPLE.read_bytes(), "faster_rcnn"))
        for _ in range(healthy)
    ]
    workers += [
        threading.Thread(target=load.poster, args=("overfeat", load.overfeat_image, "overfeat")),
        threading.Thread(target=load.fuzzer, args=(0,)),
    ]
    for worker in workers:
        worker.start()
    samples = []
    while any(worker.is_alive() for worker in workers):
        samples.append(int(rss_mb(args.server_pid) * MIB))
        time.sleep(0.2)
    return load, samples


def predictor_alone(repeats: int) -> dict:
    """``Predictor.predict`` of the healthy clients' model on their image, in this process."""
    import statistics

    import torch

    from detlab.data.images import load_image

    torch.set_num_threads(2)
    predictor, image = untrained_predictor("faster_rcnn"), load_image(SAMPLE)
    predictor.predict(image)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict(image, 0.5)
        seconds.append(time.perf_counter() - started)
    return {
        "median_ms": round(statistics.median(seconds) * 1000, 1),
        "images_per_s": round(len(seconds) / sum(seconds), 2),
    }


def load_part(args) -> dict:
    import math
    import tempfile

    from bench_serve import percentile, rss_mb

    with tempfile.TemporaryFile("w+") as log:
        server, port, plan = start_server(args, log)
        args.server_pid = server.pid
        overfeat_side = math.isqrt(plan["max_pixels"]["overfeat"])
        load, samples = run_clients(args, port, overfeat_side)
        peak_hwm = rss_mb(server.pid, "VmHWM") * MIB
        server.send_signal(signal.SIGINT)
        answered = json.loads(server.communicate(timeout=60)[0].strip().splitlines()[-1])["answered"]
        log.seek(0)
        server_log = log.read()
    healthy = sorted(load.healthy_seconds)
    statuses = {kind: dict(counter) for kind, counter in load.statuses.items()}
    server_errors = sum(count for status, count in answered.items() if status.startswith("5"))
    return {
        **stamp(),
        "clients": args.clients,
        "duration_s": args.duration,
        "memory_budget": args.memory_budget,
        "max_concurrent": args.max_concurrent,
        "time_limit_s": args.time_limit_s,
        "plan": plan,
        "overfeat_image": f"{overfeat_side} x {overfeat_side}",
        "statuses": statuses,
        "server_answered": answered,
        "requests_sent": sum(sum(counter.values()) for counter in load.statuses.values()),
        "fuzz_inputs": sum(load.statuses["fuzz"].values()),
        "healthy": {
            "answered": len(healthy),
            "per_s": round(len(healthy) / args.duration, 2),
            "p50_ms": round(percentile(healthy, 0.5) * 1000, 1) if healthy else None,
            "p99_ms": round(percentile(healthy, 0.99) * 1000, 1) if healthy else None,
        },
        "overfeat_answered": len(load.overfeat_seconds),
        "server_5xx": server_errors,
        "tracebacks_in_log": server_log.count("Traceback"),
        "rss_peak_sampled": max(samples),
        "rss_hwm": int(peak_hwm),
        "within_budget": max(max(samples), peak_hwm) <= args.memory_budget,
        "predictor": predictor_alone(args.predictor_repeats),
    }


def load_markdown(report: dict) -> list[str]:
    healthy, alone, plan = report["healthy"], report["predictor"], report["plan"]
    statuses = "; ".join(
        f"{kind}: " + ", ".join(f"{status} x {count}" for status, count in sorted(seen.items()))
        for kind, seen in report["statuses"].items()
    )
    server = ", ".join(f"{status} x {count}" for status, count in report["server_answered"].items())
    hostile = report["clients"] // 2
    return [
        "## Hostile load on 127.0.0.1",
        "",
        *header_lines(report),
        f"{report['clients']} clients for {report['duration_s']:g} s against untrained default Faster R-CNN and "
        f"OverFeat models, `--memory-budget {report['memory_budget'] // MIB}M --max-concurrent "
        f"{report['max_concurrent']} --time-limit-s {report['time_limit_s']:g}` (other limits default): {hostile} "
        f"hostile (half stall their uploads after 1 KiB, half send 16 bytes every half second), one uploading "
        f"{report['overfeat_image']} noise PNGs (OverFeat's pixel limit under the budget: "
        f"{plan['max_pixels']['overfeat']} pixels) to OverFeat, one sending malformed requests, "
        f"{report['clients'] - hostile - 2} healthy clients detecting a sample with Faster R-CNN.",
        "",
        "| | value |",
        "|---|---|",
        f"| healthy requests answered | {healthy['answered']} ({healthy['per_s']:.2f} a second) |",
        f"| healthy latency p50 / p99 | {healthy['p50_ms']} / {healthy['p99_ms']} ms |",
        f"| `Predictor.predict` alone, same image | {alone['median_ms']} ms ({alone['images_per_s']:.2f} images/s) |",
        f"| OverFeat requests at the pixel limit answered | {report['overfeat_answered']} |",
        f"| requests sent (all clients) / malformed inputs tried | {report['requests_sent']} / {report['fuzz_inputs']} |",
        f"| 5xx answered by the server | **{report['server_5xx']}** (tracebacks in its log: {report['tracebacks_in_log']}) |",
        f"| server peak RSS (sampled / VmHWM) vs budget | {report['rss_peak_sampled'] / MIB:.0f} / "
        f"{report['rss_hwm'] / MIB:.0f} MiB vs {report['memory_budget'] / MIB:.0f} MiB: "
        f"**{'within' if report['within_budget'] else 'OVER'}** |",
        "",
        f"What the clients saw: {statuses}.  ",
        f"What the server answered: {server}.",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("memory", "load", "all"), default="all")
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--overfeat-sides", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--child-timeout", type=float, default=900)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of load")
    parser.add_argument("--memory-budget", default="3G", help="the server's --memory-budget")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--time-limit-s", type=float, default=60.0)
    parser.add_argument("--predictor-repeats", type=int, default=30)
    parser.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-server", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        print(json.dumps(measure_child(args.child_memory[0], int(args.child_memory[1]))))
        return 0
    if args.child_server:
        port, budget, concurrent, time_limit = args.child_server
        serve_child(int(port), int(budget), int(concurrent), float(time_limit))
        return 0
    from detlab.serve.limits import parse_bytes

    args.memory_budget = parse_bytes(args.memory_budget)
    path = RESULTS / f"{RESULTS_NAME}.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    if args.part in ("memory", "all"):
        report["memory"] = memory_part(args)
    if args.part in ("load", "all"):
        report["load"] = load_part(args)
    lines = ["# detlab serve: memory and hostile load", ""]
    lines += memory_markdown(report["memory"]) if "memory" in report else []
    lines += load_markdown(report["load"]) if "load" in report else []
    write_results(RESULTS_NAME, report, "\n".join(lines))
    print("\n".join(lines))
    memory_ok = report.get("memory", {}).get("covered", True)
    load = report.get("load", {})
    return 0 if memory_ok and load.get("within_budget", True) and not load.get("server_5xx") else 1


if __name__ == "__main__":
    sys.exit(main())
