"""The benchmark (bench_export.py): run as a script, imported as ``bench.bench_export`` by
its tests."""
