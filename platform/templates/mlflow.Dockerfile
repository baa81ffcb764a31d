# The MLflow tracking server's image (mlflow-server.yaml, mlflow-compose.yaml): the mlflow-server
# dependency group of the repository's uv.lock (the project's MLflow, psycopg2 for the PostgreSQL
# backend store, boto3 for the S3 artifact store), every package pinned with its hash; no torch,
# no Ray. Nothing is installed when a container starts. Build from the repository root
# (mlflow.Dockerfile.dockerignore sends only pyproject.toml, uv.lock and the auth config):
#   docker build -f platform/templates/mlflow.Dockerfile -t registry.example.com/retinanet-mlflow:3.17.2 .
#   docker push registry.example.com/retinanet-mlflow:3.17.2
FROM python:3.11-slim-bookworm
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV UV_PROJECT_ENVIRONMENT=/usr/local UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /srv/mlflow
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --only-group mlflow-server --no-install-project && rm /usr/local/bin/uv
COPY platform/templates/mlflow-basic_auth.ini /etc/mlflow/basic_auth.ini
RUN useradd --uid 1000 --create-home mlflow && mkdir -p /var/lib/mlflow-auth && chown mlflow /var/lib/mlflow-auth
USER mlflow
# the basic-auth app's config; no GenAI job runners (MLflow 3 otherwise starts ~8 huey processes)
ENV MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
VOLUME /var/lib/mlflow-auth
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
