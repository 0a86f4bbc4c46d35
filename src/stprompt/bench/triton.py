"""`stp-bench --triton`: how many camera streams one Triton server's encoder sustains.

    stp-bench --triton grpc://gpu-box:8001 --engine bundle/model.onnx --streams 1,2,4,8 --duration 10 --json t.json

Each stream is a thread of this process with its own `TritonBackend` (its own gRPC client, as separate appliances
are) calling the encoder back to back with one sampled frame's crops per call (random CLIP-normalised-looking
float32 crops made once per stream; every crop encoded, no motion gating). Each concurrency level runs `--warmup`
untimed calls per stream, then `--duration` seconds of wall time; the server's own statistics for the model are
read just before and just after the timed window, so the executed batch sizes and queue times are the server's
view of the same window. The estimate divides the best measured crop rate by what one camera needs:
crops per sampled frame x (camera fps / the bundle's stride).

Nothing here waits for a server: unreachable at the start, or during the run, ends the bench with one line
(`reconnect=0`), because a capacity number measured across an outage means nothing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError, first_line
from .timing import Timing

CHECK_TIMEOUT_S = 10.0  # the bench's own metadata / statistics calls
SETTLE_S, SETTLE_STEP_S = 2.0, 0.05  # how long, and how often, statistics are read until they stop moving
DEFAULT_STREAMS = "1,2,4,8"


def parse_streams(text: str) -> list[int]:
    """`1,2,4,8` -> those levels (sorted, unique); one number N -> 1, 2, 4, ... up to N (N included)."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--streams {text!r}: give a comma separated list (1,2,4,8) or a maximum (8)") from None
    if not values or min(values) < 1:
        raise UserError(f"--streams {text!r}: stream counts must be whole numbers >= 1")
    if len(values) == 1:
        top = values[0]
        levels, n = [], 1
        while n < top:
            levels.append(n)
            n *= 2
        return [*levels, top]
    return sorted(set(values))


def synthetic_crops(n: int, pre, seed: int, pixels: bool = False) -> np.ndarray:
    """[n, 3, S, S] float32: uniform [0, 1] pixels through the bundle's mean / std (what real crops look like to
    the encoder, without a video); with `pixels`, [n, S, S, 3] uniform uint8 BGR crops (for a server that takes
    them)."""
    rng = np.random.default_rng(seed)
    if pixels:
        return rng.integers(0, 256, (n, pre.size, pre.size, 3), dtype=np.uint8)
    pixels = rng.random((n, 3, pre.size, pre.size), dtype=np.float32)
    mean = np.asarray(pre.mean, np.float32)[None, :, None, None]
    std = np.asarray(pre.std, np.float32)[None, :, None, None]
    return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)


def _reason(err: BaseException) -> str:
    """A tritonclient exception as `STATUS: first line`."""
    message = getattr(err, "message", None)
    text = first_line(Exception(message() if callable(message) else str(err)))
    status = getattr(err, "status", None)
    status = status() if callable(status) else None
    return f"{str(status).replace('StatusCode.', '')}: {text}" if status else text


def _count(d: dict[str, Any], *keys: str) -> int:
    """A counter from Triton's JSON statistics (uint64 are strings there; zero counters are left out)."""
    for key in keys:
        d = d.get(key, {}) if isinstance(d, dict) else {}
    return int(d) if isinstance(d, (int, str)) and str(d) else 0


class ServerProbe:
    """The bench's own gRPC client: server metadata, the model's config and its inference statistics."""

    def __init__(self, address: str, model: str, url: str):
        try:
            import tritonclient.grpc as grpc
        except ImportError:
            raise UserError("--triton needs tritonclient: pip install 'stprompt[triton]'") from None
        self.grpc = grpc
        self.address, self.model, self.url = address, model, url
        self.client = self.grpc.InferenceServerClient(address)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self.grpc.InferenceServerException as err:
            raise UserError(f"Triton {self.url}: {what} failed: {_reason(err)}") from None

    def metadata(self) -> dict[str, Any]:
        """Server name and version; a server that cannot be reached ends the bench here, with one line."""
        try:
            meta = self.client.get_server_metadata(as_json=True, client_timeout=CHECK_TIMEOUT_S)
        except self.grpc.InferenceServerException as err:
            raise UserError(f"Triton server {self.url} unreachable: {_reason(err)} (stp-bench does not wait for "
                            "a server: start it first)") from None  # fmt: skip
        return {"name": meta.get("name", ""), "version": meta.get("version", ""),
                "extensions": list(meta.get("extensions", []))}  # fmt: skip

    def ready(self) -> None:
        """A live server still loading its models is refused here, with one line (clients would wait)."""
        if not self._call("is_server_ready", lambda: self.client.is_server_ready(client_timeout=CHECK_TIMEOUT_S)):
            raise UserError(f"Triton server {self.url} is live but not ready (still loading models?): try again "
                            "when it is")  # fmt: skip

    def config(self) -> dict[str, Any]:
        """What the model's config says about batching and instances (the server's GPUs are not visible here)."""
        raw = self._call("get_model_config", lambda: self.client.get_model_config(
            self.model, as_json=True, client_timeout=CHECK_TIMEOUT_S))  # fmt: skip
        raw = raw.get("config", raw)
        return {"max_batch_size": int(raw.get("max_batch_size", 0)), "backend": raw.get("backend", ""),
                "platform": raw.get("platform", ""), "dynamic_batching": raw.get("dynamic_batching"),
                "instance_group": raw.get("instance_group", [])}  # fmt: skip

    def counters(self) -> dict[str, int]:
        """The model's cumulative statistics, summed over its versions."""
        raw = self._call("get_inference_statistics", lambda: self.client.get_inference_statistics(
            self.model, as_json=True, client_timeout=CHECK_TIMEOUT_S))  # fmt: skip
        total = dict.fromkeys(("requests", "failed", "executions", "inferences", "queue_count", "queue_ns",
                               "compute_input_ns", "compute_infer_ns", "compute_output_ns"), 0)  # fmt: skip
        for s in raw.get("model_stats", []):
            stats = s.get("inference_stats", {})
            total["requests"] += _count(stats, "success", "count")
            total["failed"] += _count(stats, "fail", "count")
            total["executions"] += _count(s, "execution_count")
            total["inferences"] += _count(s, "inference_count")
            total["queue_count"] += _count(stats, "queue", "count")
            total["queue_ns"] += _count(stats, "queue", "ns")
            for part in ("compute_input", "compute_infer", "compute_output"):
                total[f"{part}_ns"] += _count(stats, part, "ns")
        return total

    def settled(self, at_least: int = 0, wait_s: float = SETTLE_S) -> dict[str, int]:
        """`counters()` once the server has booked what it answered: two reads `SETTLE_STEP_S` apart agree and
        at least `at_least` requests (succeeded or failed) are counted, or `wait_s` has passed (a response can
        reach the client just before its request is counted; other clients keep the counters moving)."""
        end = time.monotonic() + wait_s
        last = self.counters()
        while True:
            time.sleep(SETTLE_STEP_S)
            now = self.counters()
            if (now == last and now["requests"] + now["failed"] >= at_least) or time.monotonic() >= end:
                return now
            last = now

    def close(self) -> None:
        self.client.close()


def server_view(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """The model's statistics over the timed window: requests, executions, executed batch sizes, queue time."""
    d = {k: after[k] - before[k] for k in before}
    execs, reqs = d["executions"], d["requests"]
    compute = d["compute_input_ns"] + d["compute_infer_ns"] + d["compute_output_ns"]
    return {
        "requests": reqs, "failed": d["failed"], "executions": execs, "crops": d["inferences"],
        "avg_batch_requests": reqs / execs if execs else None,
        "avg_batch_crops": d["inferences"] / execs if execs else None,
        "queue_ms_per_request": d["queue_ns"] / d["queue_count"] / 1e6 if d["queue_count"] else None,
        "compute_ms_per_request": compute / reqs / 1e6 if reqs else None,
    }  # fmt: skip


def encode(backend, crops: np.ndarray) -> np.ndarray:
    """One encoder call as stp-run makes it: uint8 crops to a server that takes them, else float32."""
    return backend.encode_pixels(crops) if crops.dtype == np.uint8 else backend.encode(crops)


def run_level(backends: list, inputs: list[np.ndarray], warmup: int, duration: float,
              snapshot: Callable[[int], dict[str, int]], stop: threading.Event) -> dict[str, Any]:  # fmt: skip
    """All `backends` at once, one thread each: `warmup` untimed calls, then encode back to back for `duration`
    seconds from a common start. Returns the raw samples, wall time and the server counters around the window
    (`snapshot(n)`: the counters once at least n requests are booked)."""
    n = len(backends)
    latencies: list[list[float]] = [[] for _ in range(n)]
    ends = [0.0] * n
    errors: list[BaseException] = []
    marks: dict[str, Any] = {}

    def start() -> None:  # run by the last thread to finish warming up, before any is released
        marks["before"] = snapshot(0)
        marks["requests"] = sum(b.stats["requests"] for b in backends)
        marks["cpu"] = time.process_time()
        marks["t0"] = time.perf_counter()

    barrier = threading.Barrier(n, action=start)

    def stream(i: int) -> None:
        backend, x = backends[i], inputs[i]
        try:
            for _ in range(warmup):
                if stop.is_set():
                    break
                encode(backend, x)
            barrier.wait()
            end = marks["t0"] + duration
            while not stop.is_set():
                t = time.perf_counter()
                if t >= end:
                    break
                encode(backend, x)
                latencies[i].append(time.perf_counter() - t)
            ends[i] = time.perf_counter()
        except threading.BrokenBarrierError:  # another stream failed and aborted the barrier: its error is reported
            return
        except BaseException as err:  # noqa: BLE001 - handed to the main thread, which raises it
            errors.append(err)
            stop.set()
            barrier.abort()

    threads = [threading.Thread(target=stream, args=(i,), name=f"stp-bench-stream-{i}", daemon=True)
               for i in range(n)]  # fmt: skip
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException:  # Ctrl-C: the threads end after their call in flight
        stop.set()
        raise
    if errors:
        raise errors[0]
    wall = max(ends) - marks["t0"]
    cpu = time.process_time() - marks["cpu"]
    sent = sum(b.stats["requests"] for b in backends) - marks["requests"]
    before = marks["before"]
    after = snapshot(before["requests"] + before["failed"] + sent)
    return {"latencies": latencies, "wall_s": wall, "cpu_s": cpu, "before": before, "after": after,
            "requests": sent}  # fmt: skip


def level_row(n: int, raw: dict[str, Any], crops: int, cores: int) -> dict[str, Any]:
    """One concurrency level's numbers, JSON-ready."""
    samples = [s for lat in raw["latencies"] for s in lat]
    calls = len(samples)
    timing = Timing("encode", f"triton x{n}", "sampled frame", samples) if samples else None
    wall = raw["wall_s"]
    return {
        "streams": n,
        "sampled_frames": calls,  # encoder calls, one sampled frame's crops each
        "requests": raw["requests"],  # gRPC requests sent (one per call unless the server's max batch is smaller)
        "crops": calls * crops,
        "wall_s": wall,
        "crops_per_s": calls * crops / wall if wall > 0 else 0.0,
        "sampled_fps": calls / wall if wall > 0 else 0.0,
        "per_stream_sampled_frames": [len(lat) for lat in raw["latencies"]],
        "p50_ms": timing.percentile(50) if timing else None,
        "p90_ms": timing.percentile(90) if timing else None,
        "p99_ms": timing.percentile(99) if timing else None,
        "mean_ms": timing.mean_s * 1e3 if timing else None,
        "client_cpu_share": raw["cpu_s"] / (wall * cores) if wall > 0 else None,
        "server": server_view(raw["before"], raw["after"]),
    }


def estimate(levels: list[dict[str, Any]], crops: int, fps: float, stride: int) -> dict[str, Any]:
    """Camera streams the server sustains at the best measured rate: crops/s / (crops x fps / stride)."""
    best = max(levels, key=lambda r: r["crops_per_s"])
    per_stream_fps = fps / stride
    need = crops * per_stream_fps
    streams = best["crops_per_s"] / need
    return {
        "streams": streams, "whole_streams": math.floor(streams), "best_crops_per_s": best["crops_per_s"],
        "best_at_streams": best["streams"], "crops_per_sampled_frame": crops, "fps": fps, "stride": stride,
        "sampled_fps_per_stream": per_stream_fps, "crops_per_s_per_stream": need,
        "formula": f"streams = best crops/s / (crops per sampled frame x fps / stride) = {best['crops_per_s']:.1f} / "
                   f"({crops} x {fps:g} / {stride} = {need:.2f}) = {streams:.2f}",
        "assumes": "every crop encoded (no motion gating, which only lowers the load); the server's capacity as "
                   "reached from this client machine (see client_cpu_share)",
    }  # fmt: skip


def open_streams(engine: Path, url: str, n: int, stop: threading.Event, log: Callable[[str], None],
                 timeout_s: float = 30.0) -> tuple:  # fmt: skip
    """n TritonBackends on the server (the first through open_backend, which checks the bundle and the served
    config; the rest share its verified manifest), each its own gRPC client, none waiting for an outage."""
    from ..runtime.backends import open_backend
    from ..runtime.backends.triton import TritonBackend

    options = {"reconnect": 0, "timeout_s": timeout_s}
    events: list[dict[str, Any]] = []
    backends: list = []
    try:
        first, manifest = open_backend(engine, triton=url, triton_options=options)
        backends.append(first)
        for _ in range(1, n):
            backends.append(TritonBackend(url, manifest, **options))
        for b in backends:
            b.bind_run(events.append, stop.is_set)
    except BaseException:
        for b in backends:
            b.close()
        raise
    log(f"stp-bench: {n} Triton client(s) open on {backends[0].url} ({backends[0].role})")
    return backends, manifest, events


def bench(args, engine: Path, manifest_path: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The whole `--triton` run; the result dict `render` prints and stp-bench writes as JSON."""
    from .. import windows
    from ..runtime.backends.triton import parse_triton_url
    from .machine import machine_stamp, usable_cores

    levels = parse_streams(args.streams)
    if not args.duration > 0 or not args.fps > 0 or not args.triton_timeout > 0:
        raise UserError(f"--duration, --fps and --triton-timeout must be > 0, got {args.duration:g}, {args.fps:g} "
                        f"and {args.triton_timeout:g}")  # fmt: skip
    address, model = parse_triton_url(args.triton)
    url = f"grpc://{address}/{model}"
    probe = ServerProbe(address, model, url)
    stop = threading.Event()
    backends: list = []
    try:
        server = probe.metadata()  # unreachable: one line, before any client waits
        probe.ready()
        server.update(url=url, address=address, model=model)
        backends, manifest, events = open_streams(engine, args.triton, max(levels), stop, log, args.triton_timeout)
        server["role"] = backends[0].role
        server["config"] = probe.config()
        pre = manifest.preprocess
        crops = windows.crops_per_frame(pre=pre)
        pixels = backends[0].input_format == "uint8"  # the server normalises: the clients send uint8 crops
        inputs = [synthetic_crops(crops, pre, seed=i, pixels=pixels) for i in range(len(backends))]
        cores = usable_cores()
        rows = []
        for n in levels:
            log(f"stp-bench: triton {n} stream(s): {args.warmup} warm-up call(s) each, then {args.duration:g} s ...")
            raw = run_level(backends[:n], inputs[:n], args.warmup, args.duration, probe.settled, stop)
            row = level_row(n, raw, crops, cores)
            rows.append(row)
            log(f"stp-bench: triton {n} stream(s): {row['crops_per_s']:.1f} crops/s, p50 "
                f"{_ms(row['p50_ms'])} ms, {row['sampled_frames']} sampled frames")  # fmt: skip
        if not any(r["sampled_frames"] for r in rows):
            raise UserError(f"Triton {url}: no encoder call finished within --duration {args.duration:g} s")
    finally:
        stop.set()
        for b in backends:
            b.close()
        probe.close()
    shape = f"uint8 [{crops},{pre.size},{pre.size},3]" if pixels else f"float32 [{crops},3,{pre.size},{pre.size}]"
    timed = (f"encoder requests through Triton gRPC, one sampled frame ({crops} crops, {shape}) "
             "each; N client threads in this process (N per row), each its own "
             f"gRPC client calling back to back; wall time {args.duration:g} s per row after {args.warmup} untimed "
             "call(s) per thread; latency = one encoder call, request sent to embeddings back on the host; "
             "crops/s = all threads' crops / wall time from the common start to the last answer; server columns = "
             "the model's Triton statistics over the same window (other clients' requests included)")  # fmt: skip
    bundle = {"manifest": str(manifest_path), "clip": manifest.clip, "classes": len(manifest.classes),
              "stride": manifest.stride, "engine": str(engine)}  # fmt: skip
    settings = {"streams": levels, "duration_s": args.duration, "warmup": args.warmup, "fps": args.fps,
                "reconnect": 0, "timeout_s": args.triton_timeout}  # fmt: skip
    return {
        "format": "stprompt-bench-triton/1",
        "bundle": bundle,
        "machine": machine_stamp(),  # the client's: the server's GPUs are not visible over gRPC
        "server": server,
        "settings": settings,
        "timed": timed,
        "crops_per_sampled_frame": crops,
        "levels": rows,
        "estimate": estimate(rows, crops, args.fps, manifest.stride),
        "engine_events": events,
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render(result: dict[str, Any]) -> str:
    """The stdout table."""
    from .machine import describe

    s, e = result["server"], result["estimate"]
    batching = s.get("config", {}).get("dynamic_batching")
    delay = (batching or {}).get("max_queue_delay_microseconds")
    out = [
        f"stp-bench --triton  {result['bundle']['clip']}  ({result['bundle']['manifest']})",
        f"server     {s['url']}  model {s['model']} (hosted role {s['role'] or '?'})  {s['name']} {s['version']}  "
        f"max_batch_size {s['config']['max_batch_size']}, dynamic batching "
        + ("off" if batching is None else f"on (max queue delay {delay or 0} us)"),
        f"client     {describe(result['machine'])}",
        f"timed      {result['timed']}",
        "",
        f"{'streams':>7}{'frames':>8}{'requests':>9}{'crops/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'wall s':>8}{'client CPU':>11}  |{'srv execs':>10}{'req/exec':>9}{'crops/exec':>11}{'queue ms':>9}"
        f"{'compute ms':>11}",
    ]  # fmt: skip
    for r in result["levels"]:
        v = r["server"]
        out.append(f"{r['streams']:>7}{r['sampled_frames']:>8}{r['requests']:>9}{r['crops_per_s']:>10.1f}"
                   f"{_ms(r['p50_ms']):>9}{_ms(r['p90_ms']):>9}{_ms(r['p99_ms']):>9}{r['wall_s']:>8.2f}"
                   f"{_num(r['client_cpu_share'], '.0%'):>11}  |{v['executions']:>10}"
                   f"{_num(v['avg_batch_requests'], '.2f'):>9}{_num(v['avg_batch_crops'], '.1f'):>11}"
                   f"{_num(v['queue_ms_per_request'], '.2f'):>9}"
                   f"{_num(v['compute_ms_per_request'], '.2f'):>11}")  # fmt: skip
    out += [
        "           frames = encoder calls (one sampled frame each); latency per call; client CPU = this process's CPU "
        "time / (wall x cores); srv = the server's statistics: executions, requests and crops per execution "
        "(batching), queue and compute ms per request",
        "",
        f"estimate   {e['formula']}",
        f"           {_whole(e['whole_streams'])} at {e['fps']:g} fps (one sampled frame every {e['stride']} "
        f"frames), best rate at {e['best_at_streams']} client stream(s); assumes {e['assumes']}",
    ]  # fmt: skip
    return "\n".join(out)


def _whole(n: int) -> str:
    """The whole camera streams a server sustains, in words when it is none or one."""
    return "less than one camera stream" if n < 1 else "1 camera stream" if n == 1 else f"{n} camera streams"
