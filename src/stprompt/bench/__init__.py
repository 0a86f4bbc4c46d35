"""`stp-bench`: FLOPs and parameters per pipeline stage, latency and throughput per backend (read-only)."""
