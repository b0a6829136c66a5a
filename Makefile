# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv/ if it is missing.
#
# The pins below are for this machine kind (x86_64, no GPU, Python 3.12 from pyenv). torch 2.14.1 with
# torchvision 0.29.1 is a CUDA build that runs on the CPU; PyPI's torchvision does not load beside the
# on-disk CPU torch 2.13.0 wheel. pyproject.toml keeps ranges so users keep their own CUDA torch.
# A real interpreter, not a pyenv shim (a shim fails when 3.12 is not the active pyenv version).
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) \
                         $(shell command -v python3.12 2>/dev/null))
VENV := .venv
PY := $(VENV)/bin/python
PINS := torch==2.14.1 torchvision==0.29.1 torchgeo==0.10.1 timm==1.0.31 peft==0.21.2 \
        lightning==2.6.6 kornia==0.9.0 geopandas==1.2.0 rasterio==1.5.2 onnx==1.23.2 onnxruntime==1.32.0 \
        pystac==1.15.2 tensorboard==2.21.0 shtab==1.13.0 duckdb==2.0.1
SHARED_WEIGHTS := ../shared/weights/vit_small_patch14_dinov2.safetensors
DEMO_WEIGHTS ?= $(if $(wildcard $(SHARED_WEIGHTS)),$(SHARED_WEIGHTS),)

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@test -n "$(PYTHON312)" || { echo "Python 3.12 is needed (TorchGeo 0.10); set PYTHON312=/path/to/python3.12"; exit 1; }
	test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PINS)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: venv
	$(VENV)/bin/geoexplora demo --out demo-output $(if $(DEMO_WEIGHTS),--weights $(DEMO_WEIGHTS),)

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-output .cache
