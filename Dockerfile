# One image for every rstream service (worker, trainer, beat, exporter, producer).
FROM python:3.11.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared shared
COPY producer producer
COPY worker worker
# The worker extra (torch, torchvision, pillow, nvidia-ml-py...) and the api extra (FastAPI,
# uvicorn); a submit-only image could install '.' alone.
RUN pip install --no-cache-dir '.[worker,api]'
# The services run as an unprivileged user. Weights for torchvision:* references go in
# /models-cache (rstream never downloads them); a named volume mounted there takes its owner.
RUN useradd --create-home --uid 10001 --user-group rstream \
    && mkdir -p /models-cache && chown rstream:rstream /models-cache
ENV TORCH_HOME=/models-cache
USER rstream
ENTRYPOINT []
CMD ["rstream", "--help"]
