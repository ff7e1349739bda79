"""`bench perf`: the benchmarks that time export, extraction and training."""
