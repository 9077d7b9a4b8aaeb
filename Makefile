# Two commands a fresh machine needs:   make demo   (main job)   and   make test   (whole suite).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKSPACE ?= workspace/demo
# Optional dependencies installed with the project: the Dockerfile installs `scale` (Ray) instead of `dev`.
EXTRAS ?= dev

.PHONY: install demo serve test lint browser clean

# uv resolves torch and torchvision together from PyPI (a matching pair that runs on CPU);
# it does not read pip's find-links, so a stray CPU-only torch wheel cannot break torchvision.
# UV_TORCH_BACKEND=cpu in the environment makes uv take the pair from PyTorch's CPU index (the Dockerfile does).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade uv
	$(BIN)/uv pip install --python $(BIN)/python -e '.[$(EXTRAS)]'
	$(BIN)/python -c "import torch, torchvision.ops; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/marketsearch demo --workspace $(WORKSPACE)

# Serve what `make demo` built again, without rebuilding it.
serve: install
	$(BIN)/marketsearch serve --workspace $(WORKSPACE)

# Chromium for the browser test of the web page (Debian package; skipped with a reason when unavailable).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed: the browser test will be skipped"; fi; }

# Two pytest-xdist workers: most of the suite's time is servers and subprocesses starting, so two workers
# finish it in about 13 min on 2 cores against 17 min for one (docs/benchmarks.md). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

test: install browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) workspace .pytest_cache
