"""What a bundle's graphs look like when an inference server hosts them, and how a client checks a server.

`stp-triton` writes Triton model configs from these specs, and `stp-run --triton` compares the config a server
reports against the same specs before its first frame (and again after every reconnect): tensor names, data
types and dims come from `graphs` and the manifest, and the bundle's identity (the hosted graph's role and
sha256, the manifest format) travels in each config's `parameters`, so a client refuses a server that hosts
another export instead of scoring with the wrong encoder. Torch-free and Triton-free: plain dicts in and out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .graphs import ENCODER_INPUT, ENCODER_OUTPUT, HEAD_FEATURES_INPUTS, HEAD_OUTPUTS, PRE_INPUT
from .manifest import FORMAT, Manifest

ENCODER_MODEL = "stp_encoder"  # default model names in a generated repository (stp-triton --name changes the prefix)
HEAD_MODEL = "stp_head"
ENCODER_ROLES = ("encoder", "encoder_fp16", "encoder_int8")  # graphs a server may host as the encoder

# parameter keys of the bundle's identity in a model config
P_FORMAT = "stprompt_format"  # the manifest format, e.g. stprompt-bundle/1
P_ROLE = "stprompt_role"  # the manifest `files` role of the graph the model was made from
P_SHA256 = "stprompt_sha256"  # that graph's sha256 (for a TensorRT plan: the ONNX it was built from)
P_CLIP_SHA256 = "stprompt_clip_sha256"  # the CLIP weights the export started from
P_DIM = "stprompt_dim"
# a model that takes uint8 crops: the bundle's preprocessing graph (model.pre.onnx) in front of the encoder graph
P_INPUT = "stprompt_input"  # "pixels" (absent: CLIP-normalised float32 images)
P_PRE_SHA256 = "stprompt_pre_sha256"  # the preprocessing graph's sha256 (the manifest's encoder_pre)
PIXELS = "pixels"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, Triton data type and dims (without the batch dim when batched)."""

    name: str
    data_type: str  # Triton's names: TYPE_FP32, ...
    dims: tuple[int, ...]  # -1 = variable


def encoder_tensors(manifest: Manifest, pixels: bool = False) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The encoder's (inputs, outputs) per crop: images [3, S, S] float32 (or with `pixels`, uint8 BGR crops
    [S, S, 3] through the bundle's preprocessing graph) -> embeddings [D] float32 (batched)."""
    size = manifest.preprocess.size
    if pixels:
        crop = TensorSpec(PRE_INPUT, "TYPE_UINT8", (size, size, 3))
    else:
        crop = TensorSpec(ENCODER_INPUT, "TYPE_FP32", (3, size, size))
    return [crop], [TensorSpec(ENCODER_OUTPUT, "TYPE_FP32", (manifest.dim,))]


def head_tensors(manifest: Manifest) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The head after SA2 (`model.head_as.onnx`), unbatched with T variable: x_clip, x_as [T, D] -> score,
    score_c [T], probs [T, 1 + C]."""
    d, n_probs = manifest.dim, len(manifest.classes)
    inputs = [TensorSpec(name, "TYPE_FP32", (-1, d)) for name in HEAD_FEATURES_INPUTS]
    score, score_c, probs = HEAD_OUTPUTS
    outputs = [TensorSpec(score, "TYPE_FP32", (-1,)), TensorSpec(score_c, "TYPE_FP32", (-1,)),
               TensorSpec(probs, "TYPE_FP32", (-1, n_probs))]  # fmt: skip
    return inputs, outputs


def identity(manifest: Manifest, role: str, pixels: bool = False) -> dict[str, str]:
    """The parameters a hosted graph of `role` carries: which export and which of its graphs it is (with `pixels`,
    also the preprocessing graph in front of it)."""
    params = {
        P_FORMAT: FORMAT,
        P_ROLE: role,
        P_SHA256: str(manifest.raw["files"][role]["sha256"]),
        P_CLIP_SHA256: manifest.clip_sha256,
        P_DIM: str(manifest.dim),
    }
    if pixels:
        params |= {P_INPUT: PIXELS, P_PRE_SHA256: str(manifest.raw["files"]["encoder_pre"]["sha256"])}
    return params


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    """Triton's JSON form `{"key": {"string_value": "v"}}` -> {"key": "v"}."""
    out = {}
    for key, value in (config.get("parameters") or {}).items():
        out[key] = value.get("string_value", "") if isinstance(value, dict) else str(value)
    return out


def _tensor_problems(kind: str, reported: list[dict[str, Any]], expected: list[TensorSpec]) -> list[str]:
    by_name = {t.get("name"): t for t in reported}
    problems = []
    for spec in expected:
        t = by_name.get(spec.name)
        if t is None:
            problems.append(f"no {kind} {spec.name!r} (has {', '.join(sorted(map(str, by_name))) or 'none'})")
            continue
        dtype = t.get("data_type", "TYPE_FP32")
        dims = tuple(int(d) for d in t.get("dims", []))
        if dtype != spec.data_type or dims != spec.dims:
            problems.append(f"{kind} {spec.name} is {dtype} {list(dims)}, the bundle's is {spec.data_type} "
                            f"{list(spec.dims)}")  # fmt: skip
    return problems


def served_encoder_problems(config: dict[str, Any], manifest: Manifest) -> list[str]:
    """Why the model `config` (Triton's JSON model config) is not this bundle's encoder; [] when it is.

    Checks the tensors (names, data types, per-crop dims), that the model is batched, and the identity
    parameters: the role must be one of this bundle's encoder graphs and its sha256 the manifest's for that role.
    """
    problems = []
    if int(config.get("max_batch_size", 0) or 0) < 1:
        problems.append("max_batch_size is 0 (the encoder must take batches of crops)")
    pixels = served_input_format(config) == "uint8"
    inputs, outputs = encoder_tensors(manifest, pixels)
    problems += _tensor_problems("input", config.get("input") or [], inputs)
    problems += _tensor_problems("output", config.get("output") or [], outputs)
    params = _parameters(config)
    role, sha = params.get(P_ROLE), params.get(P_SHA256)
    if role is None or sha is None:
        problems.append(f"no bundle identity in its parameters ({P_ROLE}, {P_SHA256}): not a stp-triton model")
    elif params.get(P_FORMAT, FORMAT) != FORMAT:
        problems.append(f"bundle format {params.get(P_FORMAT)}, this runtime reads {FORMAT}")
    elif role not in ENCODER_ROLES or role not in manifest.raw["files"]:
        problems.append(f"it hosts graph role {role!r}, which this bundle does not have")
    elif manifest.raw["files"][role]["sha256"] != sha:
        problems.append(f"it hosts another export ({role} sha256 {sha[:12]}, this bundle's is "
                        f"{manifest.raw['files'][role]['sha256'][:12]})")  # fmt: skip
    elif pixels and params.get(P_PRE_SHA256) != manifest.raw["files"].get("encoder_pre", {}).get("sha256"):
        problems.append("its preprocessing graph is not this bundle's model.pre.onnx (another export, or a bundle "
                        "exported before it)")  # fmt: skip
    return problems


def served_input_format(config: dict[str, Any]) -> str:
    """"uint8" when the model takes uint8 crops (the bundle's preprocessing graph in front of the encoder), else
    "float32" (CLIP-normalised images): what `stp-run --triton` sends."""
    names = {t.get("name") for t in config.get("input") or []}
    return "uint8" if PRE_INPUT in names or _parameters(config).get(P_INPUT) == PIXELS else "float32"


def served_role(config: dict[str, Any]) -> str | None:
    """The bundle graph role a (checked) model config says it hosts."""
    return _parameters(config).get(P_ROLE)
