# The rendition-worker service image: one image for web, worker, beat, flower and migrate.
# Credentials are never baked in: every secret comes from the environment at run time
# (docker-compose.yml passes them through from the operator's shell or .env file).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=rendition_worker.demo.settings \
    RENDITION_WORKER_DEMO_HOME=/data \
    MEDIA_ROOT=/data/media

# Pillow, pillow-avif-plugin (libavif with SVT-AV1/aom) and psycopg ship manylinux wheels:
# no compiler or system image library is needed.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[service,s3,heif]"

# An unprivileged user owns only the data volume it writes to.
RUN useradd --create-home --uid 10001 app \
    && mkdir -p /data/media /data/beat \
    && chown -R app:app /data
USER app
VOLUME ["/data"]
EXPOSE 8000

CMD ["gunicorn", "rendition_worker.demo.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
