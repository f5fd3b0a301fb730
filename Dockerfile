# One image for every rstream service (worker, trainer, beat, producer).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared shared
COPY producer producer
COPY worker worker
# The worker extra (torch, torchvision, pillow...) and the api extra (FastAPI, uvicorn); a
# submit-only image could install '.' alone.
RUN pip install --no-cache-dir '.[worker,api]'
# Weights for torchvision:* references go here (rstream never downloads them).
ENV TORCH_HOME=/models-cache
ENTRYPOINT []
CMD ["rstream", "--help"]
