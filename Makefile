# Set-up contract: `make demo` and `make test` create .venv at the repo root if missing, install qfocal with its
# dev and integration extras, then run the demo or the whole test suite. No GPU needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.qfocal-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --upgrade "pip>=23" "setuptools<81" wheel
	$(PY) -m pip install "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install -e ".[dev,lab,cluster,integrations,mmdet]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	YOLO_OFFLINE=1 $(VENV)/bin/qfocal demo

test: $(STAMP)
	YOLO_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# Also the long-training cases marked slow.
test-all: $(STAMP)
	YOLO_OFFLINE=1 $(PY) -m pytest --run-slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(VENV)/bin/qfocal bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
