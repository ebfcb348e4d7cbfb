"""Loopback load test of ``detlab serve``: a real server (``python -m detlab serve`` in a
subprocess, bound to 127.0.0.1) answers ``--requests`` detections of one image from ``--clients``
concurrent clients (threads with keep-alive connections), stopping at ``--time-cap`` seconds.

Reports throughput, latency percentiles (p50, p95, p99), errors by status, the server process's
resident memory (``VmRSS`` of ``/proc/PID/status``) after a warm-up and after the load, checked
against a stated bound on its growth (``--rss-growth-bound-mb``), and, with the server stopped,
the raw ``Predictor.predict`` throughput on the same image in this process: the difference is
what serving costs (HTTP, multipart, decoding, JSON, the thread hand-off). The clients run on the
same machine as the server and take some of its CPU.

Usage (from the repository root, under the shared CPU lock), on a trained run such as the one
``make demo`` leaves in ``demo/faster_rcnn`` (or any ``detlab train`` run):
  PYTHONPATH=src flock /tmp/detlab-cpu.lock .venv/bin/python benchmarks/bench_serve.py \\
      --checkpoint demo/faster_rcnn/best
Results: ``benchmarks/results/<results-name>.{json,md}`` (default ``serve``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import torch
from common import REPO, header_lines, stamp, write_results

SAMPLE = REPO / "src" / "detlab" / "serve" / "static" / "samples" / "shapes-1.png"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """``field`` (``VmRSS``: resident now; ``VmHWM``: its peak) of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"/proc/{pid}/status has no {field}")


class Server:
    """``python -m detlab serve`` in a subprocess on 127.0.0.1 (``with`` block); its log in a file."""

    def __init__(self, checkpoint: str, max_concurrent: int, queue_size: int, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "detlab",
            "serve",
            "--checkpoint",
            checkpoint,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-concurrent",
            str(max_concurrent),
            "--queue-size",
            str(queue_size),
            "--log-level",
            "warning",
        ]
        self.log_path = log_dir / "server.log"

    def __enter__(self) -> Server:
        import httpx

        environment = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            self.command, stdout=self.log, stderr=subprocess.STDOUT, env=environment
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited ({self.process.returncode}): {self.log_path.read_text()[-2000:]}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(
            f"the server did not answer /healthz within 180 s: {self.log_path.read_text()[-2000:]}"
        )

    def __exit__(self, *exc_info) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def load_test(url: str, image: bytes, fields: dict, clients: int, requests: int, time_cap_s: float) -> dict:
    """``requests`` POSTs of ``image`` from ``clients`` threads (or as many as fit in ``time_cap_s``):
    each request's seconds and status."""
    import httpx

    lock, issued, latencies, statuses = threading.Lock(), [0], [], Counter()
    stop_at = time.monotonic() + time_cap_s

    def client() -> None:
        with httpx.Client(timeout=120) as session:
            while time.monotonic() < stop_at:
                with lock:
                    if issued[0] >= requests:
                        return
                    issued[0] += 1
                started = time.perf_counter()
                try:
                    status = session.post(
                        url + "/api/detect", files={"image": ("image.png", image, "image/png")}, data=fields
                    ).status_code
                except httpx.TransportError as error:
                    status = type(error).__name__
                seconds = time.perf_counter() - started
                with lock:
                    latencies.append(seconds)
                    statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.perf_counter() - started, "latencies": latencies, "statuses": statuses}


@torch.no_grad()
def predictor_throughput(
    checkpoint: str, image_path: Path, threshold: float, images: int, time_cap_s: float
) -> dict:
    """``Predictor.predict`` on the decoded image, in this process, one call after another."""
    from detlab.data.images import load_image
    from detlab.engine.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    image = load_image(image_path)
    for _ in range(5):
        predictor.predict(image, threshold)
    seconds, stop_at = [], time.monotonic() + time_cap_s
    while len(seconds) < images and time.monotonic() < stop_at:
        started = time.perf_counter()
        predictor.predict(image, threshold)
        seconds.append(time.perf_counter() - started)
    return {
        "calls": len(seconds),
        "images_per_s": round(len(seconds) / sum(seconds), 2),
        "median_ms": round(statistics.median(seconds) * 1000, 2),
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def markdown(report: dict) -> str:
    load, server, direct = report["load"], report["server"], report["predictor"]
    errors = ", ".join(f"{status}: {count}" for status, count in load["errors"].items()) or "none"
    lines = [
        "# detlab serve: loopback load test",
        "",
        *header_lines(report),
        f"Checkpoint `{report['checkpoint']}` ({report['method']}), image `{report['image']}` "
        f"({report['image_bytes']} bytes), score threshold {report['score_threshold']}; server: "
        f"`--max-concurrent {report['max_concurrent']} --queue-size {report['queue_size']}`, "
        f"{report['clients']} concurrent clients on the same machine, keep-alive connections.",
        "",
        "| | value |",
        "|---|---|",
        f"| requests answered | {load['completed']} of {report['requests']} ({load['seconds']:.1f} s; time cap {report['time_cap_s']:g} s) |",
        f"| throughput | **{load['requests_per_s']:.2f} requests/s** |",
        f"| latency p50 / p95 / p99 | {load['p50_ms']:.1f} / {load['p95_ms']:.1f} / {load['p99_ms']:.1f} ms |",
        f"| errors | {errors} |",
        f"| server RSS after warm-up -> after the load (peak) | {server['rss_before_mb']:.1f} -> {server['rss_after_mb']:.1f} MiB "
        f"({server['rss_peak_mb']:.1f}) |",
        f"| RSS growth | {server['rss_growth_mb']:+.1f} MiB, bound {report['rss_growth_bound_mb']:g} MiB: "
        f"**{'within' if server['rss_within_bound'] else 'OVER'}** |",
        f"| `Predictor.predict` in process, same image | {direct['images_per_s']:.2f} images/s "
        f"(median {direct['median_ms']:.1f} ms, {direct['calls']} calls) |",
        f"| serving's share | {report['serving_overhead_ms']:.1f} ms a request on top of the prediction "
        f"(1 / throughput - 1 / predictor throughput) |",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", required=True, help="RUN/best of a trained run (make demo: demo/faster_rcnn/best)"
    )
    parser.add_argument(
        "--image", type=Path, default=SAMPLE, help="the image every request sends (a bundled sample)"
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--time-cap", type=float, default=600.0, help="seconds of load at most")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--max-concurrent", type=int, default=1, help="the server's inference slots")
    parser.add_argument(
        "--queue-size", type=int, default=None, help="the server's queue (default: --clients)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="requests before the first memory reading")
    parser.add_argument(
        "--rss-growth-bound-mb",
        type=float,
        default=50.0,
        help="resident memory the server may gain under the load after the warm-up",
    )
    parser.add_argument("--predictor-images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the in-process predictor")
    parser.add_argument("--results-name", default="serve")
    args = parser.parse_args()
    queue_size = args.clients if args.queue_size is None else args.queue_size
    image = args.image.read_bytes()
    fields = {"score_threshold": str(args.score_threshold)}

    with (
        tempfile.TemporaryDirectory() as log_dir,
        Server(args.checkpoint, args.max_concurrent, queue_size, Path(log_dir)) as server,
    ):
        import httpx

        method = httpx.get(server.url + "/api/models").json()["models"][0]["method"]
        warmup = load_test(server.url, image, fields, 1, args.warmup, args.time_cap)
        if set(warmup["statuses"]) != {200}:
            raise RuntimeError(f"warm-up requests failed: {dict(warmup['statuses'])}; see the server's log")
        rss_before = rss_mb(server.process.pid)
        load = load_test(server.url, image, fields, args.clients, args.requests, args.time_cap)
        rss_after, rss_peak = rss_mb(server.process.pid), rss_mb(server.process.pid, "VmHWM")

    torch.set_num_threads(args.threads)
    direct = predictor_throughput(
        args.checkpoint, args.image, args.score_threshold, args.predictor_images, args.time_cap
    )
    latencies = load["latencies"]
    completed = load["statuses"].get(200, 0)
    requests_per_s = completed / load["seconds"]
    report = {
        **stamp(),
        "checkpoint": args.checkpoint,
        "method": method,
        "image": str(args.image.resolve().relative_to(REPO))
        if args.image.resolve().is_relative_to(REPO)
        else str(args.image),
        "image_bytes": len(image),
        "score_threshold": args.score_threshold,
        "clients": args.clients,
        "requests": args.requests,
        "time_cap_s": args.time_cap,
        "max_concurrent": args.max_concurrent,
        "queue_size": queue_size,
        "rss_growth_bound_mb": args.rss_growth_bound_mb,
        "load": {
            "completed": completed,
            "seconds": round(load["seconds"], 2),
            "requests_per_s": round(requests_per_s, 3),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "p95_ms": round(percentile(latencies, 0.95) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "errors": {str(status): count for status, count in load["statuses"].items() if status != 200},
        },
        "server": {
            "rss_before_mb": round(rss_before, 1),
            "rss_after_mb": round(rss_after, 1),
            "rss_peak_mb": round(rss_peak, 1),
            "rss_growth_mb": round(rss_after - rss_before, 1),
            "rss_within_bound": rss_after - rss_before <= args.rss_growth_bound_mb,
        },
        "predictor": direct,
        "serving_overhead_ms": round((1 / requests_per_s - 1 / direct["images_per_s"]) * 1000, 2)
        if completed
        else None,
    }
    write_results(args.results_name, report, markdown(report))
    print(markdown(report))
    return 0 if report["server"]["rss_within_bound"] and not report["load"]["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
