# Two entry points for a newcomer: `make demo` and `make test`.
# Both make a virtual environment in .venv and install the project into it.
# torch==2.13.0 is installed first so that the CPU build is used (see README).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
export SBI_SERVICE_HOME ?= $(CURDIR)/.sbi-service

.PHONY: install install-test demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,ray]"

# Train a two_moons NSF on CPU, sample posteriors for 4 observations, print a
# summary and write a pair plot.
demo: install
	$(BIN)/sbi-service simulators list
	$(BIN)/python -c "import numpy as np; np.save('demo_observations.npy', np.array([[0.0, 0.0], [0.2, -0.1], [-0.3, 0.4], [0.5, 0.5]], dtype=np.float32))"
	$(BIN)/sbi-service train --simulator two_moons --num-simulations 10000 --estimator nsf --seed 0 --name two_moons_demo
	$(BIN)/sbi-service sample two_moons_demo --observations demo_observations.npy --num-samples 2000 --seed 1 --out demo_samples.npy --plot demo_pairplot.png
	@echo "samples: demo_samples.npy  pair plot: demo_pairplot.png"

test: install-test
	$(BIN)/python -m pytest

lint: install-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .sbi-service demo_*.npy demo_pairplot.png
