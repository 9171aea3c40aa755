# bgproxy container image.
#   docker build -t bgproxy:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -e BGPROXY_ADMIN_LISTEN=0.0.0.0:9090 -e BGPROXY_ADMIN_TOKEN=secret \
#     bgproxy:0.1.0 --blue http://blue.example:80 --green http://green.example:80
# The entrypoint is `bgproxy serve`: arguments are appended to it, and every setting also reads its BGPROXY_* variable.
# In Kubernetes see deploy/ (the image runs there with a read-only root filesystem as UID 10001).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a virtualenv holding bgproxy, compiled, and its dependencies (binary wheels) ----
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A C compiler for the compiled build: setup.py compiles the data plane and the core with mypyc (the image's Python
# brings its own headers). Only this stage has it. Debian's current gcc: a pinned package version would vanish
# from the mirror with the next security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY bgproxy ./bgproxy
# pip byte-compiles what it installs, so the final image never has to write .pyc files (its root filesystem is
# read-only in Kubernetes). The image must be the compiled build: without a compiler setup.py would fall back to
# pure Python, so the build stops here instead (-P: the installed package, not the sources in this directory). pip
# and setuptools are not needed at run time: out of the venv with them.
RUN pip install --no-cache-dir . \
    && python -P -c "from bgproxy import build; raise SystemExit(0 if build.compiled() else 'not compiled')" \
    && python -m pip uninstall --yes pip setuptools

# ---- final: the same interpreter, the venv only, a non-root user; no sources, no build tools, no pip cache ----
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="bgproxy" \
      org.opencontainers.image.description="Blue/green reverse proxy for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"

# The numeric UID/GID must match runAsUser/runAsGroup in deploy/base/deployment.yaml (tests/test_deploy.py checks).
# The base image's own pip, setuptools and wheel go too: nothing installs anything at run time.
RUN groupadd --system --gid 10001 bgproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin bgproxy \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/bgproxy \
    && python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
# Working directory for the default `file` state backend (bgproxy-state.json) when run outside Kubernetes.
WORKDIR /var/lib/bgproxy

EXPOSE 8080 9090

ENTRYPOINT ["bgproxy", "serve"]
