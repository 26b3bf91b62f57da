# `make test` and `make demo` build .venv when it is missing or older than pyproject.toml (the install is skipped
# while the venv is current), then run the suite / train the digits demo.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo clean-venv

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check timm_tricks tests benchmarks
	$(VENV)/bin/python -m pytest -q

# Trains the digits recipe on the bundled data on the CPU (about a minute) into a new runs/ folder.
demo: $(STAMP)
	$(VENV)/bin/timm-tricks train --recipe digits --output runs/digits-$$(date +%Y%m%d-%H%M%S)

lint: $(STAMP)
	$(VENV)/bin/ruff check timm_tricks tests benchmarks

clean-venv:
	rm -rf $(VENV)
