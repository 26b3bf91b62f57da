# `make test` and `make demo` build .venv when it is missing or older than pyproject.toml (the install is skipped
# while the venv is current), then run the suite / the digits demo.
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

# Two pytest workers, one per core, each test file on one worker (module fixtures stay shared); one torch thread
# per worker, so the two do not fight over the cores.
test: $(STAMP)
	$(VENV)/bin/ruff check timm_tricks tests benchmarks
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

# On the bundled digits, on this CPU (a few minutes): a small search (Optuna + ASHA, 8 trials of up to 6 epochs),
# its report, then the best trial's config trained for the recipe's full 15 epochs; all in a new runs/demo-* folder.
DEMO := runs/demo-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(VENV)/bin/timm-tricks tune --space digits --num-samples 8 --epochs 6 --storage $(DEMO) --name search
	$(VENV)/bin/timm-tricks train --recipe $(DEMO)/search/best_recipe.yaml --epochs 15 --output $(DEMO)/best

lint: $(STAMP)
	$(VENV)/bin/ruff check timm_tricks tests benchmarks

clean-venv:
	rm -rf $(VENV)
