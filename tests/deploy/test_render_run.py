"""Render and run: the chart rendered with non-default values (ports, model path, TLS, tokens),
and the rendered Deployment's container executed the way the kubelet would run it in our image,
with the real atman-server on 127.0.0.1; it must serve and pass the rendered probes' checks.

What is taken from where:
- command: the container's `command`, else the image's ENTRYPOINT; args: the container's `args`,
  else the image's CMD (docker/Dockerfile*, read by dockerimage.py).
- environment: the image's ENV, then the container's `env` (the kubelet's order).
- files: every volumeMount of the container is a folder under a temporary root (ConfigMap and
  Secret volumes hold the rendered objects' data; the model volume is models/default); the
  image's own files (COPY from the build context) are mapped the same way. Container paths in
  the command, args, env and mounted files are rewritten to those folders in one pass.
- binaries: `atman-server` and `atman-health` (the probes' exec command) are the build's.

What cannot be reproduced outside a container is left out and named: the read-only root
filesystem, the user id, LD_LIBRARY_PATH (the image's library layout).
"""
import base64
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import urllib.request

import grpc
import pytest
import yaml

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "support"))
from dockerimage import image_config  # noqa: E402
from ports import free_port  # noqa: E402
from test_chart import ROOT, by_kind, render  # noqa: E402

SERVER = os.environ.get("ATMAN_SERVER_BINARY", "")
HEALTH = os.environ.get("ATMAN_HEALTH_BINARY", "")
MODEL = ROOT / "models" / "default"
# Environment entries of the image that describe its own file layout, not the server's settings.
IMAGE_LAYOUT_ENV = {"LD_LIBRARY_PATH"}

pytestmark = pytest.mark.skipif(not (SERVER and HEALTH), reason="atman-server / atman-health are not part of this "
                                "build (configured with ATMAN_BUILD_SERVICE=OFF)")

if SERVER:
    os.environ.setdefault("ATMAN_SERVER", SERVER)
    import atman_service  # noqa: E402  (grpcio stubs generated from proto/)
    from atman_service import health_pb2, health_pb2_grpc, pb, pb_grpc  # noqa: E402


def make_certs(tmp, server_dns):
    """A CA, and one certificate (server and client auth, SAN server_dns) it signed: the pod's."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=atman-test-ca",
            "-keyout", str(tmp / "ca.key"), "-out", str(tmp / "ca.crt"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=atman", "-keyout", str(tmp / "tls.key"),
            "-out", str(tmp / "tls.csr"))
    (tmp / "ext").write_text(f"subjectAltName=DNS:{server_dns}\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", str(tmp / "tls.csr"), "-CA", str(tmp / "ca.crt"), "-CAkey", str(tmp / "ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", str(tmp / "ext"), "-out", str(tmp / "tls.crt"))
    return {name: (tmp / name).read_text() for name in ("ca.crt", "tls.crt", "tls.key")}


class Pod:
    """The rendered Deployment's one container, run as a local process under `root`."""

    def __init__(self, objects, dockerfile, root):
        self.objects, self.root = objects, root
        pod = by_kind(objects, "Deployment")["spec"]["template"]["spec"]
        (self.container,) = pod["containers"]
        self.image = image_config(dockerfile)
        volumes = {v["name"]: v for v in pod["volumes"]}
        # container path -> local path, all known before any file is written (files may name paths)
        self.paths = {m["mountPath"]: root / m["mountPath"].lstrip("/") for m in self.container["volumeMounts"]}
        for source, dest in self.image.copies:
            self.paths.setdefault(dest.rstrip("/"), ROOT / source.rstrip("/"))
        for mount in self.container["volumeMounts"]:
            self.materialize(volumes[mount["name"]], mount, self.paths[mount["mountPath"]])

    def materialize(self, volume, mount, local):
        local.parent.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            data = by_kind(self.objects, "ConfigMap", volume["configMap"]["name"])["data"]
            self.write_files(local, data)
        elif "secret" in volume:
            secret = by_kind(self.objects, "Secret", volume["secret"]["secretName"])
            self.write_files(local, {k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
        elif "emptyDir" in volume:
            local.mkdir()
        elif "persistentVolumeClaim" in volume or "hostPath" in volume:
            # The claim (or node folder) holds the model, at the mount's subPath when it has one.
            assert mount.get("readOnly") is True, f"the model volume must be read-only: {mount}"
            local.symlink_to(MODEL.resolve(), target_is_directory=True)
        else:
            raise AssertionError(f"volume kind not simulated here: {volume}")

    def write_files(self, folder, data):
        folder.mkdir()
        for name, text in data.items():
            (folder / name).write_text(self.local(text))

    def local(self, text):
        """`text` with every container path under a mount rewritten to its local folder (one pass,
        longest path first, so a rewritten path is never rewritten again)."""
        prefixes = sorted(self.paths, key=len, reverse=True)
        pattern = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, prefixes)) + r")(?=/|\b|$)")
        return pattern.sub(lambda m: str(self.paths[m.group(1)]), text)

    def env(self):
        env = {k: v for k, v in self.image.env.items() if k not in IMAGE_LAYOUT_ENV}
        for entry in self.container.get("env", []):
            assert set(entry) == {"name", "value"}, f"env entry not simulated here: {entry}"
            env[entry["name"]] = entry["value"]
        env = {k: self.local(v) for k, v in env.items()}
        env["PATH"] = os.environ["PATH"]
        return env

    def argv(self):
        command = self.container.get("command", self.image.entrypoint)
        args = self.container.get("args", self.image.cmd if "command" not in self.container else [])
        argv = [self.local(a) for a in command + args]
        assert argv[0] == "atman-server", argv
        return [SERVER] + argv[1:]

    def start(self, log):
        return subprocess.Popen(self.argv(), env=self.env(), cwd=self.root, stdout=log, stderr=subprocess.STDOUT)

    def probe(self, name):
        """One check of the rendered probe `name` ("startupProbe", ...): True when it passes."""
        probe = self.container[name]
        if "exec" in probe:
            command = [self.local(a) for a in probe["exec"]["command"]]
            assert command[0] == "atman-health", command
            result = subprocess.run([HEALTH] + command[1:], capture_output=True, text=True,
                                    timeout=probe["timeoutSeconds"] + 30)
            return result.returncode == 0
        grpc_probe = probe["grpc"]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_probe['port']}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=grpc_probe.get("service", "")),
                    timeout=probe["timeoutSeconds"])
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING


def run_until_ready(pod, server, log_path):
    """Runs the startup probe until it passes (the kubelet's loop), then liveness and readiness once."""
    while not pod.probe("startupProbe"):
        assert server.poll() is None, f"the server exited {server.returncode}:\n{log_path.read_text()[-4000:]}"
    assert pod.probe("livenessProbe"), log_path.read_text()[-4000:]
    assert pod.probe("readinessProbe"), log_path.read_text()[-4000:]


def container_port(pod, name):
    return next(p["containerPort"] for p in pod.container["ports"] if p["name"] == name)


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_non_default_values_with_mutual_tls_and_tokens_serve(dockerfile, tmp_path):
    grpc_port, metrics_port = free_port(), free_port()
    certs = make_certs(tmp_path, "rel-atman.ns.svc")
    token = "render-and-run-token-0123456789"
    values = {
        "ports": {"grpc": grpc_port, "metrics": metrics_port},
        "model": {"source": "pvc", "path": "/models/llama", "pvc": {"claimName": "models", "subPath": "llama"}},
        "tls": {"enabled": True, "mutual": True, "cert": certs["tls.crt"], "key": certs["tls.key"],
                "ca": certs["ca.crt"]},
        "auth": {"enabled": True, "tokens": [token]},
        "server": {"maxBatchRows": 8, "maxUnits": 64, "logFormat": "text", "drainGraceSeconds": 5, "drainDelaySeconds": 1,
                   # Loopback only on a shared machine (the pod binds 0.0.0.0).
                   "extraEnv": [{"name": "ATMAN_HOST", "value": "127.0.0.1"}]},
        "resources": {"requests": {"cpu": "1"}},
    }
    objects = render(values)
    root = tmp_path / "pod"
    root.mkdir()
    pod = Pod(objects, dockerfile, root)
    assert "OMP_NUM_THREADS" not in pod.env()  # the server sizes itself: --cpu-cores 1
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = pod.start(log)
        try:
            run_until_ready(pod, server, log_path)
            # The Service's and ServiceMonitor's ports are the ones the server listens on.
            assert container_port(pod, "grpc") == grpc_port and container_port(pod, "metrics") == metrics_port
            assert re.search(r"^atman_ready 1$", scrape(metrics_port), re.M)
            # A client of the Service: the CA, a client certificate, the token.
            credentials = grpc.ssl_channel_credentials(
                root_certificates=certs["ca.crt"].encode(), private_key=certs["tls.key"].encode(),
                certificate_chain=certs["tls.crt"].encode())
            options = [("grpc.ssl_target_name_override", "rel-atman.ns.svc")]
            with grpc.secure_channel(f"127.0.0.1:{grpc_port}", credentials, options) as channel:
                stub = pb_grpc.AtmanStub(channel)
                info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30,
                                         metadata=[("authorization", f"Bearer {token}")])
                assert info.name == "llama" and info.max_units == 64
                with pytest.raises(grpc.RpcError) as error:
                    stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
                assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            server.terminate()
            assert server.wait(timeout=120) == 0, log_path.read_text()[-4000:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_non_default_ports_and_host_path_model_serve_with_native_grpc_probes(dockerfile, tmp_path):
    grpc_port, metrics_port = free_port(), free_port()
    values = {
        "ports": {"grpc": grpc_port, "metrics": metrics_port},
        "model": {"source": "hostPath", "path": "/srv/checkpoint", "hostPath": {"path": "/data/models/smol"}},
        "server": {"extraEnv": [{"name": "ATMAN_HOST", "value": "127.0.0.1"},
                                # A variable naming a chart-owned flag loses to the chart's flag.
                                {"name": "ATMAN_PORT", "value": "1"}],
                   "ompNumThreads": 1, "drainDelaySeconds": 0},
    }
    objects = render(values)
    root = tmp_path / "pod"
    root.mkdir()
    pod = Pod(objects, dockerfile, root)
    assert pod.container["readinessProbe"]["grpc"] == {"port": grpc_port, "service": "atman.v1.Atman"}
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = pod.start(log)
        try:
            run_until_ready(pod, server, log_path)
            assert re.search(r"^atman_ready 1$", scrape(metrics_port), re.M)
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                info = pb_grpc.AtmanStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
                assert info.name == "checkpoint"
        finally:
            server.terminate()
            assert server.wait(timeout=120) == 0, log_path.read_text()[-4000:]


def test_the_image_alone_would_not_serve_the_chart_model_path(tmp_path):
    """The defect this file guards against, shown on the old chart: a pod that passes only
    --config (model path in the file) under an image that sets ATMAN_MODEL exits naming the
    image's path. The chart's flags make the result independent of the image's ENV."""
    config = tmp_path / "atman.json"
    config.write_text('{"model": "%s", "port": 0, "metrics-port": 0}' % MODEL)
    env = {"PATH": os.environ["PATH"], "ATMAN_MODEL": str(tmp_path / "models" / "model"), "ATMAN_HOST": "127.0.0.1"}
    result = subprocess.run([SERVER, f"--config={config}"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and str(tmp_path / "models" / "model") in result.stdout + result.stderr
    args = by_kind(render({"model": {"path": "/models/llama"}}), "Deployment")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert "--model=/models/llama" in args and "--port=50051" in args and "--metrics-port=9090" in args
    assert "--devices=cpu" in args


def config_file_keys():
    """(server config key, values.server key) of every setting the chart's ConfigMap writes."""
    template = (ROOT / "deploy" / "helm" / "atman" / "templates" / "configmap.yaml").read_text()
    keys = re.findall(r'"([a-z-]+)" \$s\.(\w+)', template)
    assert len(keys) >= 15, template
    return keys


def test_the_server_accepts_every_value_the_chart_schema_accepts(tmp_path):
    """values.schema.json and the server's config checks (server/config.cc) in step: each bound
    of a setting that the schema lets through (its minimum and maximum, or a large value where it
    has no maximum, every enum value) passes the server's checks, so a chart that renders never
    crash-loops on a setting. The server is stopped at the model (exit 1, `--model: ...`), after
    every config check (a refused setting exits 2 naming it); the schema's own rejections are Helm's
    (test_chart.py)."""
    schema = json.loads((ROOT / "deploy" / "helm" / "atman" / "values.schema.json").read_text())
    server_schema = schema["properties"]["server"]["properties"]
    env = {"PATH": os.environ["PATH"]}
    missing = tmp_path / "no-model"
    checked, refused = 0, []
    for flag, key in config_file_keys():
        spec = server_schema[key]
        if spec.get("type") == "integer":
            values = [spec["minimum"], spec.get("maximum", 2**31 - 1)]
        elif "enum" in spec:
            values = spec["enum"]
        else:
            continue
        for value in values:
            config = tmp_path / "atman.json"
            config.write_text(json.dumps({flag: value, "port": 0, "metrics-port": 0}))
            result = subprocess.run([SERVER, f"--config={config}", f"--model={missing}"], env=env,
                                    capture_output=True, text=True, timeout=120)
            out = result.stdout + result.stderr
            if result.returncode != 1:  # 2: a config check refused it (1: the missing model)
                refused.append(f"server.{key} = {value!r}: {out.splitlines()[0] if out else result.returncode}")
            checked += 1
    assert not refused, "values.schema.json lets through what the server refuses:\n" + "\n".join(refused)
    assert checked >= 30
