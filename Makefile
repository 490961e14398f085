# Two commands do all the set-up: `make demo` and `make test` (as root on Debian).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-unit lint bench wheels clean image

setup:
	@./.ci/bootstrap

demo: setup
	$(VENV)/bin/watchpost demo $(if $(DURATION),--duration $(DURATION),)

test: setup
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

wheels: setup
	$(PY) release/build_wheels.py --out dist

bench: setup
	@$(PY) -m bench

# The firmware image: payload + offline checks here (tests/image); pi-gen where it can run.
image: setup
	@./image-build/make-image.sh

clean:
	-$(VENV)/bin/watchpost lab down 2>/dev/null
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
