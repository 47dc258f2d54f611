# The two set-up commands of the README:
#   make serve   create .venv, install the serving dependencies, serve the default model
#   make test    create .venv, install the pinned dependencies, run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export BENTOML_DO_NOT_TRACK := True
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: test lint serve figures clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.dev-installed: requirements/dev.txt requirements/serving.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements/dev.txt
	touch $@

test: $(VENV)/.dev-installed
	$(PY) -m pytest

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check .

figures: $(VENV)/.dev-installed
	$(PY) -m training ioffe-fig1 --dataset fashion-mnist

clean-venv:
	rm -rf $(VENV)
