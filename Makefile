# Set-up contract: `make demo` and `make test` create .venv at the repo root if missing, install qfocal with its
# dev and integration extras, then run the demo or the whole test suite. No GPU needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.qfocal-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint format bench docs docs-check dist clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --upgrade "pip>=23" "setuptools<81" wheel
	$(PY) -m pip install "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install -e ".[dev,lab,cluster,integrations,mmdet,docs,release]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	YOLO_OFFLINE=1 $(VENV)/bin/qfocal demo

test: $(STAMP)
	YOLO_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# Also the long-training cases marked slow.
test-all: $(STAMP)
	YOLO_OFFLINE=1 $(PY) -m pytest --run-slow $(PYTEST_ARGS)

# mypy reads [tool.mypy] in pyproject.toml: strict on the library (qfocal), mypy's default checks on the lab.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src/qfocal src/qfocal_lab

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(VENV)/bin/qfocal bench

# The documentation site, strict: any warning (a missing image, a broken internal link or cross-reference) fails.
docs: $(STAMP)
	rm -rf docs/_build/html
	YOLO_OFFLINE=1 $(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

# The built site in headless Chromium (Debian's package, installed here when missing and running as root):
# images decoded, every relative link resolves, a screenshot in docs/_build/screenshots/index.png.
docs-check: docs
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium; } || \
	  { echo "docs-check: chromium is missing; apt-get install -y chromium" >&2; exit 1; }
	$(PY) docs/check_site.py docs/_build/html

# sdist and wheel (isolated build), then twine's metadata check.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build
	$(VENV)/bin/twine check --strict dist/*

clean:
	rm -rf $(VENV) build dist docs/_build src/*.egg-info .pytest_cache .ruff_cache
