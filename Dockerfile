# The image of every turbo_async service in compose.yaml: web (uvicorn), worker, flower, migrate.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The library and its demo extra first, so that editing the demo does not reinstall them.
COPY pyproject.toml README.md LICENSE ./
COPY turbo_async ./turbo_async
RUN pip install ".[demo]"

COPY demo ./demo
COPY workers ./workers

# Unprivileged user; /data holds the SQLite database on a volume shared by the services.
RUN useradd --create-home --uid 1000 app && mkdir /data && chown app /data
USER app

# No DJANGO_SECRET_KEY and no DJANGO_DEBUG here: demo/settings.py refuses to start without a key
# and keeps DEBUG off, so a plain `docker run` ships neither a known key nor debug pages. Pass
# -e DJANGO_SECRET_KEY=<a long random string> (compose.yaml requires it).
ENV PYTHONPATH=/app \
    DJANGO_SETTINGS_MODULE=demo.settings \
    DJANGO_DB_PATH=/data/db.sqlite3

EXPOSE 8000 5555
CMD ["uvicorn", "demo.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--ws-max-size", "20000", "--ws-per-message-deflate", "false"]
