# vigil scoring service: CPU image that serves the registry's champion.
#
#   docker build -t vigil-serve .
#   docker run -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 \
#       -e VIGIL_MODEL_NAME=vigil-capsules-image [-e VIGIL_API_TOKEN=secret] vigil-serve
#
# The default command is `vigil serve`: with no --model-dir/--model-uri it pulls
# models:/$VIGIL_MODEL_NAME@champion from $MLFLOW_TRACKING_URI, verifies the package checksum,
# serves it on port 8000 and follows the alias (configs/serving.yaml). A model that cannot be
# pulled stops the container with a non-zero exit and the reason on stderr.

ARG PYTHON=3.11

# --- build stage: a virtual environment with torch (CPU wheel first) and vigil -------------------
FROM python:${PYTHON}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CPU index and pinned as in pyproject.toml: an unpinned torch pulled in by
# a dependency would download several GB of CUDA packages.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install .

# --- runtime stage: the environment only, no compilers, not root ---------------------------------
FROM python:${PYTHON}-slim
# git: the schedule service runs `dvc repro`, which needs it
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin vigil
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK=true \
    MALLOC_MMAP_THRESHOLD_=1000000000 \
    MALLOC_TRIM_THRESHOLD_=1000000000 \
    MALLOC_TOP_PAD_=268435456
WORKDIR /app
COPY configs/serving.yaml configs/serving.yaml
USER vigil
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["vigil", "serve", "--host", "0.0.0.0", "--port", "8000"]
