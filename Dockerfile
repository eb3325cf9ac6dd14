# syntax=docker/dockerfile:1
#
# tandem model server image.
#
#   docker build -t tandem:0.1.0 .
#   docker run --rm --gpus all -p 127.0.0.1:8000:8000 tandem:0.1.0
#
# Two stages. "build" installs the project with its exporters (torch, CPU wheel) and writes the
# example model repository to /models. "runtime" holds the server only: no torch, no exporters'
# dependencies, no compilers. CUDA comes from NVIDIA's pip wheels, not from the base image:
# onnxruntime-gpu 1.31.1 needs the CUDA 13 + cuDNN 9 wheels and TensorFlow 2.21.0 the CUDA 12
# ones; different sonames let both live in one site-packages. docs/deployment.md explains the
# versions and the one file set the two stacks share (cuDNN 9).

FROM python:3.11.14-slim-bookworm AS build

# Two build arguments a normal build leaves alone; scripts/docker-smoke sets both.
# TORCH_INDEX_URL: the package index torch==2.13.0 comes from (PyTorch's CPU wheel index by default).
# EXTRA_CA_CERTS: PEM certificates pip trusts besides the system's, for a build behind a
# TLS-intercepting proxy. Empty by default, and then pip's own trust store applies. No layer keeps
# the certificates, but the image history records the value, as it does every build argument.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRA_CA_CERTS=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /src

# The build stage is thrown away, so the extra certificates may stay in its pip configuration.
RUN if [ -n "${EXTRA_CA_CERTS}" ]; then \
        { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "${EXTRA_CA_CERTS}"; } > /etc/pip-ca.pem \
        && printf '[global]\ncert = /etc/pip-ca.pem\n' > /etc/pip.conf; \
    fi

# torch is only used here, to export the examples: the CPU wheel avoids several GB of CUDA
# libraries. Only torch comes from that index (--no-deps); the export extra below finds
# torch==2.13.0 satisfied (2.13.0+cpu) and installs its dependencies from PyPI, pinned.
RUN pip install --no-cache-dir --no-deps --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

# .dockerignore lets in only pyproject.toml, README.md, LICENSE, service/, exporters/ and the constraints.
COPY . /src

# The project wheel travels to the runtime stage with a requirements line naming its gpu extra.
RUN pip install --no-cache-dir --constraint deploy/docker/constraints.txt ".[export]" \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && wheel="$(find /wheels -name 'tandem-*.whl')" \
    && printf 'tandem[gpu] @ file://%s\n' "${wheel}" > /wheels/requirements.txt \
    && python -m exporters.examples --models /models

FROM python:3.11.14-slim-bookworm AS runtime

ARG EXTRA_CA_CERTS=""

LABEL org.opencontainers.image.title="tandem" \
      org.opencontainers.image.description="Model server: KServe V2, TF Serving and TorchServe REST, dynamic batching, Prometheus metrics" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY deploy/docker/constraints.txt /tmp/constraints.txt
COPY --from=build /wheels /wheels

# The gpu extra brings onnxruntime-gpu[cuda,cudnn] (CUDA 13 wheels) and tensorflow[and-cuda]
# (CUDA 12 wheels). Both cuDNN 9 wheels write the same files under nvidia/cudnn/lib, so the
# CUDA 12 build is reinstalled last on purpose (see docs/deployment.md, "Version
# reconciliation"). The last command fails the build if torch ever arrives as a dependency.
# The extra certificates (see the build stage) live in /tmp for this one command only.
RUN if [ -n "${EXTRA_CA_CERTS}" ]; then \
        { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "${EXTRA_CA_CERTS}"; } > /tmp/pip-ca.pem \
        && export PIP_CERT=/tmp/pip-ca.pem; \
    fi \
    && pip install --no-cache-dir --constraint /tmp/constraints.txt --requirement /wheels/requirements.txt \
    && pip install --no-cache-dir --no-deps --force-reinstall --constraint /tmp/constraints.txt "nvidia-cudnn-cu12==9.28.0.42" \
    && rm -rf /wheels /tmp/constraints.txt /tmp/pip-ca.pem \
    && python -c "import importlib.util as u, sys; sys.exit('torch must not be in the server image' if u.find_spec('torch') else 0)" \
    && groupadd --system --gid 10001 tandem \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tandem

# Example models, owned by root and read-only for the server; mount your own repository over /models.
COPY --from=build /models /models

# NVIDIA_VISIBLE_DEVICES is deliberately left unset: `--gpus`, a compose device reservation or the
# Kubernetes device plugin chooses the GPUs. The capabilities add NVML (utility) to CUDA (compute).
# HOME points at /tmp, the one writable place when the root filesystem is read-only.
ENV TANDEM_HOST=0.0.0.0 \
    TANDEM_MODELS_DIR=/models \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TF_CPP_MIN_LOG_LEVEL=1 \
    HOME=/tmp

USER 10001:10001
WORKDIR /tmp
EXPOSE 8000

# Ready means every model loaded and warmed up; a 503 or no answer is unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as r; port = os.environ.get('TANDEM_PORT', '8000'); sys.exit(0 if r.urlopen(f'http://127.0.0.1:{port}/v2/health/ready', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["tandem", "serve"]
