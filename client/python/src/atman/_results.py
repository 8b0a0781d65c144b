"""Typed results. Each keeps the protobuf message it was made from as `raw`; the fields are
views of it: spans with their text, image rectangles, token-id scores, one TargetExplanation
per explanation (one, or one per target token with target_granularity="token"), the raw
relevance tensors as numpy arrays, and the usage.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from atman.v1 import atman_pb2 as pb

if TYPE_CHECKING:
    import PIL.Image


@dataclass(frozen=True)
class TextSpan:
    """A text unit: code points [start, start + length) of prompt item `item` (item -1: of the
    target, for earlier target tokens with target_granularity="token"), its text and score."""
    item: int
    start: int
    length: int
    text: str
    score: float


@dataclass(frozen=True)
class ImageRegion:
    """An image unit: a rectangle in [0, 1] of the original image's width/height, given as its
    top-left corner (left, top; y down) and its size (width, height), not as two corners."""
    item: int
    left: float
    top: float
    width: float
    height: float
    score: float


@dataclass(frozen=True)
class TokenScore:
    """A unit of a token-id item: the index within the item's ids, the id, its score."""
    item: int
    token_index: int
    token_id: int
    score: float


@dataclass(frozen=True)
class Usage:
    forward_passes: int
    perturbed_rows: int
    positions_computed: int
    peak_memory_bytes: int
    queue_seconds: float
    compute_seconds: float
    prompt_tokens: int
    target_tokens: int

    @staticmethod
    def from_proto(u: pb.Usage) -> "Usage":
        return Usage(**{f.name: getattr(u, f.name) for f in dataclasses.fields(Usage)})


@dataclass(frozen=True)
class Progress:
    """A progress event of explain_stream(): perturbed rows done of total, seconds left
    (estimated from this request's rate; 0 until a batch finished)."""
    rows_done: int
    rows_total: int
    estimated_seconds_left: float


@dataclass(frozen=True)
class TargetExplanation:
    """One explanation: of the whole target, or of its piece target[target_start:
    target_start + target_length] (code points) with target_granularity="token"."""
    target_start: int
    target_length: int
    target_text: str
    spans: list[TextSpan]
    regions: list[ImageRegion]
    tokens: list[TokenScore]
    target_spans: list[TextSpan]

    @property
    def scores(self) -> np.ndarray:
        """Every unit's score in the order spans, regions, tokens, target_spans."""
        return np.array([u.score for u in (*self.spans, *self.regions, *self.tokens,
                                           *self.target_spans)], dtype=np.float64)


def _tensor(t: pb.Tensor) -> Optional[np.ndarray]:
    if not t.shape:
        return None
    return np.asarray(t.values, dtype=np.float32).reshape(tuple(t.shape))


@dataclass(frozen=True, repr=False, eq=False)
class Explanation:
    """The result of explain(): the explained target (the generation when no target was given),
    its token ids and log-probabilities, the explanations, the raw relevance tensors
    ([m, n] target token x unit and [m, L] target token x position; None unless
    return_relevance_tensor=True), the usage, and the request and response messages."""
    request_id: str
    target: str
    target_token_ids: list[int]
    target_log_probs: np.ndarray
    explanations: list[TargetExplanation]
    unit_relevance: Optional[np.ndarray]
    position_relevance: Optional[np.ndarray]
    usage: Usage
    request: pb.ExplainRequest = field(compare=False)
    raw: pb.ExplainResponse = field(compare=False)

    @staticmethod
    def from_proto(request: pb.ExplainRequest, r: pb.ExplainResponse) -> "Explanation":
        explanations = []
        for e in r.explanations:
            spans, regions, tokens = [], [], []
            for scores in e.items:
                i = scores.item
                prompt = request.prompt[i] if 0 <= i < len(request.prompt) else pb.PromptItem()
                text = prompt.text
                for s in scores.text:
                    spans.append(TextSpan(i, s.start, s.length, text[s.start:s.start + s.length],
                                          s.score))
                for s in scores.image:
                    regions.append(ImageRegion(i, s.left, s.top, s.width, s.height, s.score))
                ids = prompt.token_ids.ids
                for s in scores.tokens:
                    token_id = ids[s.token_index] if 0 <= s.token_index < len(ids) else -1
                    tokens.append(TokenScore(i, s.token_index, token_id, s.score))
            target_spans = [TextSpan(-1, s.start, s.length, r.target[s.start:s.start + s.length],
                                     s.score) for s in e.target]
            explanations.append(TargetExplanation(
                e.target_start, e.target_length,
                r.target[e.target_start:e.target_start + e.target_length],
                spans, regions, tokens, target_spans))
        return Explanation(r.request_id, r.target, list(r.target_token_ids),
                           np.asarray(r.target_log_probs, dtype=np.float64), explanations,
                           _tensor(r.unit_relevance), _tensor(r.position_relevance),
                           Usage.from_proto(r.usage), request, r)

    def __eq__(self, other: object) -> bool:
        """Equal when made from equal requests and responses (numpy fields do not compare as
        dataclass fields)."""
        if not isinstance(other, Explanation):
            return NotImplemented
        return self.request == other.request and self.raw == other.raw

    __hash__ = None  # type: ignore[assignment]

    # The first (with target_granularity="complete": the only) explanation's units.
    @property
    def spans(self) -> list[TextSpan]:
        return self.explanations[0].spans if self.explanations else []

    @property
    def regions(self) -> list[ImageRegion]:
        return self.explanations[0].regions if self.explanations else []

    @property
    def tokens(self) -> list[TokenScore]:
        return self.explanations[0].tokens if self.explanations else []

    @property
    def per_token(self) -> list[TargetExplanation]:
        """The per-target-token views (target_granularity="token"), in target order."""
        return self.explanations

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists for arrays), e.g. for json.dumps."""
        def plain(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return v.tolist()
            if dataclasses.is_dataclass(v):
                return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if isinstance(v, list):
                return [plain(x) for x in v]
            return v
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in ("request", "raw")}

    def to_pandas(self):
        """One row per unit: explanation (index), target_text (the explained piece), item
        (-1: the target), kind ("text", "image", "tokens", "target"), text, start, length,
        left, top, width, height, token_index, token_id, score. Needs pandas (not a
        dependency of atman-client: pip install pandas, or atman-client[pandas])."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Explanation.to_pandas() needs pandas, which atman-client does not "
                              "install: pip install pandas (or atman-client[pandas])") from None
        rows = []
        for k, e in enumerate(self.explanations):
            base = {"explanation": k, "target_text": e.target_text}
            for s in e.spans:
                rows.append({**base, "item": s.item, "kind": "text", "text": s.text,
                             "start": s.start, "length": s.length, "score": s.score})
            for s in e.regions:
                rows.append({**base, "item": s.item, "kind": "image", "left": s.left,
                             "top": s.top, "width": s.width, "height": s.height,
                             "score": s.score})
            for s in e.tokens:
                rows.append({**base, "item": s.item, "kind": "tokens",
                             "token_index": s.token_index, "token_id": s.token_id,
                             "score": s.score})
            for s in e.target_spans:
                rows.append({**base, "item": -1, "kind": "target", "text": s.text,
                             "start": s.start, "length": s.length, "score": s.score})
        columns = ["explanation", "target_text", "item", "kind", "text", "start", "length",
                   "left", "top", "width", "height", "token_index", "token_id", "score"]
        frame = pd.DataFrame(rows, columns=columns)
        for c in ("start", "length", "token_index", "token_id"):
            frame[c] = frame[c].astype("Int64")
        return frame

    def html(self, model: Optional["ModelInfo"] = None) -> str:
        """The self-contained HTML report (the look of `atman explain --html`)."""
        from atman._render import html_report
        return html_report(self, model)

    def _repr_html_(self) -> str:
        """Jupyter's view: the html() page in a sandboxed iframe (srcdoc), so that its styles
        and Content-Security-Policy apply to it alone and not to the notebook."""
        from atman._render import notebook_html
        return notebook_html(self)

    def overlay(self, item: Optional[int] = None, explanation: int = 0) -> "PIL.Image.Image":
        """The image of prompt item `item` (default: the first image) with its relevance
        overlay and a colour bar, as a PIL image (the look of `atman explain --png`). Needs
        Pillow (pip install pillow, or atman-client[images])."""
        from atman._render import overlay
        return overlay(self, item, explanation)

    def __repr__(self) -> str:
        return (f"Explanation(target={self.target!r}, explanations={len(self.explanations)}, "
                f"units={sum(len(e.scores) for e in self.explanations)}, "
                f"request_id={self.request_id!r})")


@dataclass(frozen=True)
class GenerateResult:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str  # "length", "eos" or "context"
    usage: Usage
    raw: pb.GenerateResponse = field(compare=False, repr=False)

    @staticmethod
    def from_proto(r: pb.GenerateResponse) -> "GenerateResult":
        reason = pb.GenerateResponse.FinishReason.Name(r.finish_reason)
        return GenerateResult(r.request_id, r.text, list(r.token_ids),
                              reason.removeprefix("FINISH_REASON_").lower(),
                              Usage.from_proto(r.usage), r)


@dataclass(frozen=True)
class Token:
    """A token: id, vocabulary string, code points [start, start + length) of the input,
    and whether the post-processor added it (BOS)."""
    id: int
    text: str
    start: int
    length: int
    special: bool

    @staticmethod
    def list_from_proto(r: pb.TokenizeResponse) -> list["Token"]:
        return [Token(t.id, t.text, t.start, t.length, t.special) for t in r.tokens]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    model_type: str
    vocab_size: int
    num_layers: int
    max_positions: int
    supports_images: bool
    device: str
    dtype: str
    max_prompt_tokens: int
    max_units: int
    max_image_bytes: int
    max_image_pixels: int
    max_message_bytes: int
    max_new_tokens: int
    server_version: str
    chat_template: str  # Jinja source; "" when the model has none
    max_image_tokens: int  # image tokens of one request, all its images together
    raw: pb.ModelInfo = field(compare=False, repr=False)

    @staticmethod
    def from_proto(m: pb.ModelInfo) -> "ModelInfo":
        names = [f.name for f in dataclasses.fields(ModelInfo) if f.name != "raw"]
        return ModelInfo(**{n: getattr(m, n) for n in names}, raw=m)
