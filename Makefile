# Two commands do all the set-up: `make demo` and `make test` (as root on Debian).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-unit lint bench soak wheels release clean image

setup:
	@./.ci/bootstrap

demo: setup
	$(VENV)/bin/watchpost demo $(if $(DURATION),--duration $(DURATION),)

test: setup lint
	$(PY) -m pytest -q --durations=25 tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

# ruff, the type checker and the import contracts (pyproject.toml [tool.mypy], [tool.importlinter]).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -c 'import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())'

wheels: setup
	$(PY) release/build_wheels.py --out dist

# A signed release artifact: RELEASE_KEY from `watchpost-hub release keygen` (docs/updates.md).
RELEASE_KEY ?= release-key.pem
release: setup
	$(PY) release/build_release.py --key $(RELEASE_KEY) --out dist --deps-cache build/release-deps

bench: setup
	@$(PY) -m bench

# Bounded soak run (SOAK_SECONDS, default 600; SOAK_FUZZ packets): soak-out/soak.{json,png}.
soak: setup
	@$(PY) -m bench.soak

# The firmware image: payload + offline checks here (tests/image); pi-gen where it can run.
image: setup
	@./image-build/make-image.sh

clean:
	-$(VENV)/bin/watchpost lab down 2>/dev/null
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
