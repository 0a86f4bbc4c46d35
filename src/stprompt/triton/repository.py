"""A bundle's encoder (and head) as a Triton model repository: `config.pbtxt` files, the graphs, a README.

Tensor names, types and dims come from `bundle.serving` (the same specs `stp-run --triton` checks a server
against), and every config carries the hosted graph's identity (role, sha256, export), so a client refuses a
server that hosts another export. Batching is Triton's plain dynamic batching with a bounded queue delay: its
maintainers advise starting there rather than from preferred batch sizes. A TensorRT plan cannot travel in the
repository (it only loads on the TensorRT version and GPU it was built with), so `plan` writes the ONNX source and
a script that builds the plan on the server inside the TensorRT image of the Triton release. Everything is
written in a temporary folder beside the output and renamed into place: no half-written repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..bundle.engine_keys import BuildSettings, InputProfile, encoder_profiles, encoder_source_role, pre_profiles
from ..bundle.hashing import sha256_file
from ..bundle.manifest import Manifest, load_manifest
from ..bundle.serving import ENCODER_MODEL, TensorSpec, encoder_tensors, head_tensors, identity
from ..engines.tensorrt import profile_shapes, trtexec_command
from ..errors import UserError
from ..fileio import check_writable

# NGC release of the Triton image (and of the TensorRT image that builds plans for it: same yy.mm, same
# TensorRT). 24.11 ships TensorRT 10.6 with CUDA 12.6.3 (Triton's release compatibility matrix,
# docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/introduction/compatibility.html): the
# TensorRT of stprompt's Dockerfile (nvcr.io/nvidia/tensorrt:24.11-py3) and one of the versions tests/trt_api records.
RELEASE = "24.11"
DEFAULT_NAME = ENCODER_MODEL.removesuffix("_encoder")  # "stp": bundle.serving's ENCODER_MODEL and HEAD_MODEL
MAX_QUEUE_DELAY_US = 1_000_000  # a request waiting a second for company is a misconfiguration, not batching
ENCODER_ROLES = {"fp32": "encoder", "fp16": "encoder_fp16", "int8": "encoder_int8"}  # precision -> hosted graph
PLAN_PRECISION = {"encoder": "fp32", "encoder_fp16": "fp16"}  # strongly typed: the plan's precision is its graph's
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
ACCELERATORS = ("none", "tensorrt")
INPUTS = ("pixels", "images")  # uint8 BGR crops (model.pre.onnx fused in front of the encoder) | float32 crops
HEAD_ROLE = "head_features"  # model.head_as.onnx: the head after SA2, what the runtime streams
PLAN_FILE, SOURCE_FILE, BUILD_SCRIPT = "model.plan", "model.source.onnx", "build_plan.sh"
TRTEXEC_DIRS = "/opt/tensorrt/bin:/usr/src/tensorrt/bin"  # where NGC's TensorRT images keep trtexec
CONTAINER_DIR = "/model"  # the encoder's model folder inside the TensorRT container (build_plan.sh)
ORT_TRT_CACHE = "/tmp"  # ONNX Runtime's TensorRT engine cache inside the Triton container
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_RELEASE = re.compile(r"\d\d\.\d\d")


@dataclass(frozen=True)
class RepositoryOptions:
    """What `stp-triton` writes; every field has the CLI flag of the same name."""

    name: str = DEFAULT_NAME  # model names f"{name}_encoder", f"{name}_head"
    precision: str | None = None  # fp32 | fp16 | int8 hosted encoder graph; None: the bundle's encoder precision
    accelerator: str = "none"  # none | tensorrt: ONNX Runtime's TensorRT execution accelerator (FP16)
    plan: bool = False  # a tensorrt_plan model, its plan built on the server by build_plan.sh
    max_batch: int | None = None  # max_batch_size; None: the bundle's build max_batch
    queue_delay_us: int = 2000  # dynamic batching's max_queue_delay_microseconds
    instances: int = 1  # encoder instances per device (instance_group count)
    kind: str = "gpu"  # gpu | cpu
    head: bool = True  # also host model.head_as.onnx as f"{name}_head"
    input: str | None = None  # pixels | images: what clients send; None: pixels when the bundle has model.pre.onnx
    release: str = RELEASE  # NGC yy.mm of the Triton image (and of the TensorRT image building plans)

    @property
    def encoder_model(self) -> str:
        return f"{self.name}_encoder"

    @property
    def head_model(self) -> str:
        return f"{self.name}_head"


def check_options(options: RepositoryOptions) -> None:
    """Refuse options no repository can honour (before any bundle is read), one line each."""
    o = options
    if not _NAME.fullmatch(o.name):
        raise UserError(f"--name {o.name!r}: use letters, digits, '_', '.', '-' (it names the model folders)")
    if o.precision is not None and o.precision not in ENCODER_ROLES:
        raise UserError(f"--precision {o.precision!r}: choose fp32, fp16 or int8")
    if o.input is not None and o.input not in INPUTS:
        raise UserError(f"--input {o.input!r}: choose pixels or images")
    if o.accelerator not in ACCELERATORS:
        raise UserError(f"--accelerator {o.accelerator!r}: choose none or tensorrt")
    if o.kind not in KINDS:
        raise UserError(f"--kind {o.kind!r}: choose gpu or cpu")
    if not 0 <= o.queue_delay_us <= MAX_QUEUE_DELAY_US:
        raise UserError(f"--queue-delay-us must be in [0, {MAX_QUEUE_DELAY_US}], got {o.queue_delay_us}")
    if o.instances < 1:
        raise UserError(f"--instances must be at least 1, got {o.instances}")
    if not _RELEASE.fullmatch(o.release):
        raise UserError(f"--release {o.release!r}: an NGC release yy.mm, e.g. {RELEASE}")
    if o.accelerator == "tensorrt" and o.kind == "cpu":
        raise UserError("--accelerator tensorrt runs on a GPU: drop --kind cpu")
    if o.plan and (o.kind == "cpu" or o.accelerator != "none"):
        raise UserError("--plan hosts a TensorRT engine on a GPU: drop --kind cpu and --accelerator")
    if o.plan and o.precision == "int8":
        raise UserError("--plan builds fp32 or fp16 engines; the int8 graph is for ONNX Runtime on CPUs")
    if o.accelerator == "tensorrt" and o.precision == "int8":
        raise UserError("--accelerator tensorrt cannot run the int8 graph (dynamic int8 for ONNX Runtime on CPUs)")


def encoder_role(manifest: Manifest, options: RepositoryOptions) -> str:
    """The manifest `files` role of the encoder graph to host: the one of --precision (which the bundle must
    have), else the bundle's encoder precision as stp-build picks it (the fp16 graph when there is one)."""
    if options.precision is None:
        return encoder_source_role(manifest, manifest.precision.get("encoder", "fp32"))
    role = ENCODER_ROLES[options.precision]
    if not manifest.has(role):
        hint = " (stp-export --int8-cpu)" if role == "encoder_int8" else " (stp-export --precision fp16)"
        raise UserError(f"{manifest.path.name}: the bundle has no {options.precision} encoder graph{hint}")
    return role


def takes_pixels(manifest: Manifest, options: RepositoryOptions) -> bool:
    """True when the encoder model takes uint8 crops: --input pixels (the bundle must have model.pre.onnx), and by
    default wherever the bundle has it (a quarter of the bytes per request, no normalisation on the clients)."""
    if options.input == "images":
        return False
    if not manifest.has("encoder_pre"):
        if options.input == "pixels":
            raise UserError(f"{manifest.path.name}: the bundle has no model.pre.onnx for --input pixels (exported "
                            "before it: export it again, or use --input images)")  # fmt: skip
        return False
    return True


def max_batch_size(manifest: Manifest, options: RepositoryOptions) -> int:
    """--max-batch, else the bundle's build max_batch; at least one sampled frame's crops (one client request)."""
    from ..windows import crops_per_frame  # OpenCV and Numba: only when a config is made

    value = BuildSettings.from_manifest(manifest).max_batch if options.max_batch is None else options.max_batch
    least = crops_per_frame(pre=manifest.preprocess)
    if value < least:
        raise UserError(f"--max-batch {value} is below one sampled frame's {least} crops (each client request)")
    return int(value)


def plan_profiles(manifest: Manifest, options: RepositoryOptions) -> list[InputProfile]:
    """The plan's input profile: 1 to max_batch_size crops (uint8 pixels or float32 images), tuned for the bundle's
    opt_batch."""
    top = max_batch_size(manifest, options)
    settings = BuildSettings.from_manifest(manifest, max_batch=top)
    profiles = pre_profiles if takes_pixels(manifest, options) else encoder_profiles
    return profiles(top, settings.opt_batch, manifest.preprocess.size)


# -- config.pbtxt text --------------------------------------------------------------------------------------------


def _q(text: str) -> str:
    return json.dumps(text)  # the names and hashes here are ASCII: JSON quoting is protobuf text quoting


def _tensors(field: str, specs: Sequence[TensorSpec]) -> list[str]:
    rows = [f"  {{ name: {_q(t.name)} data_type: {t.data_type} dims: [ {', '.join(map(str, t.dims))} ] }}"
            for t in specs]  # fmt: skip
    return [f"{field} [", ",\n".join(rows), "]"]


def _parameters(params: dict[str, str]) -> list[str]:
    return [f"parameters {{ key: {_q(k)} value: {{ string_value: {_q(v)} }} }}" for k, v in params.items()]


def _tensorrt_accelerator(manifest: Manifest, options: RepositoryOptions) -> list[str]:
    """ONNX Runtime's TensorRT execution provider in FP16, one profile over the batch range (no rebuild per new
    batch size), LayerNorm kept in fp32 (ViT LayerNorm overflows in fp16), engines cached across model loads."""
    profiles = plan_profiles(manifest, options)
    workspace = int(BuildSettings.from_manifest(manifest).workspace_gb * (1 << 30))
    params = {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(workspace),
        "trt_layer_norm_fp32_fallback": "1",
        "trt_profile_min_shapes": profile_shapes(profiles, "min"),
        "trt_profile_opt_shapes": profile_shapes(profiles, "opt"),
        "trt_profile_max_shapes": profile_shapes(profiles, "max"),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": ORT_TRT_CACHE,
    }
    lines = [f"    parameters {{ key: {_q(k)} value: {_q(v)} }}" for k, v in params.items()]
    return ["# the TensorRT engine is built when the model loads (minutes); mount a volume on "
            f"{ORT_TRT_CACHE} to keep it", "optimization { execution_accelerators {",
            "  gpu_execution_accelerator: [ {", '    name: "tensorrt"', *lines, "  } ]", "} }"]  # fmt: skip


def encoder_config(manifest: Manifest, options: RepositoryOptions) -> str:
    """The encoder model's config.pbtxt: batched crops in, embeddings out, dynamic batching, the identity."""
    check_options(options)
    role = encoder_role(manifest, options)
    pixels = takes_pixels(manifest, options)
    inputs, outputs = encoder_tensors(manifest, pixels)
    top = max_batch_size(manifest, options)
    entry = manifest.raw["files"][role]
    lines = [f"# stp-triton: the image encoder of {manifest.clip} ({manifest.path.name}), {role} graph "
             f"{entry['path']} sha256 {entry['sha256'][:12]}"
             + (" behind model.pre.onnx (uint8 BGR crops in)" if pixels else ""),
             f"name: {_q(options.encoder_model)}"]  # fmt: skip
    if options.plan:
        lines += ["# 1/model.plan is built on the server by build_plan.sh (TensorRT version and GPU bound)",
                  'platform: "tensorrt_plan"', f"default_model_filename: {_q(PLAN_FILE)}"]  # fmt: skip
    else:
        lines += ['platform: "onnxruntime_onnx"']
    lines += [f"max_batch_size: {top}  # crops per batch at most; a client request is one sampled frame's crops",
              *_tensors("input", inputs), *_tensors("output", outputs),
              "# plain dynamic batching: requests of all clients share batches, none waits longer than the delay",
              f"dynamic_batching {{ max_queue_delay_microseconds: {options.queue_delay_us} }}",
              f"instance_group [ {{ count: {options.instances} kind: {KINDS[options.kind]} }} ]"]  # fmt: skip
    if options.accelerator == "tensorrt":
        lines += _tensorrt_accelerator(manifest, options)
    lines += ["# which export and graph this is: stp-run --triton refuses a server hosting another one",
              *_parameters(identity(manifest, role, pixels))]  # fmt: skip
    return "\n".join(lines) + "\n"


def head_config(manifest: Manifest, options: RepositoryOptions) -> str:
    """The head after SA2 (model.head_as.onnx): x_clip, x_as [T, D] -> score, score_c [T], probs [T, 1 + C],
    unbatched with T variable (one stream's window per request)."""
    check_options(options)
    if not manifest.has(HEAD_ROLE):
        raise UserError(f"{manifest.path.name}: the bundle has no {HEAD_ROLE} graph (model.head_as.onnx)")
    inputs, outputs = head_tensors(manifest)
    entry = manifest.raw["files"][HEAD_ROLE]
    lines = [f"# stp-triton: the temporal head after SA2 of {manifest.path.name}, {entry['path']} sha256 "
             f"{entry['sha256'][:12]}",
             f"name: {_q(options.head_model)}", 'platform: "onnxruntime_onnx"',
             "max_batch_size: 0  # unbatched: T (snippets) is the first dim, -1 = any",
             *_tensors("input", inputs), *_tensors("output", outputs),
             f"instance_group [ {{ count: 1 kind: {KINDS[options.kind]} }} ]",
             *_parameters(identity(manifest, HEAD_ROLE))]  # fmt: skip
    return "\n".join(lines) + "\n"


# -- the files --------------------------------------------------------------------------------------------------


def triton_command(repo: str, options: RepositoryOptions) -> str:
    """The docker command that serves the repository folder `repo` (a shell word, already quoted)."""
    gpus = "--gpus all " if options.kind == "gpu" else ""
    return (f"docker run {gpus}--rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {repo}:/models "
            f"nvcr.io/nvidia/tritonserver:{options.release}-py3 tritonserver --model-repository=/models")  # fmt: skip


def client_command(manifest: Manifest, options: RepositoryOptions) -> str:
    model = "" if options.encoder_model == ENCODER_MODEL else f"/{options.encoder_model}"
    return f"stp-run --engine BUNDLE/{manifest.file('encoder').name} --triton grpc://HOST:8001{model} SOURCE"


def build_script(manifest: Manifest, options: RepositoryOptions, role: str, sha: str) -> str:
    """build_plan.sh: check the source graph (`sha`: the role's graph, or the fused pixels graph written beside it),
    build the plan strongly typed with trtexec in the TensorRT image of the same release as the Triton image, then
    move it into 1/ (Triton never sees a half-written plan)."""
    partial = f"{PLAN_FILE}.partial"
    workspace_gb = BuildSettings.from_manifest(manifest).workspace_gb
    cmd = trtexec_command(f"{CONTAINER_DIR}/{SOURCE_FILE}", f"{CONTAINER_DIR}/{partial}",
                          plan_profiles(manifest, options), PLAN_PRECISION[role], workspace_gb,
                          f"{CONTAINER_DIR}/timing.cache")  # fmt: skip
    image = f"nvcr.io/nvidia/tensorrt:{options.release}-py3"
    what = f"{role} graph" + (" behind model.pre.onnx" if takes_pixels(manifest, options) else "")
    return f"""#!/bin/sh
# stp-triton: builds 1/{PLAN_FILE} of {options.encoder_model} from {SOURCE_FILE} ({what} of {manifest.path.name}).
# Run it on the Triton server, before starting Triton: a plan only loads on the GPU and TensorRT version it was
# built with, and {image} ships the TensorRT of nvcr.io/nvidia/tritonserver:{options.release}-py3.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
echo "{sha}  $here/{SOURCE_FILE}" | sha256sum -c --quiet - \\
    || {{ echo "{BUILD_SCRIPT}: {SOURCE_FILE} is not the export's {what}" >&2; exit 1; }}
docker run --gpus all --rm --user "$(id -u):$(id -g)" -v "$here":{CONTAINER_DIR} {image} \\
    sh -c 'export PATH="$PATH:{TRTEXEC_DIRS}"; exec "$@"' {BUILD_SCRIPT} \\
    {shlex.join(cmd)}
mv "$here/{partial}" "$here/1/{PLAN_FILE}"
echo "{BUILD_SCRIPT}: wrote $here/1/{PLAN_FILE}"
"""


def _in_pwd(name: str) -> str:
    """`"$PWD/name"` as one shell word (the README's commands run from the folder holding the repository)."""
    return '"$PWD/' + re.sub(r'([\\"$`])', r"\\\1", name) + '"'


def readme(manifest: Manifest, options: RepositoryOptions, role: str, repo_name: str, head: bool) -> str:
    entry = manifest.raw["files"][role]
    pixels = (" behind the bundle's `model.pre.onnx`: clients send uint8 BGR crops (a quarter of float32's bytes) "
              "and the server normalises them") if takes_pixels(manifest, options) else ""  # fmt: skip
    models = [f"- `{options.encoder_model}/`: the image encoder, {role} graph `{entry['path']}` "
              f"(sha256 `{entry['sha256']}`){pixels}, "
              + ("a TensorRT plan built by `build_plan.sh`" if options.plan else "ONNX Runtime")
              + f", batches of up to {max_batch_size(manifest, options)} crops"]  # fmt: skip
    if head:
        models.append(f"- `{options.head_model}/`: the temporal head after SA2 (`model.head_as.onnx`), for clients "
                      "that run it on the server too (`stp-run --triton` runs it locally)")  # fmt: skip
    steps = []
    if options.plan:
        steps.append(f"Build the plan on the server first (Docker, NVIDIA Container Toolkit):\n\n"
                     f"    sh {shlex.quote(f'{repo_name}/{options.encoder_model}/{BUILD_SCRIPT}')}\n")  # fmt: skip
    steps.append(f"Start Triton from the folder that holds `{repo_name}`:\n\n"
                 f"    {triton_command(_in_pwd(repo_name), options)}\n")
    return "\n".join([
        f"# Triton model repository of {manifest.root.name}/{manifest.path.name}", "",
        f"Written by `stp-triton` from the stprompt export of `{manifest.clip}` (CLIP sha256 "
        f"`{manifest.clip_sha256}`, {manifest.dim}-d embeddings, classes {', '.join(manifest.classes)}).", "",
        *models, "", *steps,
        "Clients connect to the gRPC port with the same bundle:", "",
        f"    {client_command(manifest, options)}", "",
        "Before the first frame, and after every reconnect, the client compares the model config the server "
        "reports with its bundle (tensors, the graph's role and sha256 in `parameters`) and refuses a server that "
        "hosts another export.", "",
    ])  # fmt: skip


def _copy_graph(manifest: Manifest, role: str, dst: Path) -> None:
    shutil.copyfile(manifest.file(role), dst)
    if sha256_file(dst) != manifest.raw["files"][role]["sha256"]:
        raise UserError(f"{manifest.file(role)}: the copy's sha256 differs from the manifest's (changed meanwhile?)")


def _encoder_graph(manifest: Manifest, options: RepositoryOptions, role: str, dst: Path) -> str:
    """The hosted encoder graph at `dst` (the role's graph, or with pixels model.pre.onnx fused in front of it, both
    checked against the manifest first); its sha256."""
    if not takes_pixels(manifest, options):
        _copy_graph(manifest, role, dst)
        return manifest.raw["files"][role]["sha256"]
    from ..export.pre_graph import fuse_pre_graph  # onnx: only when a repository is written

    graphs = []
    for source in ("encoder_pre", role):  # read once: the bytes checked are the bytes fused
        data = manifest.file(source).read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest.raw["files"][source]["sha256"]:
            raise UserError(f"{manifest.file(source)}: its sha256 differs from the manifest's (changed meanwhile?)")
        graphs.append(data)
    fuse_pre_graph(*graphs, dst, name=manifest.file(role).name)
    return sha256_file(dst)


def _write(manifest: Manifest, options: RepositoryOptions, root: Path, repo_name: str, head: bool) -> str:
    role = encoder_role(manifest, options)
    enc = root / options.encoder_model
    (enc / "1").mkdir(parents=True)
    (enc / "config.pbtxt").write_text(encoder_config(manifest, options))
    if options.plan:
        sha = _encoder_graph(manifest, options, role, enc / SOURCE_FILE)
        script = enc / BUILD_SCRIPT
        script.write_text(build_script(manifest, options, role, sha))
        script.chmod(0o755)
    else:
        _encoder_graph(manifest, options, role, enc / "1" / "model.onnx")
    if head:
        (root / options.head_model / "1").mkdir(parents=True)
        (root / options.head_model / "config.pbtxt").write_text(head_config(manifest, options))
        _copy_graph(manifest, HEAD_ROLE, root / options.head_model / "1" / "model.onnx")
    (root / "README.md").write_text(readme(manifest, options, role, repo_name, head))
    return role


def write_repository(manifest_path: str | os.PathLike, out: str | os.PathLike, options: RepositoryOptions, *,
                     force: bool = False, log: Callable[[str], None] | None = None) -> Path:  # fmt: skip
    """Write the repository `out` for the bundle `manifest_path` (`out` checked writable, then every file's sha256,
    before anything is written); an existing non-empty `out` is replaced only with `force`. `log` gets one line per
    model and the commands to run."""
    check_options(options)
    out = Path(out).resolve()
    if out == out.parent:
        raise UserError(f"--out {out}: name a repository folder, not the file system root")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a repository folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} exists and is not empty (--force replaces it)")
    check_writable(out, "--out", folder=True)  # before the bundle's files are hashed
    manifest = load_manifest(manifest_path, verify=True)
    head = options.head and manifest.has(HEAD_ROLE)
    try:  # the repository is made beside --out and renamed into place
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as err:
        raise UserError(f"--out {out}: cannot write beside it: {err.strerror}") from None
    try:
        role = _write(manifest, options, tmp, out.name, head)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the models from a server running as another user
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise UserError(f"--out {out}: cannot write it: {err.strerror or err}") from None
        raise
    if log is not None:
        _report(manifest, options, out, role, head, log)
    return out


def _report(manifest: Manifest, options: RepositoryOptions, out: Path, role: str, head: bool,
            log: Callable[[str], None]) -> None:  # fmt: skip
    entry = manifest.raw["files"][role]
    kind = "tensorrt_plan (built on the server)" if options.plan else "onnxruntime_onnx"
    log(f"wrote {out}")
    accelerator = ", ONNX Runtime's TensorRT accelerator (FP16)" if options.accelerator == "tensorrt" else ""
    pixels = " behind model.pre.onnx (uint8 crops in)" if takes_pixels(manifest, options) else ""
    log(f"{options.encoder_model}: {kind}, {role} {entry['path']} sha256 {entry['sha256'][:12]}{pixels}, "
        f"max_batch_size {max_batch_size(manifest, options)}, queue delay {options.queue_delay_us} us, "
        f"{options.instances} x {KINDS[options.kind]}{accelerator}")
    if head:
        h = manifest.raw["files"][HEAD_ROLE]
        log(f"{options.head_model}: onnxruntime_onnx, {HEAD_ROLE} {h['path']} sha256 {h['sha256'][:12]}")
    elif options.head:
        log(f"{options.head_model}: skipped, the bundle has no {HEAD_ROLE} graph (model.head_as.onnx)")
    if options.plan:
        log(f"build the plan on the server first: sh {shlex.quote(str(out / options.encoder_model / BUILD_SCRIPT))}")
    log(f"serve: {triton_command(shlex.quote(str(out)), options)}")
    log(f"connect: {client_command(manifest, options)}")
