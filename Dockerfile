# The API image. Configuration comes from the environment (see .env.prod.example).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY config config
COPY actors actors
COPY storage storage
COPY server server
COPY scheduler scheduler
COPY observability observability
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --create-home --uid 10001 backend
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
USER backend
WORKDIR /home/backend
# Uploaded files (FILES_BACKEND=local): owned by the service user, mounted as a volume.
RUN mkdir -p /home/backend/files
ENV APP_ENV=prod HOST=0.0.0.0 PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/livez').status != 200)"
STOPSIGNAL SIGTERM
CMD ["backend", "serve"]
