# Benchmarks (needs: pip install -e ".[bench]"). Override e.g. `make bench DATA=/path/to/data BENCH_ARGS="--limit 5"`.
PYTHON ?= python
DATA ?= ../shared/data
BENCH_ARGS ?=
SPEED_ARGS ?=

.PHONY: bench bench-accuracy bench-speed bench-ensemble bench-errors bench-geometry bench-igfold-env

bench: bench-accuracy bench-speed bench-ensemble bench-errors bench-geometry

bench-accuracy:
	$(PYTHON) benchmarks/accuracy.py --data $(DATA) $(BENCH_ARGS)

bench-speed:
	$(PYTHON) benchmarks/speed.py --data $(DATA) $(SPEED_ARGS)

bench-ensemble:
	$(PYTHON) benchmarks/ensemble_consensus.py --data $(DATA)

bench-errors:  # predicts val once (cached in /tmp/immunofold-calibration); refit with scripts/fit_calibration.py
	$(PYTHON) benchmarks/error_calibration.py --data $(DATA)

bench-geometry:
	$(PYTHON) benchmarks/geometry.py --data $(DATA)

bench-igfold-env:  # IgFold 1.0.1 in .venv-igfold (it conflicts with our antiberty pin); accuracy.py and speed.py use it
	bash scripts/setup_igfold.sh
