"""lungkit benchmarks: speed and memory measurements, run with `make bench`."""
