# syntax=docker/dockerfile:1
# The Ledgerflow image: one image for every process (workers, relay, migrations, topic creation),
# chosen by the arguments to the `ledgerflow` entrypoint, e.g. `worker transfer` or `relay`.
#
#   docker build -t ledgerflow:0.1.0 .
#   docker run --rm ledgerflow:0.1.0 --help
#
# Two stages: `build` installs the pinned dependencies and the project into a virtualenv; the final
# stage copies only that virtualenv onto the same slim base, so no pip cache, build backend or
# source tree ends up in the image. Every dependency is a prebuilt wheel (asyncpg, orjson,
# pydantic-core, ...): no compiler is installed in either stage.

# Pinned tag (Debian trixie, Python 3.11 like requires-python's floor and the CI machine).
ARG PYTHON_IMAGE=python:3.11.15-slim-trixie

FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/ledgerflow
ENV PATH=/opt/ledgerflow/bin:${PATH}

# Dependencies first, in their own layer: source edits don't reinstall them.
COPY deploy/docker/requirements.txt /tmp/requirements.txt
RUN pip install --only-binary=:all: --requirement /tmp/requirements.txt

# The project itself, without resolving anything again (--no-deps), built with a pinned backend.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY ledger_db ./ledger_db
COPY workers ./workers
COPY cli ./cli
COPY stack ./stack
COPY testkit ./testkit
COPY harness ./harness
COPY api ./api
# The one import name: links to the folders above (docs/decisions/one-namespace.md).
COPY ledgerflow ./ledgerflow
RUN pip install "setuptools==84.2.1" \
    && pip install --no-deps --no-build-isolation . \
    && pip uninstall --yes setuptools pip \
    # Byte-compile now: the root filesystem is read-only at run time.
    && python -m compileall -q -j 0 /opt/ledgerflow/lib \
    && ledgerflow --help >/dev/null

FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ledgerflow" \
      org.opencontainers.image.description="Event-driven double-entry ledger core of a mobile wallet" \
      org.opencontainers.image.version="${VERSION}"

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 ledgerflow \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ledgerflow \
    # The base image's own pip is not needed to run: fewer packages, fewer CVEs to triage.
    && python -m pip uninstall --yes pip \
    && rm -rf /root/.cache /tmp/*

COPY --from=build /opt/ledgerflow /opt/ledgerflow

ENV PATH=/opt/ledgerflow/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LEDGERFLOW_HTTP_HOST=0.0.0.0 \
    LEDGERFLOW_HTTP_PORT=8080

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

# Every long-running subcommand handles SIGTERM itself (FastStream drains for 15 s, the relay
# releases its lock), so the CLI runs as PID 1 without a shell in between.
ENTRYPOINT ["ledgerflow"]
CMD ["--help"]
