"""The cluster a user starts (docs/CLUSTER.md): ``Dockerfile``, ``ray_cluster.yaml`` and ``pyproject.toml`` agree.

Docker cannot run here, so the image is checked statically: the Dockerfile's instructions are parsed, its shell steps
pass ``sh -n`` with the build arguments filled in, it takes every package version from pyproject.toml (and pins none
of its own), its Python is the one pyproject.toml allows and the cluster's setup command asserts; the images that
ray_cluster.yaml names are the tags that docs/CLUSTER.md builds (CUDA base for the GPU node type, the CPU one for the
rest); and the setup command itself runs and passes in this environment.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib

import pytest
import yaml

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONFIG = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        op, _, rest = full.partition(" ")
        out.append((op.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued instruction"
    return out


def build_args() -> dict[str, str]:
    args = {}
    for op, rest in dockerfile():
        if op == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def pins() -> dict[str, str]:
    """pyproject.toml's exact pins: package name -> version."""
    out = {}
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;,\s]+)$", dep.strip())
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def docs_builds() -> dict[str, str]:
    """The ``docker build`` commands of docs/CLUSTER.md: image tag suffix (cpu, gpu) -> the command."""
    text = (ROOT / "docs" / "CLUSTER.md").read_text()
    out = {}
    for cmd in re.findall(r"^\s*(docker build .*)$", text, flags=re.M):
        tag = re.search(r"-t\s+\S*interacthuman:(\S+)", cmd)
        assert tag, f"docs/CLUSTER.md: {cmd!r} names no interacthuman image"
        out[tag.group(1)] = cmd
    return out


def build_arg(cmd: str, name: str, default: str) -> str:
    words = shlex.split(cmd)
    for i, w in enumerate(words[:-1]):
        if w == "--build-arg" and words[i + 1].startswith(name + "="):
            return words[i + 1].split("=", 1)[1]
    return default


def images() -> dict[str, str]:
    """Node type -> the image its containers run."""
    default = CONFIG["docker"].get("worker_image", CONFIG["docker"]["image"])
    out = {}
    for name, t in CONFIG["available_node_types"].items():
        if name == CONFIG["head_node_type"]:
            out[name] = CONFIG["docker"].get("head_image", CONFIG["docker"]["image"])
        else:
            out[name] = t.get("docker", {}).get("worker_image", default)
    return out


def test_dockerfile_shell_steps_parse_with_its_build_arguments(tmp_path):
    args = build_args()
    assert dockerfile()[0] == ("ARG", "BASE=" + args["BASE"]) and ("FROM", "${BASE}") in dockerfile()
    for extras in ("", "gpu"):
        for i, (op, rest) in enumerate(dockerfile()):
            if op != "RUN":
                continue
            script = rest
            for name, value in {**args, "EXTRAS": extras, "VIRTUAL_ENV": "/opt/venv"}.items():
                script = script.replace("${" + name + "}", value)
            (tmp_path / "step.sh").write_text(script)
            r = subprocess.run(["sh", "-n", str(tmp_path / "step.sh")], capture_output=True, text=True)
            assert r.returncode == 0, f"Dockerfile RUN #{i} does not parse (EXTRAS={extras!r}): {r.stderr}"


def test_image_takes_every_version_from_pyproject_and_its_python_is_the_one_pyproject_allows():
    from packaging.specifiers import SpecifierSet

    args = build_args()
    python = args["PYTHON"]
    assert re.fullmatch(r"3\.\d+", python), python
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(python + ".0"), \
        f"Dockerfile PYTHON={python} is outside pyproject's requires-python"
    runs = " ".join(rest for op, rest in dockerfile() if op == "RUN")
    # The project is installed from pyproject.toml, with the extras the build asks for; the GPU extra exists.
    assert 'pip install -q ".${EXTRAS:+[${EXTRAS}]}"' in runs
    assert "gpu" in PYPROJECT["project"]["optional-dependencies"]
    # No version pinned here that pyproject.toml does not pin the same way.
    for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\"']*)", runs):
        assert pins().get(name.lower()) == version, f"Dockerfile pins {name}=={version}; pyproject.toml: " \
                                                    f"{pins().get(name.lower())}"
    # Nothing else installed by name beside the packaging tools (torch comes from pyproject's own pin).
    for cmd in (c for op, rest in dockerfile() if op == "RUN" for c in re.findall(r"pip install ([^&;]*)", rest)):
        names = [w for w in cmd.split() if not w.startswith(("-", '"', ".", "$"))]
        assert set(names) <= {"pip", "setuptools", "wheel"}, f"Dockerfile installs {names} apart from pyproject"


def test_cluster_images_are_the_documented_builds_cuda_for_gpu_nodes():
    version = PYPROJECT["project"]["version"]
    builds = docs_builds()
    assert set(builds) == {f"{version}-cpu", f"{version}-gpu"}, builds
    base = build_args()["BASE"]
    gpu, cpu = builds[f"{version}-gpu"], builds[f"{version}-cpu"]
    assert "cuda" in build_arg(gpu, "BASE", base) and build_arg(gpu, "EXTRAS", "") == "gpu"
    assert "cuda" not in build_arg(cpu, "BASE", base) and build_arg(cpu, "EXTRAS", "") == ""
    for node, image in images().items():
        wants_gpu = CONFIG["available_node_types"][node]["resources"].get("GPU", 0) > 0
        assert image.endswith(f"/interacthuman:{version}-{'gpu' if wants_gpu else 'cpu'}"), (node, image)


def test_setup_command_asserts_the_pinned_python_and_ray_and_passes_here():
    (cmd,) = CONFIG["setup_commands"]
    python = build_args()["PYTHON"]
    assert f"sys.version_info[:2] == ({python.replace('.', ', ')})" in cmd, cmd
    assert f'ray.__version__ == "{pins()["ray"]}"' in cmd, cmd
    words = shlex.split(cmd)
    assert words[:2] == ["python", "-c"]
    r = subprocess.run([sys.executable, "-c", words[2]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("kind", ["head", "worker"])
def test_ray_starts_with_the_images_ray_and_the_shared_mount_reaches_the_container(kind):
    cmds = CONFIG[f"{kind}_start_ray_commands"]
    assert any(c.startswith("ray start") for c in cmds)
    assert any("/mnt/shared" in c for c in CONFIG["initialization_commands"])
    assert "-v /mnt/shared:/mnt/shared" in CONFIG["docker"]["run_options"]
