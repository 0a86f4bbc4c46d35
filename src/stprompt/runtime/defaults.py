"""stp-run's defaults that its --help prints, in a module that imports nothing: `stp-run --help` loads no NumPy,
Numba or OpenCV (tests/test_runtime_run.py times it). The modules that use them import them from here."""

# README's lookahead table (benchmarks/measure_lookahead.py): 8 snippets keep every score within 1e-4 of the exact
# value (max abs error 2.6e-05) and answer 5x sooner than the exact 41 at SPEC defaults
LIVE_LOOKAHEAD = 8

# `stp-run --gate auto` (the default): live sources skip windows that changed by less than this many grey levels
# (mean absolute difference); files and folders are encoded whole, so their scores equal stp-eval's. Chosen from
# README's real-clip gating table (benchmarks/measure_gating.py --clips): the largest measured threshold that kept
# every clip's snippet ranking (Spearman >= 0.95) and its largest score deviation under half the clip's own score
# spread. 4, chosen earlier on synthetic static cameras, failed on a real indoor clip with people walking
# (Spearman 0.11, largest deviation 2.5x the spread); 2 failed there too (0.93, 0.60x).
LIVE_DEFAULT = 1.0

# `stp-run --gate-refresh` (default): a gated window is re-encoded at least every this many sampled frames of its
# stream. From the same tables: at gate 1 every bound held and 4 cost about 2 points of skipped share at most while
# giving the smallest deviations where the bound mattered; at higher gates it helped most often (not always).
REFRESH_DEFAULT = 4
