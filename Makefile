# localcoder: two commands do everything on a fresh machine.
#   make demo   set up .venv and run the main job on the embedded demo model
#   make test   set up .venv with the test oracles (CPU torch, transformers, llama.cpp) and run the whole suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LLAMA_CPP_PYTHON := 0.3.36
ORACLE := .cache/llama.cpp-$(LLAMA_CPP_PYTHON)/.complete

.PHONY: setup setup-test demo test bench clean

$(VENV)/.setup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

# llama-cpp-python builds llama.cpp from source (about 5 minutes on 2 cores; pip caches the wheel afterwards).
$(VENV)/.setup-test: $(VENV)/.setup
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(PY) -m pip install --quiet -e ".[test]"
	touch $@

# llama.cpp's own HF -> GGUF converter (the byte-exact oracle) ships in the llama-cpp-python sdist.
$(ORACLE):
	$(PY) scripts/fetch_llama_converter.py $(LLAMA_CPP_PYTHON) $(dir $(ORACLE))

setup: $(VENV)/.setup
setup-test: $(VENV)/.setup-test $(ORACLE)

demo: setup
	$(VENV)/bin/localcoder demo

test: setup-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup-test
	$(PY) benchmarks/convert_bench.py

clean:
	rm -rf $(VENV) .cache
