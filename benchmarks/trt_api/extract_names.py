"""Regenerate tests/trt_api/tensorrt-<version>.txt: which TensorRT Python API names stprompt uses exist in a version.

Reads NVIDIA's binding wheels without importing them (the extension needs the TensorRT libraries and a GPU):

    pip download --no-deps tensorrt-cu12-bindings==10.3.0 -d /tmp/trtw/10.3.0   # likewise 10.6.0, 11.4.0.106
    python benchmarks/trt_api/extract_names.py /tmp/trtw/*/tensorrt_cu12_bindings-*.whl

pybind11 registers every class, method, property and enum member under its name, a NUL-terminated string in the
extension's read-only data; `nptype` and `__version__` are Python, in the package's `__init__.py`. A dotted name
`Owner.member` is `present` when both parts are such strings, `absent` otherwise. The check is by name, not by
owner (a string table does not say which class registered a member), and the linker stores a string that ends
another one inside it ("serialize" in "deserialize"), so a name found only as such a tail is `present` with the
note `(tail)`. No ships-with-stubs shortcut exists: the wheels (10.3, 10.6, 11.4) carry no .pyi files.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import zipfile
from pathlib import Path

# Every TensorRT name stprompt.engines.tensorrt (build) and stprompt.runtime.backends.trt (run) touch, plus the
# precision-flag names the strongly typed build no longer uses (recorded so tests know where they vanished).
NAMES = """
__version__ nptype
Logger Logger.WARNING Runtime Runtime.deserialize_cuda_engine
Builder Builder.create_network Builder.create_builder_config Builder.create_optimization_profile
Builder.build_serialized_network
NetworkDefinitionCreationFlag NetworkDefinitionCreationFlag.STRONGLY_TYPED NetworkDefinitionCreationFlag.EXPLICIT_BATCH
OnnxParser OnnxParser.parse_from_file OnnxParser.num_errors OnnxParser.get_error
IBuilderConfig IBuilderConfig.set_memory_pool_limit IBuilderConfig.set_flag IBuilderConfig.clear_flag
IBuilderConfig.add_optimization_profile IBuilderConfig.create_timing_cache IBuilderConfig.set_timing_cache
IBuilderConfig.get_timing_cache ITimingCache ITimingCache.serialize
MemoryPoolType MemoryPoolType.WORKSPACE
BuilderFlag BuilderFlag.TF32 BuilderFlag.FP16 BuilderFlag.BF16 BuilderFlag.INT8 BuilderFlag.OBEY_PRECISION_CONSTRAINTS
BuilderFlag.PREFER_PRECISION_CONSTRAINTS
IOptimizationProfile IOptimizationProfile.set_shape
ICudaEngine ICudaEngine.num_io_tensors ICudaEngine.get_tensor_name ICudaEngine.get_tensor_mode
ICudaEngine.get_tensor_dtype ICudaEngine.get_tensor_profile_shape ICudaEngine.create_execution_context
TensorIOMode TensorIOMode.INPUT TensorIOMode.OUTPUT DataType DataType.FLOAT DataType.HALF
IExecutionContext IExecutionContext.set_input_shape IExecutionContext.get_tensor_shape
IExecutionContext.set_tensor_address IExecutionContext.execute_async_v3
""".split()  # noqa: SIM905 - one line per owner reads better than a list literal


def wheel_parts(wheel: Path) -> tuple[str, bytes, str]:
    """(version, the extension's bytes, the package's __init__.py) of a tensorrt bindings wheel."""
    version = re.match(r"tensorrt_cu\d+_bindings-([\d.]+)-", wheel.name)
    if version is None:
        raise SystemExit(f"{wheel.name}: not a tensorrt_cu*_bindings wheel")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        so = next(n for n in names if n.endswith(".so") and "/tensorrt" in n)
        init = next(n for n in names if n.endswith("tensorrt_bindings/__init__.py"))
        if any(n.endswith(".pyi") for n in names):
            print(f"{wheel.name}: ships .pyi stubs; prefer them", file=sys.stderr)
        return version.group(1), zf.read(so), zf.read(init).decode()


def python_names(source: str) -> set[str]:
    """Top-level functions and assigned names of the package's __init__.py."""
    out = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return out


def find(name: str, binary: bytes, py: set[str]) -> str | None:
    """'exact' / 'tail' / 'python' where `name` is found, None where it is not."""
    if name in py:
        return "python"
    key = name.encode() + b"\0"
    if re.search(rb"(?<![\x21-\x7e])" + re.escape(key), binary):
        return "exact"
    return "tail" if key in binary else None


def check(wheel: Path) -> tuple[str, list[str]]:
    version, binary, init = wheel_parts(wheel)
    py = python_names(init)
    lines = []
    for dotted in NAMES:
        where = [find(part, binary, py) for part in dotted.split(".")]
        state = "present" if all(where) else "absent"
        note = " (tail)" if state == "present" and "tail" in where else ""
        lines.append(f"{state} {dotted}{note}")
    return version, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheels", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests" / "trt_api")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for wheel in args.wheels:
        version, lines = check(wheel)
        short = ".".join(version.split(".")[:2])
        header = [f"# TensorRT {version} ({wheel.name}): API names stprompt uses",
                  "# written by benchmarks/trt_api/extract_names.py (present/absent: see its docstring); do not edit"]
        path = args.out / f"tensorrt-{short}.txt"
        path.write_text("\n".join(header + lines) + "\n")
        print(f"{path}: {sum(line.startswith('absent') for line in lines)} absent of {len(lines)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
