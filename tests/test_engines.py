"""The engines room: what stp-export tells a user to build is exactly what stp-build builds."""

from __future__ import annotations

import contextlib
import io
import shlex

from stprompt.bundle.engine_keys import BuildSettings, engine_jobs, engine_path
from stprompt.bundle.manifest import load_manifest
from stprompt.export.cli import print_next_steps


def test_printed_trtexec_commands_cover_every_engine_the_builder_builds(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_next_steps(manifest)
    lines = [line for line in out.getvalue().splitlines() if "or with trtexec" in line]
    jobs = engine_jobs(manifest, BuildSettings.from_manifest(manifest))
    assert [job.role for job in jobs] == ["encoder", "head", "head_features", "encoder_pre"]
    assert [job.source_role for job in jobs] == ["encoder_fp16", "head", "head_features", "encoder_pre"]  # fp16
    assert len(lines) == len(jobs)
    for job, line in zip(jobs, lines, strict=True):
        assert f"({job.role})" in line
        argv = shlex.split(line.split(": ", 1)[1])
        assert f"--onnx={manifest.file(job.source_role).name}" in argv and "--stronglyTyped" in argv
        assert f"--saveEngine={engine_path(manifest, job.role).name}" in argv
        shapes = ",".join(f"{p.name}:{'x'.join(str(d) for d in p.max)}" for p in job.profiles)
        assert f"--maxShapes={shapes}" in argv
