# Two commands on a fresh machine with Python 3.11 and Java 17:
#   make demo   install into .venv and run the job on the bundled sample
#   make test   install the same way and run the tests
#   make bench-quality   build the labelled photo set, run the job on it, score it beside its peers
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-output

.PHONY: install demo test bench-quality clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	PYSPARK_PYTHON=$(abspath $(PY)) $(VENV)/bin/neardup run --input samples/catalog --output $(DEMO_OUT) --overwrite

test: install
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m pytest -q tests

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

bench-quality: $(VENV)/.bench-installed
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) benchmarks/quality/run.py --work bench-quality

clean:
	rm -rf $(VENV) $(DEMO_OUT) bench-quality *.egg-info
