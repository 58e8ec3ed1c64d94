# Two commands on a fresh machine with Python 3.11 and Java 17:
#   make demo   install into .venv and run the job on the bundled sample
#   make test   install the same way and run the tests
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-output

.PHONY: install demo test clean

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

clean:
	rm -rf $(VENV) $(DEMO_OUT) *.egg-info
