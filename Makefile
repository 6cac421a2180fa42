# Benchmarks (needs: pip install -e ".[bench]"). Override e.g. `make bench DATA=/path/to/data BENCH_ARGS="--limit 5"`.
PYTHON ?= python
DATA ?= ../shared/data
BENCH_ARGS ?=
SPEED_ARGS ?=

.PHONY: bench bench-accuracy bench-speed bench-ensemble bench-errors bench-geometry

bench: bench-accuracy bench-speed bench-ensemble bench-errors bench-geometry

bench-accuracy:
	$(PYTHON) benchmarks/accuracy.py --data $(DATA) $(BENCH_ARGS)

bench-speed:
	$(PYTHON) benchmarks/speed.py --data $(DATA) $(SPEED_ARGS)

bench-ensemble:
	$(PYTHON) benchmarks/ensemble_consensus.py --data $(DATA)

bench-errors:  # reads benchmarks/results/val.csv (written by `immunofold evaluate ... --out benchmarks/results/val.json`)
	$(PYTHON) benchmarks/error_calibration.py

bench-geometry:
	$(PYTHON) benchmarks/geometry.py --data $(DATA)
