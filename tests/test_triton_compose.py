"""docker-compose.yml (README: Scale out): one Triton service, appliances pointed at it, consistent with the code.

No Docker here: the file is read as YAML and every piece is checked against what it must match: the Triton
release stp-triton writes for, the model repository mount, stp-run's parser for each appliance's command, and the
address each appliance's --triton names.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from stprompt import appliance
from stprompt.runtime.backends.triton import parse_triton_url
from stprompt.triton.repository import RepositoryOptions

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_triton_service_serves_the_repository_stp_triton_writes():
    triton = services()["triton"]
    image, tag = triton["image"].rsplit(":", 1)
    assert image == "nvcr.io/nvidia/tritonserver" and tag == f"{RepositoryOptions().release}-py3"
    assert "--model-repository=/models" in triton["command"]
    assert "./model_repository:/models:ro" in triton["volumes"]
    assert {p.split(":")[1] for p in triton["ports"]} >= {"8001", "8002"}  # gRPC for clients, metrics
    gpus = triton["deploy"]["resources"]["reservations"]["devices"]
    assert gpus[0]["capabilities"] == ["gpu"]


def test_triton_appliances_are_thin_clients_of_that_service():
    found = {name: svc for name, svc in services().items() if name.startswith("appliance")}
    assert len(found) >= 2
    grpc_port = next(p.split(":")[1] for p in services()["triton"]["ports"] if p.split(":")[1] == "8001")
    for svc in found.values():
        assert svc["image"].startswith("stprompt:") and "triton" in svc["depends_on"]
        assert "./bundle:/bundle:ro" in svc["volumes"]  # the image's STP_BUNDLE
        parsed = appliance.check_run_args(svc["command"])  # stp-run's own parser judges the command
        address, model = parse_triton_url(parsed.triton)
        assert address == f"triton:{grpc_port}" and model == "stp_encoder"
