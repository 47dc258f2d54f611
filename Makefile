# The two set-up commands of the README:
#   make serve   create .venv, install the serving dependencies, serve the default model
#   make test    create .venv, install the pinned dependencies, run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export BENTOML_DO_NOT_TRACK := True
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: test browser lint reproduce fashion-mnist serve serve-deps default-model mnist-model samples bento clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.dev-installed: requirements/dev.txt requirements/serving.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements/dev.txt
	touch $@

test: $(VENV)/.dev-installed browser
	$(PY) -m pytest

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
# the usual search and download (README "Data"); Debian's Fashion-MNIST package is installed
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
# onnxruntime-gpu (CUDA and cuDNN from pip wheels, loaded by onnxruntime.preload_dlls()) instead
# of onnxruntime when nvidia-smi lists a GPU. 1.31.1: the newest onnxruntime-gpu on the package
# index used here (no 1.32.0 there). Override: make serve ORT_GPU='onnxruntime-gpu==X'.
HAS_GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo yes)
ORT_GPU ?= onnxruntime-gpu[cuda,cudnn]==1.31.1

# The serving environment only (no torch): requirements/serving.txt.
$(VENV)/.serving-installed: requirements/serving.txt | $(VENV)/bin/python
ifeq ($(HAS_GPU),yes)
	grep -v '^onnxruntime==' requirements/serving.txt > $(VENV)/serving-gpu.txt
	echo '$(ORT_GPU)' >> $(VENV)/serving-gpu.txt
	$(PY) -m pip uninstall -q -y onnxruntime || true
	$(PY) -m pip install -q -r $(VENV)/serving-gpu.txt
else
	$(PY) -m pip install -q -r requirements/serving.txt
endif
	touch $@

serve-deps: $(VENV)/.serving-installed

# Serve models/default/model.onnx (or $$BNSERVE_MODEL) on $(HOST):$(PORT). The model is checked
# first so that a bad file stops here with the reason.
serve: $(VENV)/.serving-installed
	$(PY) -c "from serving.model import read_model, model_path_from_env as p; i = read_model(p()); print(f'serving {i.path}')"
	$(VENV)/bin/bentoml serve . --host $(HOST) --port $(PORT)

# The embedded default model, in two runs (issue 20): the plain Fashion-MNIST model (1151 s on 2
# busy CPU cores, test accuracy 0.9194), then a fine-tune of it for what users send (training/
# augment.py: half of each batch mirrored, scaled, shifted, rotated, outlined/filled/thickened,
# contrast-changed, or round-tripped through the service's photo conversion), with 3,000 training
# images held out to fit the temperature and the out-of-distribution threshold. Then export with
# BN folded and parity-checked, and the model card. Needs the dev environment (torch).
DEFAULT_BASE_ARGS := --model vgg11 --bn --width 0.25 --dataset fashion-mnist --steps 2000 --seed 0
DEFAULT_MODEL_ARGS := --model vgg11 --bn --width 0.25 --dataset fashion-mnist --init runs/default-base/checkpoint.pt \
	--steps 200 --batch-size 64 --lr 0.02 --eval-every 200 --augment 0.5 --aug-photo 0.2 --holdout 3000 --seed 0
MNIST_BASE_ARGS := --model vgg11 --bn --width 0.125 --dataset mnist --steps 1500 --seed 0
MNIST_MODEL_ARGS := --model vgg11 --bn --width 0.125 --dataset mnist --init runs/mnist-base/checkpoint.pt \
	--steps 200 --batch-size 64 --lr 0.02 --eval-every 200 --augment 0.5 --no-aug-mirror --aug-lowres 0.3 \
	--aug-degrees 12 --aug-scale 0.8 1.1 --aug-style 0.5 --aug-photo 0.2 --holdout 3000 --seed 0
default-model: $(VENV)/.dev-installed
	rm -rf runs/default-base runs/default-model
	$(PY) -m training classifier $(DEFAULT_BASE_ARGS) --out runs/default-base --no-progress
	$(PY) -m training classifier $(DEFAULT_MODEL_ARGS) --out runs/default-model --no-progress
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
	rm -rf $(VENV)
