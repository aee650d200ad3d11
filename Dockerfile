# The serving image, built from this monorepo; VARIANT picks the base image and the torch:
#
#   Gaudi (default): docker build -t tgi-gaudi .
#   CPU:             docker build -t tgi-cpu --build-arg VARIANT=cpu .
#
# The install steps are docker/install.sh's (tests/test_standalone_install.py runs its
# Python steps in a venv). Dependencies are a layer of their own, made from the pyproject
# files and the lock alone, so that editing the sources reinstalls only the packages.
ARG VARIANT=gaudi

# Habana publishes each release under its own path, tagged latest only. Its torch is kept.
# hadolint ignore=DL3007
FROM vault.habana.ai/gaudi-docker/1.21.0/ubuntu22.04/habanalabs/pytorch-installer-2.6.0:latest AS base-gaudi
ENV HABANA_VISIBLE_DEVICES=all \
    OMPI_MCA_btl_vader_single_copy_mechanism=NONE \
    PT_HPU_LAZY_MODE=1

FROM python:3.11-slim-bookworm AS base-cpu

# hadolint ignore=DL3006
FROM base-${VARIANT}
ARG VARIANT
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /usr/src

COPY docker/install.sh docker/
RUN docker/install.sh system "$VARIANT" && docker/install.sh torch "$VARIANT"
COPY constraints.txt ./
COPY packages/tgi-core/pyproject.toml packages/tgi-core/
COPY packages/tgi-scheduler/pyproject.toml packages/tgi-scheduler/
COPY packages/tgi-hpu-kernels/pyproject.toml packages/tgi-hpu-kernels/
COPY packages/tgi-vlm/pyproject.toml packages/tgi-vlm/
COPY packages/tgi-server/pyproject.toml packages/tgi-server/
RUN docker/install.sh deps "$VARIANT"
COPY packages/ packages/
RUN docker/install.sh packages "$VARIANT"
COPY docker/entrypoint.sh /usr/local/bin/tgi-entrypoint.sh

# Models and the compiled CPU kernels (cached under TMPDIR) live in the /data volume.
ENV PORT=80 \
    HF_HOME=/data \
    HUGGINGFACE_HUB_CACHE=/data \
    TMPDIR=/data/tmp \
    PYTHONUNBUFFERED=1
# tgi, made by the system step (numeric: resolvable without the image's /etc/passwd).
USER 1000:1000
EXPOSE 80 9000
VOLUME /data
# Healthy once the model is loaded and warmed up (a large model on Gaudi: many minutes).
HEALTHCHECK --interval=30s --timeout=10s --start-period=20m --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['PORT'] + '/health', timeout=8)"]
ENTRYPOINT ["/usr/local/bin/tgi-entrypoint.sh"]
CMD ["--json-output"]
