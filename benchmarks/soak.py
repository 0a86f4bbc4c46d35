"""Soak: stp-run on an endless live source for N minutes, sampling its memory (RSS) and throughput.

    python benchmarks/soak.py --engine BUNDLE/model.onnx --minutes 20 [--source URI] [--interval 10] [--json OUT]

Without --source a real RTSP server on 127.0.0.1 serves an endless live test pattern (tests/rtsp_server.py, run
with the system Python that has GStreamer's bindings). stp-run runs as a child process exactly as an appliance
runs it (`--output events.jsonl`, default flags otherwise); every --interval seconds the script reads the child's
resident memory (VmRSS in /proc) and the snippets it has written so far. At the end it stops the run with SIGTERM
(as `docker stop` does) and reports the exit code, the memory curve (first / last / max, and the slope of a least
squares line over the samples after --warmup minutes, in MB per hour) and the throughput (snippets per second,
per interval and overall). Memory that stays flat has a slope near 0; a leak shows as a steady positive slope.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def count_snippets(path: Path) -> int:
    """Frame events written so far (one per scored snippet); a partly written last line is not counted."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    return data.count(b'"type":"frame"')


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([SYSTEM_PYTHON, str(SERVER), str(port)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line.startswith("ready "):
        proc.kill()
        raise SystemExit(f"soak: the RTSP test server did not start ({line or 'no output'}); give --source URI")
    return proc, line.split(" ", 1)[1]


def slope_mb_per_hour(times: np.ndarray, values: np.ndarray) -> float:
    if len(times) < 2:
        return float("nan")
    return float(np.polyfit(times / 3600.0, values, 1)[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", required=True, help="bundle encoder file for stp-run --engine")
    p.add_argument("--source", help="live source URI (default: a local RTSP test server)")
    p.add_argument("--minutes", type=float, default=20.0, help="how long stp-run runs")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=2.0, help="minutes left out of the memory slope")
    p.add_argument("--json", help="write the samples and the summary here")
    args = p.parse_args(argv)

    server = None
    source = args.source
    if source is None:
        server, source = start_server()
    work = Path(tempfile.mkdtemp(prefix="stp-soak-"))
    events = work / "events.jsonl"
    cmd = [sys.executable, "-m", "stprompt.runtime.cli", "--engine", args.engine, source, "--output", str(events),
           "--quiet"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run = subprocess.Popen(cmd, stderr=open(work / "stderr.log", "w"), env=env)  # noqa: SIM115
    samples: list[dict] = []
    t0 = time.monotonic()
    end = t0 + args.minutes * 60.0
    try:
        while time.monotonic() < end and run.poll() is None:
            time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
            t = time.monotonic() - t0
            samples.append({"t_s": round(t, 1), "rss_mb": rss_mb(run.pid), "snippets": count_snippets(events)})
            s = samples[-1]
            print(f"soak: {t / 60:6.1f} min  rss {s['rss_mb'] or 0:7.1f} MB  snippets {s['snippets']}", flush=True)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
        try:
            code = run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            code = run.wait()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    t = np.array([s["t_s"] for s in samples if s["rss_mb"] is not None], np.float64)
    rss = np.array([s["rss_mb"] for s in samples if s["rss_mb"] is not None], np.float64)
    steady = t >= args.warmup * 60.0
    snippets = [s["snippets"] for s in samples]
    rates = [(b - a) / args.interval for a, b in zip(snippets, snippets[1:], strict=False)]
    summary = {
        "minutes": round((samples[-1]["t_s"] if samples else 0.0) / 60.0, 2),
        "exit_code": code,
        "rss_mb": {"first": float(rss[0]) if len(rss) else None, "last": float(rss[-1]) if len(rss) else None,
                   "max": float(rss.max()) if len(rss) else None,
                   "slope_mb_per_hour_after_warmup": slope_mb_per_hour(t[steady], rss[steady])},  # fmt: skip
        "snippets": snippets[-1] if snippets else 0,
        "snippets_per_s": {
            "overall": snippets[-1] / samples[-1]["t_s"] if samples and samples[-1]["t_s"] else None,
            "min_interval": min(rates) if rates else None,
            "max_interval": max(rates) if rates else None,
        },
        "source": source if args.source else "tests/rtsp_server.py (320x240, 25 fps live test pattern, H.264)",
        "engine": args.engine,
        "interval_s": args.interval,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "samples": samples}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
