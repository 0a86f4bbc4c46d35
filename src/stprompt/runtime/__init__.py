"""Streaming runtime (backends, sources, pipeline, sinks, `stp-run`): imports no torch, loads libraries lazily."""
