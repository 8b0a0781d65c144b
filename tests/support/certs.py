"""Test certificates made by openssl: a CA, a server certificate for 127.0.0.1 and localhost,
and a client certificate (mutual TLS). Shared by the suites that start TLS servers."""
import subprocess
from pathlib import Path


def make_certificates(folder: Path) -> Path:
    """Writes ca.pem/ca.key, server.pem/server.key and client.pem/client.key into `folder`."""
    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", folder / "ca.key", "-out", folder / "ca.pem")
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                            ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", folder / f"{name}.key", "-out", folder / f"{name}.csr")
        (folder / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", folder / f"{name}.csr", "-CA", folder / "ca.pem",
                "-CAkey", folder / "ca.key", "-CAcreateserial", "-days", "1",
                "-extfile", folder / f"{name}.ext", "-out", folder / f"{name}.pem")
    return folder


def renew_server_certificate(ca_folder: Path, folder: Path, days: int = 2) -> Path:
    """A renewal as cert-manager does it: a new key and a new server certificate (new serial)
    for the same names, valid `days` days (longer than make_certificates' one), signed by
    `ca_folder`'s CA; writes server.pem/server.key into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=server",
            "-keyout", folder / "server.key", "-out", folder / "server.csr")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", folder / "server.csr", "-CA", ca_folder / "ca.pem",
            "-CAkey", ca_folder / "ca.key", "-CAcreateserial", "-days", days,
            "-extfile", folder / "server.ext", "-out", folder / "server.pem")
    return folder
