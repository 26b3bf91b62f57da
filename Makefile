# `make test` builds .venv when it is missing or older than pyproject.toml, then runs the suite.
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

demo: $(STAMP)
	$(VENV)/bin/timm-tricks recipes
	mkdir -p runs/demo
	$(VENV)/bin/timm-tricks lr-schedule --recipe bag_of_tricks --steps-per-epoch 1252 \
		--csv runs/demo/bag_of_tricks_lr.csv --plot runs/demo/bag_of_tricks_lr.png
	@echo "first and last steps of the Bag of Tricks schedule (runs/demo/bag_of_tricks_lr.csv):"
	@head -n 3 runs/demo/bag_of_tricks_lr.csv
	@tail -n 2 runs/demo/bag_of_tricks_lr.csv

lint: $(STAMP)
	$(VENV)/bin/ruff check timm_tricks tests benchmarks

clean-venv:
	rm -rf $(VENV)
