"""`stp-bench`: FLOPs and parameters per stage, latency p50/p90/p99 per stage, throughput per backend.

    stp-bench --clip ViT-B-16:random                 # random-weights bundle built on the fly, every backend here
    stp-bench --engine bundle/model.onnx --json r.json   # a given bundle file
    stp-bench --engine bundle/model.json --backends ort-fp32,ort-int8,torch-bf16,baseline
    stp-bench --engine bundle/model.onnx --triton grpc://gpu-box:8001 --streams 1,2,4,8   # a Triton server's capacity
    stp-bench --engine bundle/model.json --backends sim:16,sim:125 --streams 4   # the host against a simulated GPU

What is timed is printed beside every number and stored in the JSON (see `stprompt.bench.stages`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..cliformat import HelpFormatter
from ..errors import UserError, cli_entry
from ..fileio import atomic_write_text, check_writable
from ..runtime.backends.sim import parse_sim
from .accuracy import render as accuracy_lines
from .host import render as host_lines

BACKENDS = ("ort-fp32", "ort-fp16", "ort-int8", "openvino-bf16", "openvino-int8", "trt", "torch-fp32", "torch-bf16",
            "torch-cuda-fp16", "baseline")  # fmt: skip
_FILES = {"ort-fp32": "model.onnx", "ort-fp16": "model.fp16.onnx", "ort-int8": "model.int8.onnx", "trt": "model.plan",
          "openvino-bf16": "model.xml", "openvino-int8": "model.int8.xml",
          "torch-fp32": "model.pt", "torch-bf16": "model.pt", "torch-cuda-fp16": "model.pt"}  # fmt: skip
_BUILT = {"trt": "stp-build", "openvino-bf16": "stp-build --openvino", "openvino-int8": "stp-build --openvino --int8"}
_TORCH = {"torch-fp32": ("cpu", "fp32"), "torch-bf16": ("cpu", "bf16"), "torch-cuda-fp16": ("cuda", "fp16")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stp-bench",
        description="FLOPs, per-stage latency (p50/p90/p99 after warm-up) and throughput per backend of the STPrompt "
        "pipeline on this machine; a table on stdout, everything with the machine stamp in --json.",
        formatter_class=HelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--engine", help="a bundle file (model.json, .onnx, .plan, .pt): measure that bundle")
    src.add_argument("--clip", metavar="SPEC", help="no bundle: export a random-weights bundle of this CLIP (e.g. "
                     "ViT-B-16:random) to a temporary folder (or --keep) and measure it")  # fmt: skip
    p.add_argument("--backends", default="auto", help=f"comma separated from {', '.join(BACKENDS)}, sim:MS; 'auto': "
                   "with --engine, that file's backend and the baseline; with --clip, every backend this machine "
                   "has. sim:MS is a simulated GPU encoder for pipeline measurements only: each call holds MS ms per "
                   "50 crops without using the CPU, fixed embeddings, the bundle's real heads (sim:16 ~ a data-centre "
                   "GPU, sim:125 ~ an embedded one, ViT-B/16 FP16); the host cuts float32 crops (as ONNX Runtime), "
                   "sim:MS:u8 uint8 crops the device normalises (as TensorRT with model.pre.plan), sim:MS:device "
                   "only 224x224 frames, the windows cut on the device (as the PyTorch CUDA backend)")  # fmt: skip
    p.add_argument("--providers", help="ONNX Runtime providers for the ort-* backends (default CPU)")
    p.add_argument("--keep", metavar="DIR", help="with --clip: write the bundle here and keep it (reuse: --engine)")
    p.add_argument("--frames", type=int, default=48, help="video frames for the end-to-end run (stride 16: 3 sampled)")
    p.add_argument("--size", default="640x360", help="test video frame size WxH")
    p.add_argument("--video", metavar="FILE", help="time decode and the end-to-end runs on this video instead of the "
                   "generated test video (its own size; decode cost depends on the content and codec)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before each stage")
    p.add_argument("--repeats", type=int, default=3, help="least timed calls per stage (fast stages run >= 0.5 s)")
    p.add_argument("--turns", type=int, default=1, help="N > 1: time the encode stage of every backend in N rounds "
                   "taking turns (all open at once; --repeats calls each per round), so a machine whose speed drifts "
                   "slows every backend alike")  # fmt: skip
    p.add_argument("--gate", type=float, default=0.0, help="motion gating threshold for the end-to-end run")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOPs table (needs open_clip for the config)")
    p.add_argument("--json", metavar="FILE", help="write the full results here (atomically)")
    t = p.add_argument_group("Triton capacity (--triton; see stprompt.bench.triton)")
    t.add_argument("--triton", metavar="URL", help="grpc://HOST:PORT[/MODEL]: measure this bundle's encoder on that "
                   "Triton server with 1..N concurrent client streams and estimate the camera streams it sustains "
                   "(needs --engine naming the bundle's model.onnx; the other measurements are not run). Does "
                   "not wait for the server: unreachable at the start or during the run ends stp-bench with one "
                   "line")  # fmt: skip
    t.add_argument("--streams", help="without --triton: run the end-to-end pipeline on N concurrent streams of the "
                   "test video (--frames each) and measure the host: CPU per stage per sampled frame, the host "
                   "ceiling (instant encoder, sim:0) and the cores 150 streams need. With --triton: concurrency "
                   "levels, a comma separated list or a maximum N (1,2,4..N; default 1,2,4,8); each stream is a "
                   "thread with its own gRPC client")  # fmt: skip
    t.add_argument("--duration", type=float, default=10.0, help="with --triton: timed seconds per level (after "
                   "--warmup untimed calls per stream)")  # fmt: skip
    t.add_argument("--triton-timeout", type=float, default=30.0, metavar="S", help="with --triton: deadline of "
                   "one encoder request, seconds (as stp-run's; raise it for slow CPU servers)")  # fmt: skip
    t.add_argument("--fps", type=float, default=25.0, help="with --triton: camera frame rate for the estimate (one "
                   "sampled frame every bundle stride frames)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _log(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def _available(name: str, bundle_dir: Path) -> str | None:
    """Why `name` cannot run here, or None when it can."""
    import importlib.util

    if parse_sim(name) is not None:  # the simulated encoder runs the bundle's heads on ONNX Runtime
        return None if importlib.util.find_spec("onnxruntime") else "onnxruntime not installed (the heads run on it)"
    file = _FILES.get(name)
    if file and not (bundle_dir / file).is_file():
        return f"no {file} in the bundle" + (f" (run {_BUILT[name]})" if name in _BUILT else "")
    need = {"trt": ("tensorrt",), "baseline": ("torch", "open_clip")}.get(name, ())
    need += ("openvino", "onnxruntime") if name.startswith("openvino") else ()
    need += ("torch", "open_clip") if name.startswith("torch") else ("onnxruntime",) if name.startswith("ort") else ()
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    if name == "torch-cuda-fp16":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU visible to PyTorch"
    return None


def _engine_backend(engine: Path) -> str:
    suffix = engine.suffix.lower()
    if suffix in (".plan", ".engine"):
        return "trt"
    if suffix in (".pt", ".pth"):
        return "torch-fp32"
    if suffix == ".xml":
        return "openvino-int8" if engine.name.endswith(".int8.xml") else "openvino-bf16"
    if engine.name.endswith(".int8.onnx"):
        return "ort-int8"
    return "ort-fp16" if engine.name.endswith(".fp16.onnx") else "ort-fp32"


def choose_backends(args, bundle_dir: Path, engine: Path | None) -> tuple[list[str], dict[str, str]]:
    """(backends to run, {backend: why skipped}); an explicitly requested backend that cannot run is an error."""
    if args.backends == "auto":
        wanted = [_engine_backend(engine), "baseline"] if engine and engine.suffix != ".json" else list(BACKENDS)
        explicit = False
    else:
        wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = [b for b in wanted if b not in BACKENDS and parse_sim(b) is None]
        if unknown:
            raise UserError(f"unknown backend {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
        explicit = True
    run, skipped = [], {}
    for name in dict.fromkeys(wanted):
        why = _available(name, bundle_dir)
        if why is None:
            run.append(name)
        elif explicit:
            raise UserError(f"backend {name} cannot run here: {why}")
        else:
            skipped[name] = why
    if not [b for b in run if b != "baseline"]:
        raise UserError(f"no backend can run here ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    return run, skipped


def _open(name: str, bundle_dir: Path, providers):
    from ..runtime.backends import open_backend

    if (sim := parse_sim(name)) is not None:
        from ..runtime.backends.sim import open_simulated

        return open_simulated(bundle_dir / "model.json", sim.ms, device=sim.device, pixels=sim.pixels)
    if name in _TORCH:
        device, precision = _TORCH[name]
        backend, _ = open_backend(bundle_dir / "model.pt", device=device, precision=precision,
                                  manifest=bundle_dir / "model.json")  # fmt: skip
    else:
        backend, _ = open_backend(bundle_dir / _FILES[name], providers=providers if name.startswith("ort") else None)
    return backend


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must be WxH (e.g. 640x360), got {text!r}") from None
    if w < 32 or h < 32:
        raise UserError(f"--size {text}: frames must be at least 32x32")
    return w, h


def flops_rows(manifest) -> list[dict[str, Any]]:
    from ..model.config import HeadConfig
    from .flops import pipeline_costs

    n_queries = len(manifest.load_queries()[0])  # the bundle's own bank (users may edit it)
    rows = pipeline_costs(manifest.clip, HeadConfig.from_dict(manifest.head), n_queries)
    return [r.as_dict() for r in rows]


def measure_all(args, manifest, bundle_dir: Path, backends: list[str], work: Path) -> dict[str, Any]:
    """Every stage and backend; the result dict stp-bench prints and writes."""
    import numpy as np

    from .. import windows
    from . import host, stages, turns

    kw = {"warmup": args.warmup, "repeats": args.repeats, "min_seconds": 0.0}  # slow stages: exactly --repeats
    fast = {"warmup": max(1, args.warmup), "repeats": max(args.repeats, 20), "min_seconds": 0.5}
    video = Path(args.video) if args.video else stages.write_test_video(
        work / "bench.mp4", max(args.frames, manifest.stride), _parse_size(args.size))  # fmt: skip
    first = stages.read_frames(video, manifest.stride)
    if len(first) <= manifest.offset:
        raise UserError(f"--video {video}: fewer than {manifest.offset + 1} frames (the bundle samples frame "
                        f"{manifest.offset} first)")  # fmt: skip
    frame = first[manifest.offset]
    crops = windows.encoder_batch(frame)
    timings = [stages.time_decode(video, **fast), stages.time_windows(frame, **fast)]
    timings.append(stages.time_sa2(manifest.dim, manifest.head_settings.topk_windows, **fast))
    timings.append(stages.time_sinks(manifest, frame, work, **fast))
    per_backend: dict[str, dict[str, Any]] = {}
    primary = None
    streams = int(args.streams) if args.streams else 0
    in_turns, loads = _encode_in_turns(args, manifest, bundle_dir, backends, crops, frame)
    for name in backends:
        _log(args, f"stp-bench: {name} ...")
        if name == "baseline":
            t = in_turns.get(name)
            if t is None:  # not timed in turns: open_clip loaded only now
                one = stages.baseline_encoder(manifest)
                t = stages.measure(lambda one=one: one(frame), "encode", "baseline", "sampled frame",
                                   note=turns.BASELINE_NOTE, **kw)  # fmt: skip
            timings.append(t)
            per_backend[name] = {"encode": t}
            continue
        backend = _open(name, bundle_dir, args.providers)
        try:
            enc = in_turns.get(name) or stages.time_encode(backend, name, crops, **kw)
            if getattr(backend, "gpu_preprocessing", False):  # uint8 frame in, windows cut on the device
                timings.append(stages.time_device_windows(backend, name, frame, **kw))
            head = stages.time_head(backend, name, manifest, **fast)
            if streams:  # N concurrent streams, host CPU per stage (stprompt.bench.host)
                per_backend[name] = {"encode": enc, "head": head, "streams": host.run_streams(
                    backend, manifest, video, streams, args.frames, work / f"events-{len(per_backend)}.jsonl",
                    args.gate)}  # fmt: skip
                timings += [enc, head]
                continue
            e2e, stats = stages.run_end_to_end(backend, name, manifest, video, args.frames, args.gate)
            timings += [enc, head, e2e]
            if primary is None:
                primary = name
                timings.append(stages.time_localization(backend, name, manifest, frame, **kw))
            per_backend[name] = {"encode": enc, "head": head, "e2e": e2e, "stats": stats}
        finally:
            backend.close()
    base = per_backend.get("baseline", {}).get("encode")
    summary: dict[str, dict[str, Any]] = {}
    for name, r in per_backend.items():
        enc = r["encode"]
        row = {"crops_per_s": len(crops) / enc.mean_s, "encoder_sampled_fps": 1.0 / enc.mean_s,
               "p50_ms": enc.percentile(50), "p90_ms": enc.percentile(90), "p99_ms": enc.percentile(99),
               "n": len(enc.samples)}  # fmt: skip
        if "streams" in r:
            run = r["streams"]
            row["sampled_fps"] = run["sampled_fps"]
            row["pipeline_efficiency"] = row["sampled_fps"] / row["encoder_sampled_fps"]
            row["encoder_share"] = run["encoder_busy"]
            row["crops_encoded"], row["crops_gated"] = run["crops"], run["gated_crops"]
            row["host"] = run
        elif "e2e" in r and r["e2e"].samples:
            e2e = r["e2e"]
            row["sampled_fps"] = len(e2e.samples) / float(np.sum(e2e.samples))
            row["pipeline_efficiency"] = row["sampled_fps"] / row["encoder_sampled_fps"]
            row["end_to_end_p50_ms"], row["end_to_end_p99_ms"] = e2e.percentile(50), e2e.percentile(99)
            row["crops_encoded"], row["crops_gated"] = r["stats"]["crops"], r["stats"]["gated_crops"]
            row["encoder_share"] = r["stats"]["encode_s"] / float(np.sum(e2e.samples))  # same-run efficiency
        else:
            row["sampled_fps"] = row["encoder_sampled_fps"]  # the baseline has no pipeline around it
        if base is not None:
            row["speedup_vs_baseline"] = base.mean_s / enc.mean_s
        summary[name] = row
    if in_turns:
        summary_turns = {"rounds": args.turns, "backends": list(in_turns), "load_average_after_each": loads}
    out = {"timings": [t.as_dict() for t in timings], "backends": summary, "primary": primary,
           "crops_per_sampled_frame": len(crops), "frame_size": list(frame.shape[1::-1])}  # fmt: skip
    if streams:  # the host's ceiling and cost per stage with an instant encoder, and the capacity estimate
        _log(args, f"stp-bench: host ceiling, {streams} streams, sim:0 ...")
        out.update(host.ceiling(manifest, video, frame, streams, args.frames, work))
    if in_turns:
        out["turns"] = summary_turns
    return out


def _encode_in_turns(args, manifest, bundle_dir: Path, backends: list[str], crops, frame):
    """--turns N > 1: the encode stage of every backend (the simulated ones aside) timed in turns (bench.turns)."""
    from . import stages, turns

    names = [b for b in backends if b in BACKENDS]
    if args.turns <= 1 or not names:
        return {}, []
    _log(args, f"stp-bench: encode in turns, {args.turns} rounds over {', '.join(names)} ...")
    return turns.measure_in_turns(names, lambda name: _open(name, bundle_dir, args.providers),
                                  lambda: stages.baseline_encoder(manifest), crops, frame, args.turns, args.warmup,
                                  args.repeats)  # fmt: skip


def render(result: dict[str, Any]) -> str:
    """The stdout table."""
    from .machine import describe

    out = [f"stp-bench  {result['bundle']['clip']}  ({result['bundle']['manifest']})",
           f"machine    {describe(result['machine'])}",
           f"timed      {result['timed']}"]  # fmt: skip
    if result.get("flops"):
        out += ["", f"{'FLOPs (analytic, matmul/conv MACs; FLOP = 2 MAC)':52}{'per':>16}{'GMAC':>11}{'GFLOP':>11}"
                f"{'params':>10}"]  # fmt: skip
        for r in result["flops"]:
            out.append(f"{r['name']:52}{r['per']:>16}{r['gmacs']:>11.3f}{r['gflops']:>11.3f}{r['params'] / 1e6:>9.2f}M")
    out += ["", f"{'latency (ms)':14}{'backend':17}{'per':15}{'p50':>10}{'p90':>10}{'p99':>10}{'n':>6}  what"]
    for t in result["timings"]:
        out.append(f"{t['stage']:14}{t['backend']:17}{t['per']:15}{t['p50_ms']:>10.2f}{t['p90_ms']:>10.2f}"
                   f"{t['p99_ms']:>10.2f}{t['n']:>6}  {t['note']}")  # fmt: skip
    out += ["", f"{'throughput':17}{'crops/s':>10}{'enc sampled/s':>15}{'pipe sampled/s':>16}{'efficiency':>12}"
            f"{'enc share':>11}{'x baseline':>12}"]  # fmt: skip
    for name, r in result["backends"].items():
        eff = f"{r['pipeline_efficiency']:.2f}" if "pipeline_efficiency" in r else "-"
        pipe = f"{r['sampled_fps']:.3f}" if "pipeline_efficiency" in r else "-"
        ratio = f"{r['speedup_vs_baseline']:.2f}" if "speedup_vs_baseline" in r else "-"
        share = f"{r['encoder_share']:.2f}" if "encoder_share" in r else "-"
        out.append(f"{name:17}{r['crops_per_s']:>10.2f}{r['encoder_sampled_fps']:>15.3f}{pipe:>16}{eff:>12}"
                   f"{share:>11}{ratio:>12}")  # fmt: skip
    for name, why in result.get("skipped", {}).items():
        out.append(f"{name:17}skipped: {why}")
    return "\n".join(out + host_lines(result) + accuracy_lines(result))


def _bench(args, manifest_path: Path, engine: Path | None, work: Path) -> dict[str, Any]:
    from ..bundle.manifest import load_manifest
    from .accuracy import gated_accuracy
    from .machine import load_average, machine_stamp

    manifest = load_manifest(manifest_path, verify=True)
    backends, skipped = choose_backends(args, manifest_path.parent, engine)
    result: dict[str, Any] = {
        "format": "stprompt-bench/1",
        "bundle": {
            "manifest": str(manifest_path),
            "clip": manifest.clip,
            "classes": len(manifest.classes),
            "stride": manifest.stride,
            "engine": str(engine) if engine else None,
        },  # fmt: skip
        "machine": machine_stamp(),
        "settings": {k: getattr(args, k) for k in ("frames", "size", "video", "warmup", "repeats", "gate",
                                                   "providers", "streams", "turns")},
        "skipped": skipped,
        "timed": "wall clock per unit of work after warm-up, host arrays in and out (a GPU is synchronised by the "
        "copy back); encode = one backend call on the 50 crops of a sampled frame; end-to-end = Detector on a "
        "video file with decode, alarms off; efficiency = pipeline sampled/s / encoder sampled/s (two runs); enc share "
        "= time inside the encoder / pipeline time (the same run)",
    }
    if not args.no_flops:
        result["flops"] = flops_rows(manifest)
        result["encoder_gflops_per_crop"] = round(result["flops"][0]["gflops"], 2)
    result["accuracy"] = gated_accuracy(manifest, backends)
    start = load_average()
    result.update(measure_all(args, manifest, manifest_path.parent, backends, work))
    result["load_average"] = {"start": start, "end": load_average(), "what": "1, 5, 15 minute load averages"}
    primary = result["primary"]
    result["pipeline_efficiency"] = result["backends"][primary].get("pipeline_efficiency") if primary else None
    return result


@cli_entry("stp-bench")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json:  # before any measurement: the results are written last
        check_writable(args.json, "--json")
    if args.triton is not None:
        return _triton(args)
    if args.frames < 1 or args.repeats < 1 or args.warmup < 0 or args.turns < 1:
        raise UserError("--frames, --repeats and --turns must be >= 1, --warmup >= 0")
    if args.streams is not None and (not args.streams.strip().isdigit() or int(args.streams) < 1):
        raise UserError(f"--streams {args.streams!r}: without --triton, one whole number of concurrent streams >= 1")
    _parse_size(args.size)
    if args.clip and args.keep:
        check_writable(args.keep, "--keep", folder=True)
    with tempfile.TemporaryDirectory(prefix="stp-bench-") as tmp:
        work = Path(tmp)
        if args.clip:
            wanted = set(BACKENDS if args.backends == "auto" else args.backends.split(","))
            target = Path(args.keep) if args.keep else work / "bundle"
            from .bundle import openvino_engines, random_bundle

            manifest_path = random_bundle(args.clip, target, int8="ort-int8" in wanted, fp16="ort-fp16" in wanted,
                                          log=lambda m: _log(args, m))  # fmt: skip
            openvino_engines(manifest_path, wanted, log=lambda m: _log(args, m))
            engine = None
        else:
            engine, manifest_path = _engine_and_manifest(args.engine)
        result = _bench(args, manifest_path, engine, work)
    return _report(args, render(result), result)


def _engine_and_manifest(engine_arg: str) -> tuple[Path, Path]:
    """--engine's file and the bundle manifest beside it, or one line saying which is missing."""
    from ..bundle.membership import bundle_manifest_for

    engine = Path(engine_arg)
    if not engine.is_file():
        raise UserError(f"engine file not found: {engine}")
    manifest_path = bundle_manifest_for(engine)
    if not manifest_path.is_file():
        raise UserError(f"{engine.name}: bundle manifest {manifest_path} not found beside it")
    return engine, manifest_path


def _report(args, table: str, result: dict[str, Any]) -> int:
    """The table on stdout, the whole result in --json (atomically)."""
    print(table)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=1) + "\n")
        _log(args, f"stp-bench: wrote {args.json}")
    return 0


def _triton(args) -> int:
    """`--triton URL`: the server's capacity for the bundle --engine names (stprompt.bench.triton)."""
    from . import triton

    if args.clip:
        raise UserError("--triton measures a bundle's encoder on a server: name the bundle with --engine "
                        "BUNDLE/model.onnx, not --clip")  # fmt: skip
    if args.backends != "auto":
        raise UserError("--backends chooses backends on this machine; with --triton the encoder runs on the server")
    if args.warmup < 0:
        raise UserError("--warmup must be >= 0")
    engine, manifest_path = _engine_and_manifest(args.engine)
    args.streams = triton.DEFAULT_STREAMS if args.streams is None else args.streams
    result = triton.bench(args, engine, manifest_path, lambda m: _log(args, m))
    return _report(args, triton.render(result), result)


if __name__ == "__main__":
    sys.exit(main())
