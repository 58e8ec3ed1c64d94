# Two commands on a fresh machine with Python 3.11 and Java 17:
#   make demo   install into .venv and run the job on the bundled sample
#   make test   install the same way and run the tests
#   make test-fast   the kernel tests only (no Spark, no model): seconds
#   make lint   ruff, configured in pyproject.toml
#   make bench-quality   build the labelled photo set, run the job on it, score it beside its peers
#   make executor-env   pack what cluster executors run into dist/neardup-executor-env.tar.gz (README, "On a cluster")
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-output

.PHONY: install demo test test-fast lint bench-quality executor-env clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@# The JVM class-data archive local runs start from (about 6 s sooner); runs work without it.
	PYSPARK_PYTHON=$(abspath $(PY)) $(VENV)/bin/neardup build-jvm-archive || echo "make: no JVM class archive; runs start without it"
	touch $@

install: $(VENV)/.installed

demo: install
	PYSPARK_PYTHON=$(abspath $(PY)) $(VENV)/bin/neardup run --input samples/catalog --output $(DEMO_OUT) --overwrite

test: install
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not spark and not model and not gpu" tests

$(VENV)/.lint-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[lint]'
	touch $@

lint: $(VENV)/.lint-installed
	$(VENV)/bin/ruff check .

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

bench-quality: $(VENV)/.bench-installed
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) benchmarks/quality/run.py --work bench-quality

# Where Python lives on the cluster's nodes (PREFIX/bin/python3.11); empty: this machine's.
EXECUTOR_PYTHON_PREFIX ?=

$(VENV)/.cluster-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[cluster]'
	touch $@

executor-env: $(VENV)/.cluster-installed
	$(PY) deploy/executor_env.py $(if $(EXECUTOR_PYTHON_PREFIX),--python-prefix $(EXECUTOR_PYTHON_PREFIX))

clean:
	rm -rf $(VENV) $(DEMO_OUT) bench-quality *.egg-info
