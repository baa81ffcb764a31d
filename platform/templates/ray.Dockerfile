# The image of every Ray pod and of the job submitter (kuberay-rayjob.yaml): this repository at
# /app with the environment of its uv.lock (torch, Ray, MLflow client ...) installed into the
# image's Python, so `ray`, `python` and the project are on the default PATH, also in the login
# shell KubeRay starts Ray with. Nothing is installed when a container starts. torch's CUDA
# libraries come as wheels: GPU nodes need the NVIDIA driver and container toolkit, not CUDA in
# the image. Build from the repository root (ray.Dockerfile.dockerignore keeps .venv, data/,
# outputs/, results/ and the MLflow store out of the context):
#   docker build -f platform/templates/ray.Dockerfile -t registry.example.com/retinanet-platform:$(git rev-parse --short HEAD) .
#   docker push registry.example.com/retinanet-platform:$(git rev-parse --short HEAD)
FROM python:3.11-slim-bookworm
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
# wget: KubeRay's default liveness/readiness probes
RUN apt-get update && apt-get install -y --no-install-recommends wget && rm -rf /var/lib/apt/lists/*
ENV UV_PROJECT_ENVIRONMENT=/usr/local UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-install-project
COPY . .
RUN uv sync --locked --no-dev && rm /usr/local/bin/uv
# Ray workers use this environment (no per-worker `uv run` environments)
ENV RAY_ENABLE_UV_RUN_RUNTIME_ENV=0
