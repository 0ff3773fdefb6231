# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit venv clean locks

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/qfleet demo --out demo-output

lint: $(STAMP)
	$(BIN)/ruff check operator tests benchmarks scripts
	$(BIN)/ruff format --check operator tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	bash scripts/install-k8s-tools.sh
	$(BIN)/pytest -q

test: lint typecheck unit

# The images' lock files: images/<image>/requirements.txt (the pins the tests run with) resolved
# to every package with its hashes, for Python 3.11 on linux x86_64 (the images' platform; run it
# there). pip-tools lives in its own virtual environment, not in the project's.
LOCK_VENV := build/pip-tools
IMAGES := server operator toolkit

locks:
	$(PYTHON) -c 'import platform, sys; assert sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64" and sys.platform == "linux", "lock on Python 3.11, linux x86_64"'
	test -x $(LOCK_VENV)/bin/pip-compile || ($(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet pip-tools)
	for image in $(IMAGES); do \
		CUSTOM_COMPILE_COMMAND="make locks" $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes \
			--no-emit-index-url --no-emit-find-links --strip-extras --allow-unsafe --no-config \
			--output-file images/locks/$$image.txt images/$$image/requirements.txt || exit 1; \
	done

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache $(LOCK_VENV)
