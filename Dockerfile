# The delivery worker (and the `ingest` command: metrics, stats, dlq, sandbox).
#   docker build -t datafast-ingest .
#   docker run --rm -e INGEST_REDIS_URL=... -e INGEST_API_KEY=df_... datafast-ingest
# docker-compose.yml builds it for the worker, metrics and sandbox services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and package first, so that editing worker.py does not reinstall them.
COPY pyproject.toml README.md ./
COPY ingest ./ingest
RUN pip install ".[uvloop]" && rm -rf build

COPY worker.py ./

# Never run as root. The home directory holds the producer's spool when `ingest import` or
# `ingest spool flush` runs in this image (INGEST_SPOOL_DIR overrides it).
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin ingest
USER ingest

# Prometheus metrics of the worker process (INGEST_METRICS_PORT); bound to every interface,
# since 127.0.0.1 inside a container is unreachable from the scraper.
ENV INGEST_METRICS_HOST=0.0.0.0 \
    INGEST_METRICS_PORT=9464
EXPOSE 9464

# SIGTERM: stop claiming, let requests in flight finish within INGEST_SHUTDOWN_GRACE, return
# the rest to the queue, exit 0. Give the container longer than that to stop.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ['INGEST_METRICS_PORT'], timeout=3)"]
CMD ["python", "worker.py"]
