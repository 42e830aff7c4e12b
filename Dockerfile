# The InterActHuman node image: Ray, the curation engine's dependencies and this checkout, for the nodes that
# `ray up ray_cluster.yaml` starts (docs/CLUSTER.md). One file, two images:
#
#   GPU nodes (the default base: CUDA and cuDNN runtime; torch's CUDA wheels bring the rest):
#     docker build -t interacthuman:0.1.0-gpu --build-arg EXTRAS=gpu .
#   CPU head and decode nodes (no CUDA base; the smaller image):
#     docker build -t interacthuman:0.1.0-cpu --build-arg BASE=ubuntu:22.04 .
#
# Every package version comes from pyproject.toml (torch, ray, transformers, the OpenCV builds are pinned there);
# this file pins only the Python minor version, which tests/test_cluster_config.py checks against pyproject.toml,
# ray_cluster.yaml's setup command and the image tags.
ARG BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
FROM ${BASE}

ARG PYTHON=3.11
# gpu for the GPU image (torchvision for the production backends); empty for the CPU image.
ARG EXTRAS=
# Optional: a PyTorch wheel index to take torch from (e.g. a CPU-only index for the CPU image); empty: the default.
ARG TORCH_INDEX_URL=

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH

# Python from the deadsnakes archive (Ubuntu 22.04 ships 3.10); ffmpeg for the tests' media tools; openssh-client
# and rsync for Ray's cluster launcher (the head's autoscaler reaches the workers over SSH and syncs file_mounts);
# nfs-common for the shared run directory; libgl1 and libglib2.0-0 for OpenCV and mediapipe.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent ca-certificates curl \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python${PYTHON} python${PYTHON}-venv python${PYTHON}-dev \
      build-essential ffmpeg openssh-client rsync nfs-common sudo libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && python${PYTHON} -m venv ${VIRTUAL_ENV} \
 && pip install -q --upgrade pip setuptools wheel

WORKDIR /opt/interacthuman
# Dependencies first (a layer that changes only with pyproject.toml), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p pipeline stages model && touch pipeline/__init__.py stages/__init__.py model/__init__.py \
 && if [ -n "${TORCH_INDEX_URL}" ]; then \
      TORCH="$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')" \
      && pip install -q --index-url "${TORCH_INDEX_URL}" "${TORCH}"; \
    fi \
 && pip install -q ".${EXTRAS:+[${EXTRAS}]}" \
 && pip uninstall -y -q interacthuman
COPY . .
RUN pip install -q --no-deps -e ".${EXTRAS:+[${EXTRAS}]}" \
 && python -c "import ray, torch, cv2, pipeline.run as r; print(r.package_versions())"

# Ray's launcher runs its commands in the container as root; the checkout it mounts lands beside this one.
CMD ["bash"]
