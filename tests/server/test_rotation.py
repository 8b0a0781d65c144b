"""Certificate and token rotation without a restart (server/credentials.h): files replaced on
disk the way a Kubernetes Secret volume replaces them (an atomic swap of the `..data` symlink),
a server started with --credentials-refresh-seconds 1, and the new state polled for on new TLS
handshakes and calls until it shows (ctest's timeout is the only time limit)."""
import os
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest

from conftest import Server, pb, pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from certs import make_certificates, renew_server_certificate  # noqa: E402

POLL = 0.2  # seconds between looks at a state that is coming


class SecretVolume:
    """A folder laid out like a mounted Kubernetes Secret: `<key>` -> `..data/<key>`, `..data`
    -> a timestamped folder; update() writes a new folder and swaps `..data` atomically."""

    def __init__(self, root: Path, files: dict):
        self.root = root
        root.mkdir(parents=True)
        self.version = 0
        self.update(files)
        for name in files:
            (root / name).symlink_to(Path("..data") / name)

    def update(self, files: dict):
        self.version += 1
        folder = self.root / f"..v{self.version}"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        (self.root / "..data_tmp").symlink_to(folder.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")  # rename(2): atomic


def presented_certificate(port: int, ca: Path, client: Path) -> bytes:
    """The DER certificate the server presents on a new TLS handshake (mutual TLS, h2 ALPN like
    a gRPC client), verified against `ca` for the name 127.0.0.1."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(client / "client.pem"), str(client / "client.key"))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)


def der(pem_path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_path.read_text())


def not_after(pem_path: Path) -> float:
    """The certificate's notAfter in Unix seconds, as Python's ssl module decodes it."""
    return float(ssl.cert_time_to_seconds(ssl._ssl._test_decode_cert(str(pem_path))["notAfter"]))


EXPIRY = "atman_tls_certificate_expiry_timestamp_seconds"


def test_renewed_certificate_reaches_new_handshakes():
    tmp = Path(tempfile.mkdtemp(prefix="atman-rotation-"))
    first = make_certificates(tmp)
    renewed = renew_server_certificate(first, tmp / "renewed")
    assert der(renewed / "server.pem") != der(first / "server.pem")
    secret = SecretVolume(tmp / "secret", {"tls.crt": (first / "server.pem").read_bytes(),
                                           "tls.key": (first / "server.key").read_bytes(),
                                           "ca.crt": (first / "ca.pem").read_bytes()})
    mutual = grpc.ssl_channel_credentials(root_certificates=(first / "ca.pem").read_bytes(),
                                          private_key=(first / "client.key").read_bytes(),
                                          certificate_chain=(first / "client.pem").read_bytes())
    s = Server("--tls-cert", secret.root / "tls.crt", "--tls-key", secret.root / "tls.key",
               "--tls-client-ca", secret.root / "ca.crt", "--credentials-refresh-seconds", 1,
               credentials=mutual)
    try:
        assert presented_certificate(s.port, first / "ca.pem", first) == der(first / "server.pem")
        assert s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).vocab_size > 0
        assert s.metrics()[EXPIRY] == not_after(first / "server.pem")
        assert not_after(renewed / "server.pem") > not_after(first / "server.pem")

        secret.update({"tls.crt": (renewed / "server.pem").read_bytes(),
                       "tls.key": (renewed / "server.key").read_bytes(),
                       "ca.crt": (first / "ca.pem").read_bytes()})
        while presented_certificate(s.port, first / "ca.pem", first) != der(renewed / "server.pem"):
            assert s.proc.poll() is None, s.output()
            time.sleep(POLL)
        # A new channel handshakes with the renewed certificate; the open one keeps working.
        fresh = pb_grpc.AtmanStub(grpc.secure_channel(s.address, mutual))
        assert fresh.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).vocab_size > 0
        assert s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).vocab_size > 0
        assert s.metrics()[EXPIRY] == not_after(renewed / "server.pem")  # the alert's input moved on
        assert s.metrics()['atman_tls_reloads_total{result="ok"}'] == 1

        # A broken renewal (the new certificate with the old key; gRPC alone would serve it and
        # fail every handshake) is refused: counted, logged, and new handshakes keep the
        # previous certificate.
        again = renew_server_certificate(first, tmp / "again", days=3)
        secret.update({"tls.crt": (again / "server.pem").read_bytes(),
                       "tls.key": (renewed / "server.key").read_bytes(),
                       "ca.crt": (first / "ca.pem").read_bytes()})
        s.wait_metrics(lambda m: m.get('atman_tls_reloads_total{result="error"}') == 1, "the refused renewal")
        assert (f"--tls-key {secret.root / 'tls.key'}: is not the key of the certificate in --tls-cert "
                f"{secret.root / 'tls.crt'}; new handshakes keep the previous certificate") in s.output()
        assert presented_certificate(s.port, first / "ca.pem", first) == der(renewed / "server.pem")
        assert fresh.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).vocab_size > 0
        assert s.metrics()[EXPIRY] == not_after(renewed / "server.pem")
        # The matching key arrives: served.
        secret.update({"tls.crt": (again / "server.pem").read_bytes(),
                       "tls.key": (again / "server.key").read_bytes(),
                       "ca.crt": (first / "ca.pem").read_bytes()})
        while presented_certificate(s.port, first / "ca.pem", first) != der(again / "server.pem"):
            assert s.proc.poll() is None, s.output()
            time.sleep(POLL)
        assert s.metrics()['atman_tls_reloads_total{result="ok"}'] == 2
        # Mutual TLS still holds: a handshake without a client certificate is refused.
        with pytest.raises(grpc.RpcError) as e:
            server_only = grpc.ssl_channel_credentials(root_certificates=(first / "ca.pem").read_bytes())
            pb_grpc.AtmanStub(grpc.secure_channel(s.address, server_only)).GetModelInfo(
                pb.GetModelInfoRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert s.stop() == 0, s.output()


def test_a_rotated_tokens_file_replaces_the_file_tokens():
    tmp = Path(tempfile.mkdtemp(prefix="atman-tokens-"))
    secret = SecretVolume(tmp / "secret", {"tokens": b"# first\nold-token\n"})
    s = Server("--auth-tokens-file", secret.root / "tokens", "--credentials-refresh-seconds", 1,
               env={"ATMAN_AUTH_TOKENS": "env-token"})
    request = pb.GetModelInfoRequest()

    def code(token: str):
        try:
            s.stub.GetModelInfo(request, metadata=[("authorization", f"Bearer {token}")], timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()

    def reloads(result: str) -> float:
        return s.metrics().get(f'atman_auth_token_reloads_total{{result="{result}"}}', -1)

    try:
        assert EXPIRY not in s.metrics()  # no TLS, no certificate series
        assert (code("old-token"), code("new-token"), code("env-token")) == (
            grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK)
        assert (reloads("ok"), reloads("error")) == (0, 0)

        secret.update({"tokens": b"new-token\n"})
        while code("new-token") != grpc.StatusCode.OK:
            time.sleep(POLL)
        assert code("old-token") == grpc.StatusCode.UNAUTHENTICATED
        assert code("env-token") == grpc.StatusCode.OK  # the environment's tokens stay
        assert (reloads("ok"), reloads("error")) == (1, 0)

        # A file without a token is refused: the previous tokens stay, counted and logged.
        secret.update({"tokens": b"# emptied by mistake\n\n"})
        s.wait_metrics(lambda m: m.get('atman_auth_token_reloads_total{result="error"}') == 1,
                       "the refused change")
        assert (code("new-token"), code("env-token")) == (grpc.StatusCode.OK, grpc.StatusCode.OK)
        assert f"--auth-tokens-file {secret.root / 'tokens'}: changed but holds no token; " \
               "keeping the previous tokens" in s.output()
        # So is a file that cannot be read (here: gone).
        (secret.root / "..data").unlink()
        s.wait_metrics(lambda m: m.get('atman_auth_token_reloads_total{result="error"}') == 2,
                       "the unreadable file")
        assert code("new-token") == grpc.StatusCode.OK
        assert ": cannot be read; keeping the previous tokens" in s.output()

        secret.update({"tokens": b"third-token\n"})
        while code("third-token") != grpc.StatusCode.OK:
            time.sleep(POLL)
        assert code("new-token") == grpc.StatusCode.UNAUTHENTICATED
        assert (reloads("ok"), reloads("error")) == (2, 2)
    finally:
        assert s.stop() == 0, s.output()


def test_a_key_that_is_not_the_certificates_refuses_to_start():
    tmp = Path(tempfile.mkdtemp(prefix="atman-mismatch-"))
    first = make_certificates(tmp)
    renewed = renew_server_certificate(first, tmp / "renewed")
    s = Server("--tls-cert", first / "server.pem", "--tls-key", renewed / "server.key", wait=False)
    try:
        assert s.proc.wait(timeout=120) == 2, s.output()
        assert (f"--tls-key {renewed / 'server.key'}: is not the key of the certificate in "
                f"--tls-cert {first / 'server.pem'}") in s.output()
    finally:
        s.stop()
