# Two commands on a fresh machine (Python 3.11 + pip):
#   make demo   create .venv if needed, then run `d2scale select --fraction 0.3` on the sample pool
#   make test   create .venv if needed, then run the test suite (make test-all: with -m slow)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-stamp
PIP := $(VENV)/bin/pip install --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-all lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -q -e ".[dev,vision]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/d2scale select --fraction 0.3

# two pytest processes (pytest-xdist): the suite's tests are mostly single-threaded
test: $(STAMP)
	$(VENV)/bin/pytest -q -n 2

test-all: $(STAMP)
	$(VENV)/bin/pytest -q -n 2 -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_select.py

clean:
	rm -rf $(VENV) d2scale-out build dist *.egg-info
