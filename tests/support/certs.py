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
