"""atman: the Python client of the atman.v1 gRPC service (AtMan explanations, steered
generation, tokenization, model info, health). See docs/python.md.

    import atman
    client = atman.Client("127.0.0.1:50051")
    result = client.explain("Tom lives in Rome. Anna lives in Paris. Where does Anna live?",
                            target=" Paris", text_granularity="word")
    result            # a heatmap in Jupyter (result._repr_html_())
    result.spans      # [TextSpan(item=0, start=0, length=3, text='Tom', score=...), ...]

The generated protobuf messages are in atman.v1 (atman_pb2, atman_pb2_grpc).
"""
from atman._build import PROTO_PACKAGE, PROTO_SHA256, VERSION as __version__
from atman._client import AsyncClient, AtmanError, Client, Tls
from atman._options import Control, OptionError
from atman._prompt import Image, TokenIds
from atman._results import (Explanation, GenerateResult, ImageRegion, ModelInfo, Progress,
                            TargetExplanation, TextSpan, Token, TokenScore, Usage)

__all__ = [
    "AsyncClient", "AtmanError", "Client", "Control", "Explanation", "GenerateResult", "Image",
    "ImageRegion", "ModelInfo", "OptionError", "PROTO_PACKAGE", "PROTO_SHA256", "Progress",
    "TargetExplanation", "TextSpan", "Tls", "Token", "TokenIds", "TokenScore", "Usage",
    "__version__",
]
