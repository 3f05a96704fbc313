# syntax=docker/dockerfile:1
# One image for every role: `saga-orchestrator serve --role api|engine|projector` (docker-compose.yml,
# k8s/), and the demo participants with `python -m orchestrator.demo`.

FROM python:3.11-slim AS build
# A compiler only in this stage: some dependencies ship no wheel for every platform (e.g. arm64).
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY orchestrator ./orchestrator
COPY projections ./projections
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# A fixed non-root uid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN useradd --system --uid 10001 --home-dir /data --create-home saga
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels saga-orchestrator \
    && rm -rf /wheels
USER 10001
WORKDIR /data
# /data holds per-process derived state only (the engine's rebuildable timer index); the truth lives in
# KurrentDB / EventStoreDB. Containers must listen on every interface to be reachable.
ENV PYTHONUNBUFFERED=1 \
    SAGA_EVENT_STORE__DATA_DIR=/data \
    SAGA_SERVER__HOST=0.0.0.0 \
    SAGA_SERVER__PORT=8080 \
    SAGA_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["saga-orchestrator"]
CMD ["serve", "--role", "all"]
