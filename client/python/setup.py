"""Build hook of atman-client: generates the gRPC stubs from the repository's proto at build time.

build_py runs grpc_tools.protoc on proto/atman/v1/atman.proto (two folders up) and writes
atman/v1/atman_pb2.py, atman_pb2_grpc.py and atman_pb2.pyi into the build folder, next to the
hand-written package from src/. It also writes atman/_build.py: the package version, whose
major number is the proto package's (atman.v<N>), and the proto file's SHA-256. The protobuf
runtime floor is the generator's protobuf version (generated code refuses an older runtime).
"""
import hashlib
import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO = PROTO_ROOT / "atman" / "v1" / "atman.proto"
# Minor.patch of this client within the proto package's major version.
CLIENT_REVISION = "0.0"


def proto_package() -> str:
    if not PROTO.is_file():
        raise SystemExit(f"atman-client: {PROTO} not found; build from a checkout of the atman "
                         "repository (pip wheel client/python)")
    match = re.search(r"^package\s+(atman\.v(\d+))\s*;", PROTO.read_text(), re.MULTILINE)
    if not match:
        raise SystemExit(f"atman-client: no `package atman.vN;` line in {PROTO}")
    return match.group(1)


def version() -> str:
    return f"{proto_package().rsplit('.v', 1)[1]}.{CLIENT_REVISION}"


def protobuf_floor() -> str:
    try:
        from grpc_tools import protoc  # noqa: F401
        import google.protobuf
    except ImportError:  # metadata only (no build): any protobuf recent enough for grpcio
        return "protobuf>=5.26"
    major, minor = google.protobuf.__version__.split(".")[:2]
    return f"protobuf>={major}.{minor}"


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        import grpc_tools
        from grpc_tools import protoc
        out = Path(self.build_lib)
        include = Path(grpc_tools.__file__).parent / "_proto"
        rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}",
                          f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
                          str(PROTO)])
        if rc != 0:
            raise SystemExit(f"atman-client: protoc failed on {PROTO} (exit {rc})")
        (out / "atman" / "v1" / "__init__.py").write_text(
            '"""Generated gRPC stubs of the atman.v1 proto package (built, not edited)."""\n')
        digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()
        (out / "atman" / "_build.py").write_text(
            '"""Written by setup.py at build time."""\n'
            f"VERSION = {version()!r}\nPROTO_PACKAGE = {proto_package()!r}\n"
            f"PROTO_SHA256 = {digest!r}\n")


setup(
    version=version(),
    packages=["atman"],
    install_requires=["grpcio>=1.60", "grpcio-health-checking>=1.60", protobuf_floor(),
                      "numpy>=1.24"],
    extras_require={"pandas": ["pandas>=2.0"], "images": ["pillow>=10.0"],
                    "notebook": ["pandas>=2.0", "pillow>=10.0"]},
    cmdclass={"build_py": BuildWithStubs},
)
