# Two commands on a fresh machine:
#   make demo   set up .venv, train a small NequIP on the bundled example, evaluate it, run a short MD
#   make test   set up .venv with the test extras, run the test suite
#
# torch is pinned to the CPU build of 2.13.0 and installed first, so that the
# package's own "torch>=2.2" requirement never pulls a CUDA build.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
TORCH  ?= torch==2.13.0
JOBS   ?= 2

.PHONY: setup setup-test demo test bench lammps clean

$(VENV)/.setup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)"
	$(PIP) install -e .
	touch $@

$(VENV)/.setup-test: $(VENV)/.setup
	$(PIP) install -e ".[test]"
	touch $@

setup: $(VENV)/.setup
setup-test: $(VENV)/.setup-test

demo: $(VENV)/.setup
	rm -rf demo-run
	$(VENV)/bin/clebsch demo --out demo-run

test: $(VENV)/.setup-test
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS) -q

lammps: $(VENV)/.setup-test
	VENV=$(abspath $(VENV)) JOBS=$(JOBS) bash scripts/build_lammps.sh

bench: $(VENV)/.setup-test
	$(PY) benchmarks/o3.py

clean:
	rm -rf $(VENV) demo-run
