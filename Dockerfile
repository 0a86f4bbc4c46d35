# syntax=docker/dockerfile:1
# stprompt appliance image. On start, stp-appliance builds the TensorRT engines of the bundle mounted at /bundle
# into /cache (or reuses them when their cache key matches; the CPU image builds the OpenVINO engine of its CPU
# instead; without either it falls back to ONNX Runtime), then execs stp-run with the container's arguments (with
# --triton URL among them nothing is built: the encoder runs on that Triton server, tritonclient's gRPC client is in
# every target). Runtime dependencies only: no torch.
#
#   x86_64 + NVIDIA GPU (default)   docker build -t stprompt:gpu .
#   Jetson Orin, JetPack 6.1 / 6.2  docker build -t stprompt:jetson --build-arg TARGET=jetson \
#                                       --build-arg BASE_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0 .
#   CPU only (OpenVINO, ONNX Runtime) docker build -t stprompt:cpu --build-arg TARGET=cpu .
#
# BASE_IMAGE (TARGET=gpu and TARGET=jetson):
#   nvcr.io/nvidia/tensorrt:24.11-py3   x86_64: TensorRT 10.6, CUDA 12.6, Ubuntu 22.04, Python 3.10 (default)
#   nvcr.io/nvidia/tensorrt:<yy.mm>-py3 any later TensorRT 10 release of that image works the same way
#   nvcr.io/nvidia/l4t-jetpack:r36.4.0  Jetson: JetPack 6.1 / 6.2 (L4T r36.4), CUDA 12.6, TensorRT 10.3, Python 3.10
# On Jetson, TensorRT's Python bindings, CUDA and OpenCV with GStreamer come from JetPack (the base image, or
# Ubuntu's python3-opencv); pip never installs tensorrt or opencv there (PyPI's aarch64 wheels are not built
# for Jetson's L4T CUDA, and pip's OpenCV has no GStreamer for csi:// cameras).
# CPU_BASE_IMAGE (TARGET=cpu): python:3.11-slim-bookworm.
# Needs BuildKit (the default builder since Docker 23): only the stages of the chosen TARGET are built.

ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:24.11-py3
ARG CPU_BASE_IMAGE=python:3.11-slim-bookworm
ARG TARGET=gpu

# --- x86_64 + NVIDIA GPU: TensorRT from the base image; ONNX Runtime GPU for --providers cuda and stp-run --check
FROM ${BASE_IMAGE} AS runtime-gpu
ARG BASE_IMAGE
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorrt') is None)" \
    || { echo "TARGET=gpu: ${BASE_IMAGE} has no TensorRT Python bindings; use nvcr.io/nvidia/tensorrt:<yy.mm>-py3" >&2; exit 1; }
# NumPy < 2: the TensorRT bindings of these images are built against NumPy 1.x. PIP_BREAK_SYSTEM_PACKAGES lets
# pip install into the image's only Python on the Ubuntu 24.04-based tags (PEP 668); this image has no other use.
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir \
        "numpy>=1.24,<2" "opencv-python-headless>=4.8" "numba>=0.59" "tqdm>=4.60" "av>=14" \
        "onnxruntime-gpu>=1.17" "cuda-python>=12.6,<13" "tritonclient[grpc]>=2.40"

# --- Jetson (JetPack 6): TensorRT, CUDA and OpenCV (with GStreamer) from JetPack, never from PyPI
FROM ${BASE_IMAGE} AS runtime-jetson
ARG BASE_IMAGE
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3008 (pin apt versions) ignored: the packages come from whichever JetPack 6 / Ubuntu 22.04 base is chosen, whose
# versions we do not control; pinning one would break the others.
# hadolint ignore=DL3008
RUN has() { python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('$1') is None)"; }; \
    has tensorrt || { echo "TARGET=jetson: ${BASE_IMAGE} has no TensorRT Python bindings (JetPack's" \
        "python3-libnvinfer); use nvcr.io/nvidia/l4t-jetpack:r36.4.0 or another JetPack 6 image" >&2; exit 1; }; \
    pkgs=(); \
    python3 -m pip --version > /dev/null 2>&1 || pkgs+=(python3-pip); \
    has cv2 || pkgs+=(python3-opencv); \
    if [ "${#pkgs[@]}" -gt 0 ]; then \
        apt-get update && apt-get install -y --no-install-recommends "${pkgs[@]}" && rm -rf /var/lib/apt/lists/*; \
    fi
# NumPy < 2: JetPack's TensorRT bindings and the apt OpenCV are built against NumPy 1.x.
RUN python3 -m pip install --no-cache-dir \
        "numpy>=1.24,<2" "numba>=0.59" "tqdm>=4.60" "av>=14" "onnxruntime>=1.17" "cuda-python>=12.6,<13" \
        "tritonclient[grpc]>=2.40"

# --- CPU only: stp-appliance builds the OpenVINO engine of the bundle for this CPU (bf16 where it has AMX or
# AVX512_BF16; INT8 with STP_BUILD_ARGS="--int8 --calibrate /bundle/site.mp4") into /cache and runs it; ONNX Runtime
# runs the heads, and the encoder too where OpenVINO cannot. NNCF (INT8 calibration on the target) brings scipy and
# scikit-learn, not torch.
FROM ${CPU_BASE_IMAGE} AS runtime-cpu
RUN python3 -m pip install --no-cache-dir \
        "numpy>=1.24" "opencv-python-headless>=4.8" "numba>=0.59" "tqdm>=4.60" "av>=14" "onnxruntime>=1.17" \
        "openvino>=2024.4" "nncf>=2.12" "tritonclient[grpc]>=2.40"

# --- the appliance: the same on every target
# DL3006 (tag the image) ignored: runtime-${TARGET} is one of the stages above, not a registry image.
# hadolint ignore=DL3006
FROM runtime-${TARGET} AS appliance
LABEL org.opencontainers.image.title="stprompt appliance" \
      org.opencontainers.image.description="STPrompt video anomaly detection: TensorRT / ONNX Runtime streaming runtime" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY pyproject.toml README.md /opt/stprompt/
COPY src /opt/stprompt/src
# --no-deps: the runtime's dependencies are installed above per target (no torch; tensorrt and, on Jetson, OpenCV
# come from the base image, which pip would otherwise try to replace).
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --no-deps /opt/stprompt \
    && python3 -c "import stprompt.appliance, stprompt.runtime.cli" \
    && useradd --system --uid 10001 --gid video --home-dir /home/stp --create-home --shell /usr/sbin/nologin stp \
    && mkdir -p /bundle /cache/numba \
    && chown -R stp:video /cache
# /bundle: the stp-export bundle (mount read-only). /cache: TensorRT plans + timing cache, the staged manifest and
# Numba's compiled kernels; a named volume keeps them across restarts, so only the first start builds.
ENV STP_BUNDLE=/bundle \
    STP_CACHE=/cache \
    NUMBA_CACHE_DIR=/cache/numba \
    PYTHONUNBUFFERED=1
VOLUME ["/bundle", "/cache"]
USER 10001
WORKDIR /home/stp
ENTRYPOINT ["stp-appliance"]
CMD ["--help"]
