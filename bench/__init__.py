"""The benchmark of spec/performance.md (issue 10): `python -m bench.run --size 1m`. Never part of the test suite."""
