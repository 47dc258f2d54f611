# The two set-up commands of the README:
#   make serve   create .venv, install the serving lock (requirements/serving.lock), serve the default model
#   make test    create .venv, install the lock + the pinned dev tools (+ checkov's venv), run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export BENTOML_DO_NOT_TRACK := True
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: test browser lint reproduce fashion-mnist serve serve-deps default-model mnist-model samples bento clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.dev-installed: requirements/dev.txt requirements/serving.in requirements/serving.lock | $(VENV)/bin/python
	$(PY) -m pip install -q --require-hashes -r requirements/serving.lock
	sed -e '/^ *--hash/d' -e 's/ *\\$$//' requirements/serving.lock > $(VENV)/serving-constraints.txt
	$(PY) -m pip install -q -r requirements/dev.txt -c $(VENV)/serving-constraints.txt
	touch $@

test: $(VENV)/.dev-installed policy-deps browser
	$(PY) -m pytest

# checkov, the Kubernetes policy check of tests/test_deploy.py, in a virtual environment of its
# own (requirements/policy.txt says why); a failed install fails `make test`.
POLICY_VENV := .venv-policy
$(POLICY_VENV)/.installed: requirements/policy.txt
	$(PYTHON) -m venv $(POLICY_VENV)
	$(POLICY_VENV)/bin/python -m pip install -q -r requirements/policy.txt
	touch $@

.PHONY: policy-deps lock
policy-deps: $(POLICY_VENV)/.installed

# The test page is checked in a real headless Chromium (tests/test_service.py): Debian's chromium
# and chromium-driver, installed here when missing and this user may (root with apt-get);
# elsewhere that one test says why it is skipped.
browser:
	@command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium + chromium-driver for the browser test (apt-get)"; \
	    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "note: chromium + chromium-driver are missing: the browser test will be skipped"; \
	  fi; }

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check .

# Every experiment of both papers in the cpu preset, then the report (also into docs/). The data:
# $BNSERVE_DATA if set, else ../shared/data when it exists (this workplace's real MNIST), else
# the usual search and download (docs/reproduction.md, "Data"); Debian's Fashion-MNIST package is installed
# when missing and this user may (root with apt-get), as .ci/run does.
SHARED_DATA := $(if $(BNSERVE_DATA),,$(if $(wildcard ../shared/data),$(abspath ../shared/data)))
reproduce: $(VENV)/.dev-installed fashion-mnist
	$(if $(SHARED_DATA),BNSERVE_DATA=$(SHARED_DATA) )$(PY) -m training reproduce --preset cpu --docs docs

fashion-mnist:
	@test -d /usr/share/datasets/fashion-mnist || { \
	  if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing dataset-fashion-mnist (apt-get)"; \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  fi; }

# --- serving -------------------------------------------------------------------------------------
HOST ?= 0.0.0.0
PORT ?= 3000
# The serving environment is locked: requirements/serving.in names what the service needs
# (exact versions), requirements/serving.lock is its whole closure with hashes, written by
# `make lock` (uv pip compile); `make serve`, the Bento (bentofile.yaml) and the dev/CI install
# (requirements/dev.txt: -c serving.lock) all take their versions from it.
# On a GPU (nvidia-smi lists one) `make serve` installs requirements/serving-gpu.lock instead: the
# same lock with onnxruntime-gpu (CUDA and cuDNN from pip wheels, loaded by
# onnxruntime.preload_dlls()) in place of onnxruntime, every shared package at the same version.
# 1.31.1: the newest onnxruntime-gpu on PyPI when locked (no 1.32.0). Another version:
# make lock ORT_GPU='onnxruntime-gpu[cuda,cudnn]==X'.
HAS_GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo yes)
ORT_GPU ?= onnxruntime-gpu[cuda,cudnn]==1.31.1
SERVING_LOCK := requirements/$(if $(HAS_GPU),serving-gpu,serving).lock
# Python 3.11: the Bento image's (bentofile.yaml); --universal: markers for every platform.
UV_COMPILE := $(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command 'make lock'

# The serving environment only (no torch), every file checked against the lock's hashes.
$(VENV)/.serving-installed: $(SERVING_LOCK) | $(VENV)/bin/python
ifeq ($(HAS_GPU),yes)
	$(PY) -m pip uninstall -q -y onnxruntime || true
endif
	$(PY) -m pip install -q --require-hashes -r $(SERVING_LOCK)
	touch $@

# Re-resolve both locks from requirements/serving.in (needs the package index; review the diff).
# The dev set is resolved first and constrains the serving lock, so that one environment can hold
# both (e.g. tritonclient caps ml-dtypes): a serving package at another version than the dev
# tools accept would make the dev install fail. Locked versions that still fit are kept (uv
# prefers the pins of the file it rewrites); `make lock UPGRADE=--upgrade` takes the newest.
UPGRADE ?=
lock: $(VENV)/.dev-installed
	cp requirements/serving.lock $(VENV)/dev-resolved.txt
	$(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 $(UPGRADE) \
		requirements/dev.txt -o $(VENV)/dev-resolved.txt
	$(UV_COMPILE) $(UPGRADE) requirements/serving.in -c $(VENV)/dev-resolved.txt -o requirements/serving.lock
	sed 's/^onnxruntime==.*/$(ORT_GPU)/' requirements/serving.in > $(VENV)/serving-gpu.in
	$(UV_COMPILE) $(UPGRADE) $(VENV)/serving-gpu.in -c requirements/serving.lock -o requirements/serving-gpu.lock

serve-deps: $(VENV)/.serving-installed

# Serve models/default/model.onnx (or $$BNSERVE_MODEL) on $(HOST):$(PORT). The model is checked
# first so that a bad file stops here with the reason.
serve: $(VENV)/.serving-installed
	$(PY) -c "from serving.model import read_model; from serving.settings import Settings; i = read_model(Settings.from_env().model); print(f'serving {i.path}')"
	$(VENV)/bin/bentoml serve . --host $(HOST) --port $(PORT)

# The embedded default model, in two runs: the plain Fashion-MNIST model, then a fine-tune of it
# for what users send (training/augment.py: half of each batch mirrored, scaled, shifted, rotated,
# outlined/filled/thickened, contrast-changed, or round-tripped through the service's photo
# conversion; plus outlier exposure, training/outliers.py: a batch of images that are none of
# the classes each step, pulled towards the uniform answer), with 3,000 training images held out
# to fit the temperature and the out-of-distribution score and threshold (models/*/MODEL_CARD.md
# has the numbers); the default model also sees real third-party icons and emoji in every batch
# (training/icons.py: Iconify sets fetched with npm, rendered with cairosvg) and procedural
# drawings of tops, shirts, pullovers, coats and dresses (training/drawings.py). Then export with
# BN folded and parity-checked, and the model card. Needs the dev environment (torch), npm and
# requirements/real-images.txt (installed here).
DEFAULT_BASE_ARGS := --model vgg11 --bn --width 0.25 --dataset fashion-mnist --steps 2000 --seed 0
DEFAULT_MODEL_ARGS := --model vgg11 --bn --width 0.25 --dataset fashion-mnist --init runs/default-base/checkpoint.pt \
	--steps 8000 --batch-size 64 --lr 0.02 --eval-every 1000 --augment 0.5 --aug-photo 0.2 --holdout 3000 \
	--outlier-exposure 0.5 --icons 0.25 --drawings 0.3 --seed 1
MNIST_BASE_ARGS := --model vgg11 --bn --width 0.125 --dataset mnist --steps 1500 --seed 0
MNIST_MODEL_ARGS := --model vgg11 --bn --width 0.125 --dataset mnist --init runs/mnist-base/checkpoint.pt \
	--steps 5000 --batch-size 64 --lr 0.02 --eval-every 1000 --augment 0.5 --no-aug-mirror --aug-lowres 0.3 \
	--aug-degrees 12 --aug-scale 0.8 1.1 --aug-style 0.5 --aug-photo 0.2 --holdout 3000 --outlier-exposure 0.5 --seed 0
default-model: $(VENV)/.dev-installed
	$(PY) -m pip install -q -r requirements/real-images.txt
	rm -rf runs/default-base runs/default-model
	$(PY) -m training classifier $(DEFAULT_BASE_ARGS) --out runs/default-base --no-progress
	$(if $(SHARED_DATA),BNSERVE_DATA=$(SHARED_DATA) )$(PY) -m training classifier $(DEFAULT_MODEL_ARGS) --out runs/default-model --no-progress
	mkdir -p models/default
	$(PY) -m export runs/default-model/checkpoint.pt -o models/default/model.onnx > runs/default-model/export.txt \
		|| { cat runs/default-model/export.txt; exit 1; }
	cat runs/default-model/export.txt
	cp runs/default-model/checkpoint.pt models/default/checkpoint.pt
	$(PY) -m scripts.model_card runs/default-model models/default

# The digit model (models/mnist), the same way: MNIST as above, then the fine-tune for scans
# (no mirror: a mirrored digit is another glyph; small-scan low-resolution round trips).
mnist-model: $(VENV)/.dev-installed
	rm -rf runs/mnist-base runs/mnist-model
	$(if $(SHARED_DATA),BNSERVE_DATA=$(SHARED_DATA) )$(PY) -m training classifier $(MNIST_BASE_ARGS) --out runs/mnist-base --no-progress
	$(if $(SHARED_DATA),BNSERVE_DATA=$(SHARED_DATA) )$(PY) -m training classifier $(MNIST_MODEL_ARGS) --out runs/mnist-model --no-progress
	mkdir -p models/mnist
	$(if $(SHARED_DATA),BNSERVE_DATA=$(SHARED_DATA) )$(PY) -m export runs/mnist-model/checkpoint.pt -o models/mnist/model.onnx > runs/mnist-model/export.txt \
		|| { cat runs/mnist-model/export.txt; exit 1; }
	cat runs/mnist-model/export.txt
	cp runs/mnist-model/checkpoint.pt models/mnist/checkpoint.pt
	$(PY) -m scripts.model_card runs/mnist-model models/mnist

samples: $(VENV)/.dev-installed
	$(PY) -m scripts.make_samples --out samples

# A Bento (serving code + default model + serving requirements), built offline.
bento: $(VENV)/.serving-installed
	$(VENV)/bin/bentoml build .

clean-venv:
	rm -rf $(VENV) $(POLICY_VENV)
