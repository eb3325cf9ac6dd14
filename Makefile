# Two entry points: `make serve` and `make test`. Each creates the environment when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
MODELS ?= models
BENCH_ARGS ?=

.PHONY: serve test lint examples bench gpu-bench clean docker-smoke

$(BIN)/tandem: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[export,dev,otel]'
	touch $@

examples: $(BIN)/tandem
	$(BIN)/python -m exporters.examples --models $(MODELS)

serve: $(BIN)/tandem
	@test -d $(MODELS)/digits_mlp -a -d $(MODELS)/digits_cnn || $(MAKE) examples
	$(BIN)/tandem serve --models $(MODELS) --port $(PORT)

lint: $(BIN)/tandem
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(BIN)/tandem lint
	$(BIN)/python -m pytest

# Not part of `make test`: minutes of load; installs wrk with apt-get when missing (as root).
bench: $(BIN)/tandem
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# The GPU run (docs/benchmarks.md, "GPU"): exits 0 saying it measured nothing where there is no GPU.
gpu-bench: $(BIN)/tandem
	$(BIN)/python scripts/gpu_bench.py

# Builds the image and runs the compose stack for real (root, Debian; long). Not part of `make test`.
docker-smoke:
	scripts/docker-smoke

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
