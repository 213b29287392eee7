# syntax=docker/dockerfile:1
# coalmine's image: `coalmine run` (routing proxy and controller), the sidecar of the
# Helm chart in charts/coalmine.  Build:  docker build -t coalmine:0.1.0 .

# --- builder: a virtual environment with coalmine and its runtime dependencies only ---
FROM python:3.12-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY coalmine ./coalmine
COPY controller ./controller
COPY policies ./policies
COPY proxy ./proxy
RUN pip install --no-cache-dir .

# --- runtime: the same slim base, the virtual environment, a non-root user ---
FROM python:3.12-slim

RUN groupadd --system --gid 10001 coalmine \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin coalmine \
    && mkdir -p /etc/coalmine/policies /var/lib/coalmine \
    && chown 10001:10001 /var/lib/coalmine

COPY --from=builder /opt/venv /opt/venv

# Every server binds all interfaces (0.0.0.0), so that a published port, the kubelet's
# probes and Prometheus reach them: the proxy (8080), the admin API and dashboard (9465,
# every route but /healthz and /readyz needs the admin token) and /metrics (9464, no
# authentication). Anyone who can reach the container's address can connect; bind one to
# 127.0.0.1 (COALMINE_ADMIN_LISTEN, COALMINE_METRICS_LISTEN) when nothing outside needs
# it. `coalmine run` logs each address at start and whether it is reachable from outside.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    COALMINE_LISTEN=0.0.0.0:8080 \
    COALMINE_ADMIN_LISTEN=0.0.0.0:9465 \
    COALMINE_METRICS_LISTEN=0.0.0.0:9464 \
    COALMINE_STATE=/var/lib/coalmine/coalmine-state.db

WORKDIR /var/lib/coalmine
USER 10001:10001

# proxy (the application's traffic), Prometheus metrics, admin API and dashboard
EXPOSE 8080 9464 9465

HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9465/healthz', timeout=4)"]

ENTRYPOINT ["coalmine", "run"]
CMD ["--policy", "/etc/coalmine/policies"]
