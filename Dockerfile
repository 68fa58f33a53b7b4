# syntax=docker/dockerfile:1
# parity-server: the API server and its background loops.
#
#   docker build -t parity-server .
#   docker run -p 8080:8080 parity-server                     # embedded SQLite in /data
#   docker run -p 8080:8080 -e DATABASE_URL=postgresql+asyncpg://user:pw@db:5432/parity parity-server
#
# Other commands: docker run --rm --entrypoint parity-server parity-server migrate --check
# Configuration comes from the environment (see .env.example); no .env is copied into the image.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 parity \
    && useradd --system --uid 10001 --gid parity --create-home --home-dir /home/parity \
        --shell /usr/sbin/nologin parity \
    && mkdir -p /data \
    && chown parity:parity /data

# Build from a throwaway directory; README.md is optional (glob), pyproject.toml is not.
WORKDIR /tmp/build
COPY pyproject.toml README.md* ./
COPY src ./src
RUN pip install . \
    && rm -rf /tmp/build

# Listen on every interface inside the container (the server's own default is loopback only).
# PARITY_HOME holds the embedded SQLite database, lock file and local blockstore: mount a volume
# there to keep them. With DATABASE_URL or DATABASE_HOST set, PostgreSQL is used instead.
ENV SERVER_HOST=0.0.0.0 \
    SERVER_PORT=8080 \
    PARITY_HOME=/data

USER parity
# An empty working directory, so no stray ./.env is ever read.
WORKDIR /home/parity
VOLUME ["/data"]
EXPOSE 8080

# /api/health pings the database: 200 when healthy, 503 (urlopen raises) when not.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; p = os.environ.get('SERVER_PORT', '8080'); e = os.environ.get('SERVER_ENDPOINT', '/api').rstrip('/'); urllib.request.urlopen(f'http://127.0.0.1:{p}{e}/health', timeout=4)"]

# The server drains on SIGTERM within SHUTDOWN_GRACE_SECONDS (default 20 s): give `docker stop`
# more than that (docker stop -t 30, or stop_grace_period in compose).
STOPSIGNAL SIGTERM
ENTRYPOINT ["parity-server", "server"]
