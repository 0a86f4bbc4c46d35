"""`stp-appliance`: the container entrypoint. Build or reuse the bundle's engines, then become `stp-run`.

On every start it decides, and says on one stderr line, one of:

- `build`    no plan for this bundle in the cache yet (first start): build through `stp-build`'s code;
- `rebuild`  a cached plan's key no longer matches (new bundle, TensorRT version, GPU or build settings), or
             a rebuild was asked for (`--rebuild`, STP_REBUILD=1);
- `reuse`    every plan's cache key and sha256 match: nothing is built;
- `fallback` neither TensorRT with a GPU nor OpenVINO is usable (or the default OpenVINO engine failed its gate):
             `stp-run` gets the bundle's ONNX encoder and runs it with ONNX Runtime;
- `remote`   stp-run's arguments carry `--triton URL`: the encoder runs on that Triton server, so nothing is
             built; `stp-run` gets the bundle's model.onnx to name the bundle (its heads run here).

Without TensorRT or a visible GPU (the CPU image), or with `--build-args --openvino`, the same three decisions
are made for the OpenVINO engine of this CPU (`stp-build --openvino`: model.xml, bf16 where the CPU has it; with
`--build-args "--int8 --calibrate VIDEO"`, model.int8.xml calibrated on the site's footage), keyed by
`stprompt.bundle.openvino_keys`; `stp-run` then gets that .xml.

The cache keys are the bundle room's (`stprompt.bundle.engine_keys`: `expected_key`, `plan_is_current`) and the
builder is `stp-build`'s (`stprompt.engines.tensorrt.build_bundle_engines`), so a plan the appliance reuses is
exactly one `stp-build` would reuse.

**Where plans go.** The bundle volume may be read-only and must never be modified by the device, so with a
cache folder (`--cache`, STP_CACHE) the appliance stages a working copy of the bundle there: a symlink per
bundle file (ONNX graphs and queries, not copied: the encoder alone is hundreds of MB), a copy of `model.json`,
and beside them the plans, their timing cache and the manifest records `stp-build` writes. The staged manifest
is refreshed from the bundle's on every start, keeping only the previous `engines` records, so a new export
mounted at the same place is noticed (its ONNX sha256 is in every key) and rebuilt. Without a cache folder,
plans are built beside the bundle, as `stp-build` does.

**Why exec, not an in-process call.** After the decision the appliance replaces itself with
`python -m stprompt.runtime.cli` (os.execv) instead of calling `runtime.cli.main` in this process: probing and
building initialise CUDA and TensorRT and leave the builder's allocations and a CUDA context behind; exec starts
`stp-run` with one fresh context (two contexts in one process are a known source of invalid-handle errors), with
all build memory returned (it matters on 8 GB Jetsons), and as the same PID, so `docker stop`'s SIGTERM reaches
`stp-run` itself, which flushes its events and exits cleanly. The cost is one interpreter start (about a second).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from .bundle import engine_keys
from .bundle.manifest import FORMAT, SUFFIX, Manifest, load_manifest, write_manifest
from .engines import tensorrt as trt_engines
from .errors import UserError, cli_entry, first_line
from .fileio import check_writable

PROG = "stp-appliance"
ENV_BUNDLE, ENV_CACHE, ENV_REBUILD, ENV_BUILD_ARGS = "STP_BUNDLE", "STP_CACHE", "STP_REBUILD", "STP_BUILD_ARGS"
NO_GPU = "no CUDA GPU is visible to TensorRT (containers: docker run --gpus all on x86, --runtime nvidia on Jetson)"
ACTIONS = ("build", "rebuild", "reuse", "fallback", "remote")


class TrtTarget(NamedTuple):
    """What the plans of this device are built for (two of the cache key's inputs)."""

    version: str
    compute_capability: str


@dataclass(frozen=True)
class Decision:
    """What the appliance did and the engine file `stp-run` gets."""

    action: str  # one of ACTIONS
    engine: Path
    message: str  # the one line printed on stderr


def probe_tensorrt() -> TrtTarget | str:
    """The TensorRT version and GPU compute capability plans are built for here, or why TensorRT cannot be used."""
    try:
        present = trt_engines.tensorrt_available()
    except (ImportError, ValueError):  # find_spec raises for a module blocked or half-installed
        present = False
    if not present:
        return "TensorRT is not installed"
    try:
        trt = trt_engines.require_tensorrt()
    except UserError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - a broken install (missing libnvinfer, driver) means: fall back
        return f"TensorRT does not load ({first_line(err)})"
    try:
        cc = trt_engines.gpu_compute_capability()
    except Exception:  # noqa: BLE001 - UserError from the probe, or a CUDA library error: no usable GPU
        return NO_GPU
    return TrtTarget(str(trt.__version__), cc)


def find_manifest(bundle: str | os.PathLike) -> Path:
    """`model.json`, its stem, or the folder holding it -> the manifest path (a UserError names what is missing)."""
    p = Path(bundle)
    if p.is_dir():
        if (p / f"model{SUFFIX}").is_file():
            return p / f"model{SUFFIX}"
        found = sorted(f for f in p.glob(f"*{SUFFIX}") if _is_bundle_manifest(f))
        if len(found) == 1:
            return found[0]
        if not found:
            raise UserError(f"no bundle manifest (model.json from stp-export) in {p}")
        raise UserError(
            f"{p} holds several bundles ({', '.join(f.name for f in found)}); name one: --bundle DIR/X.json"
        )
    candidate = p if p.suffix == SUFFIX else p.with_name(p.name + SUFFIX)
    if not candidate.is_file():
        raise UserError(f"bundle not found: {p} (mount the folder stp-export wrote, e.g. -v $PWD/bundle:/bundle:ro)")
    return candidate


def _is_bundle_manifest(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _writable_dir(path: Path, what: str) -> Path:
    check_writable(path, what, folder=True,
                   hint=f"stp-appliance runs as uid {os.getuid()}: chown the host folder to that uid, or use "
                        "a named volume")  # fmt: skip
    path.mkdir(exist_ok=True)
    return path


def stage_bundle(source: Manifest, cache: Path) -> Path:
    """The bundle's working copy in `cache` (symlinked files, copied manifest, earlier engine records); its path."""
    cache = _writable_dir(cache, "engine cache folder (--cache)")
    work = cache / source.path.name
    for entry in source.raw["files"].values():
        link, target = cache / entry["path"], source.root / entry["path"]
        if link.is_symlink() and os.readlink(link) == os.fspath(target):
            continue
        tmp = link.with_name(f"{link.name}.tmp-{os.getpid()}")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)  # atomically replaces a stale link (or a file) of an earlier bundle
    doc: dict[str, Any] = dict(source.raw)
    doc.pop("engines", None)  # records beside the bundle point at plans there, not here
    engines = _previous_engines(work)
    if engines:
        doc["engines"] = engines  # kept only as candidates: a record is used when its key and sha256 match
    write_manifest(work, doc)
    return work


def _previous_engines(work: Path) -> dict[str, Any]:
    try:
        doc = json.loads(work.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    engines = doc.get("engines") if isinstance(doc, dict) else None
    if not isinstance(engines, dict):
        return {}
    return {
        role: rec
        for role, rec in engines.items()
        if isinstance(rec, dict) and isinstance(rec.get("path"), str) and Path(rec["path"]).name == rec["path"]
    }


def _build_options(build_args: Sequence[str], manifest: Path) -> tuple[bool, bool, dict[str, Any], argparse.Namespace]:
    """(force, quiet, TensorRT overrides, all parsed flags) from stp-build flags, parsed by stp-build's own parser."""
    from .engines import build_cli

    parser = build_cli.build_parser()
    parser.prog = f"{PROG} --build-args"
    args = parser.parse_args([os.fspath(manifest), *build_args])
    return args.force, args.quiet, {name: getattr(args, name) for name in build_cli.TRT_SETTINGS}, args


def probe_openvino() -> tuple[str, dict[str, Any]] | str:
    """(OpenVINO version, CPU target) engines are built for here, or why OpenVINO cannot be used."""
    from .engines import openvino as ov_engines

    if not ov_engines.openvino_available():
        return f"OpenVINO is not installed ({ov_engines.OPENVINO_MISSING.split(': ', 1)[1]})"
    try:
        return ov_engines.target()
    except Exception as err:  # noqa: BLE001 - a broken install or an unsupported CPU means: fall back
        return f"OpenVINO does not load ({first_line(err)})"


def _work_manifest(source: Manifest, cache: str | os.PathLike | None) -> Path:
    """The manifest engines are recorded in: the bundle's own without a cache, else its staged copy in `cache`."""
    if cache is None or Path(cache).resolve() == source.root:
        check_writable(source.path, "bundle", hint="engines are built beside it without a cache: give a writable "
                       "cache folder for them, --cache DIR")  # fmt: skip
        return source.path
    return stage_bundle(source, Path(cache))


def prepare_openvino(source: Manifest, cache: str | os.PathLike | None, parsed: argparse.Namespace, force: bool,
                     no_trt: str, log: Callable[[str], None]) -> Decision:  # fmt: skip
    """TensorRT is out (`no_trt` says why, or --openvino asked): build, rebuild or reuse the OpenVINO engine; with
    no OpenVINO, or a default bf16 engine that fails its gate, fall back to ONNX Runtime (one line each)."""
    from .bundle import openvino_keys
    from .engines import build_cli
    from .engines import openvino as ov_engines

    explicit = parsed.openvino or parsed.int8  # asked for: a missing OpenVINO or a failed gate is an error
    target = probe_openvino()
    if isinstance(target, str):
        if explicit:
            raise UserError(f"--build-args asks for OpenVINO: {target}")
        return _fallback(source, f"{no_trt}; {target}", log)
    # implied only when the appliance chose OpenVINO: an explicit --openvino refuses TensorRT settings as stp-build does
    opts = build_cli.openvino_options(parsed, implied=not parsed.openvino)
    work_file = _work_manifest(source, cache)
    work = load_manifest(work_file, verify=False)  # the files behind it were verified by the caller
    job = ov_engines.plan_job(work, opts, *target)
    xml = openvino_keys.ir_path(work, job.role)
    where = f"OpenVINO {ov_engines.short_version(job.openvino)}, CPU {job.precision}; {no_trt}"
    if not force and openvino_keys.ir_is_current(work, job.role, job.key):
        message = f"{PROG}: reuse: {xml} matches this bundle ({where}; key {job.key[:12]})"
        log(message)
        return Decision("reuse", xml, message)
    if force:
        action, why = "rebuild", "asked for (--rebuild, STP_REBUILD=1 or --build-args --force)"
    elif xml.is_file():
        action, why = "rebuild", f"the cached {xml.name} does not match (bundle, OpenVINO, CPU or settings)"
    else:
        action, why = "build", f"no {xml.name} for this bundle yet (first start)"
    message = f"{PROG}: {action}: {why}; building into {work.root} ({where})"
    log(message)
    quiet = parsed.quiet
    try:
        ov_engines.build_openvino_engine(work_file, opts, force=force, log=(lambda _m: None) if quiet else log,
                                         progress=not quiet)  # fmt: skip
    except UserError as err:
        if explicit:
            raise
        return _fallback(source, f"the OpenVINO engine was not built: {err}", log)
    return Decision(action, xml, message)


def _fallback(source: Manifest, why: str, log: Callable[[str], None]) -> Decision:
    engine = source.file("encoder")
    message = f"{PROG}: fallback to ONNX Runtime: {why}; stp-run gets {engine}"
    log(message)
    return Decision("fallback", engine, message)


def prepare_engine(
    bundle: str | os.PathLike,
    cache: str | os.PathLike | None = None,
    *,
    rebuild: bool = False,
    build_args: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
) -> Decision:
    """Build, rebuild, reuse or fall back; print the decision on one line; return the engine for `stp-run`.

    `cache`: where plans are built (a working copy of the bundle is staged there); None = beside the bundle.
    `build_args`: stp-build flags (--max-batch, --workspace-gb, --force, ...), applied to builds and to the keys.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    manifest_file = find_manifest(bundle)
    source = load_manifest(manifest_file)  # a missing or modified bundle file is refused here, by name
    force, quiet, overrides, parsed = _build_options(build_args, manifest_file)
    force = force or rebuild
    target = "--openvino asked for" if parsed.openvino else probe_tensorrt()
    if isinstance(target, str):
        return prepare_openvino(source, cache, parsed, force, target, log)
    from .engines.build_cli import openvino_options

    openvino_options(parsed)  # OpenVINO flags without --openvino on a TensorRT machine: one line, not ignored
    work_file = _work_manifest(source, cache)
    work = load_manifest(work_file, verify=False)  # the files behind it were verified above
    settings = engine_keys.BuildSettings.from_manifest(work, **overrides)
    roles = [job.role for job in engine_keys.engine_jobs(work, settings)]
    cc = target.compute_capability
    keys = {role: engine_keys.expected_key(work, role, target.version, cc, settings) for role in roles}
    stale = [role for role in roles if not engine_keys.plan_is_current(work, role, keys[role])]
    where = f"TensorRT {target.version}, GPU sm {target.compute_capability}"
    plans = {role: work.engine(role) for role in roles}
    if not stale and not force:
        engine = plans["encoder"]  # current, so recorded and present
        message = f"{PROG}: reuse: {engine} and its head plans match this bundle ({where}, key {keys['encoder'][:12]})"
        log(message)
        return Decision("reuse", Path(engine), message)

    had_plans = any(plan is not None and plan.is_file() for plan in plans.values())
    if force:
        action, why = "rebuild", "asked for (--rebuild, STP_REBUILD=1 or --build-args --force)"
    elif had_plans:
        action, why = "rebuild", f"cached {', '.join(stale)} plan(s) do not match (bundle, TensorRT, GPU or settings)"
    else:
        action, why = "build", "no plans for this bundle yet (first start)"
    message = f"{PROG}: {action}: {why}; building into {work.root} ({where}; takes minutes, later starts reuse it)"
    log(message)
    build_log = (lambda _msg: None) if quiet else log
    built = trt_engines.build_bundle_engines(work_file, force=force, log=build_log, **overrides)
    engine = built.engine("encoder")
    if engine is None or not engine.is_file():
        raise UserError(f"stp-build left no encoder plan in {work.root}")
    return Decision(action, engine, message)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [-h] [--bundle BUNDLE] [--cache CACHE] [--rebuild] [--build-args ARGS] [--] STP_RUN_ARG ...",
        description=(
            "Container entrypoint: build the TensorRT engines of a bundle on this device, or reuse them when their "
            "cache key matches; without TensorRT or a GPU, the OpenVINO engine of this CPU likewise; without either, "
            "fall back to ONNX Runtime (one line on stderr says which); then exec stp-run --engine <that engine> "
            "with the remaining arguments, unchanged. "
            "Appliance options come first; the first other argument (or --) starts stp-run's."
        ),
        allow_abbrev=False,
    )
    p.add_argument("--bundle", help=f"model.json or the folder holding it (default: ${ENV_BUNDLE})")
    p.add_argument(
        "--cache",
        help=f"writable folder for the plans and a working copy of the bundle (default: ${ENV_CACHE}; "
        "unset = build beside the bundle, like stp-build)",
    )
    p.add_argument("--rebuild", action="store_true", help=f"rebuild the plans even when current (or {ENV_REBUILD}=1)")
    p.add_argument(
        "--build-args",
        metavar="ARGS",
        help=f'stp-build flags as one string, e.g. "--max-batch 64 --workspace-gb 2" (default: ${ENV_BUILD_ARGS})',
    )
    p.add_argument("run_args", nargs="*", metavar="STP_RUN_ARG", help="stp-run's sources and flags, passed on as given")
    return p


def split_argv(argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> tuple[list[str], list[str]]:
    """(appliance arguments, stp-run arguments): appliance options lead; `--` or the first other argument ends them."""
    parser = parser or build_parser()
    takes_value = {s: a.nargs != 0 for a in parser._actions for s in a.option_strings}
    own: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return own, list(argv[i + 1 :])
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if name not in takes_value:
            break
        step = 2 if takes_value[name] and "=" not in arg else 1
        own += argv[i : i + step]
        i += step
    return own, list(argv[i:])


def check_run_args(run_args: Sequence[str]) -> argparse.Namespace:
    """Let stp-run's parser judge the arguments before a build of minutes, and keep --engine the appliance's;
    stp-run's parsed arguments."""
    from .runtime import cli as run_cli

    placeholder = "<the appliance's engine>"
    # argparse errors (and --help) exit here; a user's --engine (or an abbreviation of it) replaces the placeholder
    parsed = run_cli.build_parser().parse_args(["--engine", placeholder, *run_args])
    if parsed.engine != placeholder:
        raise UserError(
            "stp-run's --engine is chosen by the appliance from the bundle; to run another engine file use "
            "stp-run directly (docker run --entrypoint stp-run ...)"
        )
    return parsed


def remote_encoder(bundle: str | os.PathLike, url: str, log: Callable[[str], None] | None = None) -> Decision:
    """`--triton URL`: the encoder runs on the server; stp-run gets the bundle's model.onnx and builds nothing."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    engine = load_manifest(find_manifest(bundle)).file("encoder")
    message = f"{PROG}: remote: the encoder runs on Triton ({url}), nothing to build; stp-run gets {engine}"
    log(message)
    return Decision("remote", engine, message)


def exec_stp_run(engine: Path, run_args: Sequence[str]) -> NoReturn:
    """Replace this process by `stp-run --engine ENGINE RUN_ARGS...` on the same interpreter (see module doc)."""
    argv = [sys.executable, "-m", "stprompt.runtime.cli", "--engine", os.fspath(engine), *run_args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _terminate(signum: int, frame: object) -> None:
    """docker stop during a build ends it like Ctrl-C (plans are written atomically: none is left half done)."""
    raise KeyboardInterrupt


@cli_entry(PROG)
def main(argv: list[str] | None = None) -> int:
    # PID 1 in a container ignores SIGTERM unless it has a handler; exec resets it to stp-run's own handling
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _run(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)  # reached only when no exec happened (errors, tests)
    return 0


def _run(argv: list[str] | None) -> None:
    parser = build_parser()
    own, run_args = split_argv(sys.argv[1:] if argv is None else argv, parser)
    args = parser.parse_args(own)
    bundle = args.bundle or os.environ.get(ENV_BUNDLE)
    if not bundle:
        raise UserError(f"no bundle: give --bundle DIR or set {ENV_BUNDLE} (the image sets /bundle)")
    if not run_args:
        raise UserError("no stp-run arguments: give at least one SOURCE (a video, camera0, rtsp://...)")
    parsed = check_run_args(run_args)
    if parsed.triton:
        exec_stp_run(remote_encoder(bundle, parsed.triton).engine, run_args)
    cache = args.cache or os.environ.get(ENV_CACHE) or None
    build_args = shlex.split(args.build_args if args.build_args is not None else os.environ.get(ENV_BUILD_ARGS, ""))
    decision = prepare_engine(bundle, cache, rebuild=args.rebuild or _env_flag(ENV_REBUILD), build_args=build_args)
    exec_stp_run(decision.engine, run_args)


if __name__ == "__main__":
    sys.exit(main())
