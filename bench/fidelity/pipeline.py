"""The fidelity benchmark's moving parts (docs/fidelity.md): held-out items, the engine client
(atman-explain), the transformers model with the baseline attribution methods, the mapping of
every method onto the engine's units, ground truth per unit, and the deletion curve.

Units are the engine's: atman-explain is asked for word units (text) and the native patch grid
(images), and every other method's per-position attributions are summed onto exactly those
units (positions found through the tokenizer's character offsets and the patch index), so all
methods are scored on the same unit set.

Not thread-safe; one process drives one engine subprocess and one transformers model.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "default_model"))
import tasks  # noqa: E402  (tools/default_model/tasks.py: generators with ground truth)


def use_tasks(path: Path) -> None:
    """Generate items with another copy of tasks.py (e.g. the revision a model was trained
    with); replaces this module's `tasks`."""
    global tasks
    spec = importlib.util.spec_from_file_location("tasks", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tasks"] = module
    spec.loader.exec_module(module)
    tasks = module

from metrics import deletion_counts, deletion_order  # noqa: E402

DELETION_FRACTIONS = [i / 10 for i in range(11)]
IG_STEPS = 32  # Integrated Gradients: steps of the path integral (Captum gausslegendre), zero baseline
QUESTION_MARK = "\nQuestion:"


# ---------------------------------------------------------------------------------------------
# Peak resident memory of a process (Linux): /proc/<pid>/clear_refs "5" resets VmHWM.


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


class PeakRss:
    """Peak RSS growth of `pid` between start() and stop(), in bytes (VmHWM - VmRSS before)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.before = 0

    def start(self) -> None:
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")
        self.before = _status_kib(self.pid, "VmRSS")

    def stop(self) -> int:
        return max(0, _status_kib(self.pid, "VmHWM") - self.before) * 1024


# ---------------------------------------------------------------------------------------------
# Items and prompts.


def prompt_items(item: tasks.Item) -> list[dict]:
    """The engine prompt of an item: "<s>" as a text item of its own (so that it never fuses
    with the first word into one word unit), then the text around the image item (the
    "<image>" marker is where the image goes; it is not sent as text)."""
    assert item.prompt.startswith(tasks.BOS), item.prompt
    parts = item.prompt[len(tasks.BOS):].split(tasks.IMAGE_TOKEN)
    if len(parts) == 1:
        return [{"text": tasks.BOS}, {"text": parts[0]}]
    assert len(parts) == 2 and parts[0] == "", item.prompt
    return [{"text": tasks.BOS}, {"image": True}, {"text": parts[1]}]


def item_offsets(item: tasks.Item) -> list[int]:
    """Character offset of each prompt item's text within `item.prompt` (images: their marker)."""
    offsets, at = [], 0
    for part in prompt_items(item):
        offsets.append(at)
        at += len(part["text"]) if "text" in part else len(tasks.IMAGE_TOKEN)
    return offsets


@dataclasses.dataclass
class Unit:
    kind: str                      # "text" | "image"
    index: int                     # in the engine's unit order
    char_range: Optional[tuple[int, int]] = None  # text: [begin, end) in item.prompt
    patch: Optional[tuple[int, int]] = None       # image: (row, col) of the patch grid
    positions: list[int] = dataclasses.field(default_factory=list)  # HF input positions
    context: bool = False          # counted by the metrics (image, or words before the question)
    truth: float = 0.0             # ground truth y


def units_from_engine(item: tasks.Item, answer: dict, grid: int) -> list[Unit]:
    """The engine's units of one explanation, located in item.prompt and the patch grid."""
    offsets = item_offsets(item)
    question_at = item.prompt.index(QUESTION_MARK)
    bos_end = len(tasks.BOS)
    units = []
    for k, u in enumerate(answer["explanations"][0]["units"]):
        if u["kind"] == "image":
            left, top = u["rect"][0], u["rect"][1]
            unit = Unit("image", k, patch=(round(top * grid), round(left * grid)))
            unit.context = True
        elif u["kind"] == "text":
            begin = offsets[u["item"]] + u["start"]
            unit = Unit("text", k, char_range=(begin, begin + u["length"]))
            unit.context = begin >= bos_end and begin + u["length"] <= question_at
        else:
            raise ValueError(f"unexpected unit kind {u['kind']!r}")
        units.append(unit)
    return units


def assign_truth(item: tasks.Item, units: list[Unit]) -> None:
    """y per unit: text evidence, 1 for the words of the answering sentence; image evidence,
    the fraction of the patch that the relevant shape(s) cover."""
    for u in units:
        if u.kind == "text" and item.evidence == "text":
            s, e = item.sentence_span
            u.truth = float(u.char_range[0] < e and u.char_range[1] > s)
        elif u.kind == "image" and item.evidence == "image":
            u.truth = float(item.patch_fraction[u.patch])
        else:
            u.truth = 0.0


# ---------------------------------------------------------------------------------------------
# The engine.


class Engine:
    """An atman-explain subprocess; one request at a time (write a line, read a line)."""

    def __init__(self, binary: Path, model_dir: Path, args: tuple[str, ...] = ()):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([str(binary), "--model", str(model_dir), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.rss = PeakRss(self.proc.pid)

    def explain(self, request: dict) -> tuple[dict, int]:
        """The answer line and the process's peak RSS growth while computing it."""
        self.rss.start()
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        peak = self.rss.stop()
        if not line:
            raise RuntimeError(f"atman-explain exited (rc {self.proc.poll()})")
        return json.loads(line), peak

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def engine_request(item: tasks.Item, image_path: Optional[Path], options: dict) -> dict:
    prompt = []
    for part in prompt_items(item):
        prompt.append({"image_path": str(image_path)} if "image" in part else part)
    return {"prompt": prompt, "target": item.answer,
            "options": {"text_granularity": "word", "image_granularity": "native", **options}}


# ---------------------------------------------------------------------------------------------
# The transformers side.


@dataclasses.dataclass
class Encoded:
    embeds: torch.Tensor           # [1, L, H]: prompt + target[:-1] input embeddings
    prompt_len: int
    target_ids: list[int]
    offsets: list[Optional[tuple[int, int]]]  # per prompt position; None for image tokens
    image_first: int               # position of the first image token (-1: none)


class HfModel:
    """LlavaForConditionalGeneration (eager attention, float32) and its tokenizer/processor.
    Every method works on the decoder's input embeddings: token embeddings with the projected
    image features at the image token positions, as LlavaForConditionalGeneration builds them."""

    def __init__(self, model_dir: Path):
        from tokenizers import Tokenizer
        from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration

        self.model = LlavaForConditionalGeneration.from_pretrained(
            str(model_dir), attn_implementation="eager", dtype=torch.float32).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.image_processor = CLIPImageProcessorPil.from_pretrained(str(model_dir))
        config = self.model.config
        self.image_token_id = config.image_token_id
        self.grid = config.vision_config.image_size // config.vision_config.patch_size
        self.embedding = self.model.get_input_embeddings()

    def encode(self, item: tasks.Item) -> Encoded:
        enc = self.tokenizer.encode(item.prompt)
        ids, offsets, image_first = [], [], -1
        for token, span in zip(enc.ids, enc.offsets):
            if token == self.image_token_id:
                image_first = len(ids)
                ids += [token] * (self.grid * self.grid)
                offsets += [None] * (self.grid * self.grid)
            else:
                ids.append(token)
                offsets.append(tuple(span))
        target_ids = self.tokenizer.encode(item.answer).ids
        all_ids = torch.tensor([ids + target_ids[:-1]])
        with torch.no_grad():
            embeds = self.embedding(all_ids).clone()
            if image_first >= 0:
                from PIL import Image
                pixels = self.image_processor(images=Image.fromarray(item.image),
                                              return_tensors="pt")["pixel_values"]
                features = self.model.get_image_features(pixel_values=pixels).pooler_output[0]
                embeds[0, image_first:image_first + features.shape[0]] = features
        return Encoded(embeds, len(ids), target_ids, offsets, image_first)

    def log_prob(self, embeds: torch.Tensor, enc: Encoded,
                 attention_mask: Optional[torch.Tensor] = None,
                 output_attentions: bool = False):
        """Sum over target tokens of log p(t_j | ...), one value per batch row. The inputs are
        the prompt and target[:-1], so the m target tokens are predicted at the last m
        positions: only their logits are computed (logits_to_keep), and no KV cache is kept."""
        m = len(enc.target_ids)
        if embeds.shape[1] != enc.prompt_len + m - 1:
            raise ValueError(f"log_prob: {embeds.shape[1]} positions, expected prompt "
                             f"{enc.prompt_len} + target {m} - 1")
        out = self.model(inputs_embeds=embeds, attention_mask=attention_mask,
                         output_attentions=output_attentions, logits_to_keep=m, use_cache=False)
        logits = out.logits[:, -m:]
        lp = torch.log_softmax(logits.float(), dim=-1)
        idx = torch.tensor(enc.target_ids).view(1, -1, 1).expand(lp.shape[0], -1, 1)
        total = lp.gather(-1, idx).squeeze(-1).sum(-1)
        return (total, out.attentions) if output_attentions else total

    def locate(self, units: list[Unit], enc: Encoded) -> None:
        """Fills each unit's input positions (text: tokens whose character span overlaps the
        unit's; image: the patch's token)."""
        for u in units:
            if u.kind == "image":
                u.positions = [enc.image_first + u.patch[0] * self.grid + u.patch[1]]
            else:
                b, e = u.char_range
                u.positions = [p for p, span in enumerate(enc.offsets)
                               if span is not None and span[0] < e and span[1] > b]
            if not u.positions:
                raise RuntimeError(f"unit {u.index} ({u.kind}) has no input position")


def to_units(position_scores: torch.Tensor, units: list[Unit]) -> np.ndarray:
    """Per-unit relevance: the sum of the unit's position scores."""
    s = position_scores.detach().double().numpy()
    return np.array([s[u.positions].sum() for u in units])


# ---------------------------------------------------------------------------------------------
# Baseline methods: each returns per-unit relevance over all units (higher = more supportive).


def _captum_gradient(hf: HfModel, enc: Encoded, units: list[Unit], method: str) -> np.ndarray:
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    def f(embeds):
        return hf.log_prob(embeds, enc)

    x = enc.embeds.clone().requires_grad_(True)
    if method == "ig":
        attr = IntegratedGradients(f).attribute(x, baselines=torch.zeros_like(x), n_steps=IG_STEPS,
                                                internal_batch_size=32)
    elif method == "ixg":
        attr = InputXGradient(f).attribute(x)
    else:
        attr = Saliency(f).attribute(x, abs=True)
    # Position score: L2 norm of the attribution vector over the hidden dimension.
    return to_units(attr[0, :enc.prompt_len].norm(dim=-1), units)


def integrated_gradients(hf, enc, units):
    return _captum_gradient(hf, enc, units, "ig")


def input_x_gradient(hf, enc, units):
    return _captum_gradient(hf, enc, units, "ixg")


def saliency(hf, enc, units):
    return _captum_gradient(hf, enc, units, "saliency")


def _query_rows(enc: Encoded) -> list[int]:
    return list(range(enc.prompt_len - 1, enc.prompt_len - 1 + len(enc.target_ids)))


def attention_rollout(hf: HfModel, enc: Encoded, units: list[Unit]) -> np.ndarray:
    """Abnar & Zuidema (2020): per layer A' = 0.5 * mean_heads(A) + 0.5 * I, rows renormalised,
    R = A'_L ... A'_1; relevance of position i = sum over target query rows of R[q, i]."""
    with torch.no_grad():
        _, attentions = hf.log_prob(enc.embeds, enc, output_attentions=True)
    n = enc.embeds.shape[1]
    eye = torch.eye(n, dtype=torch.float64)
    rollout = eye.clone()
    for a in attentions:
        a = 0.5 * a[0].double().mean(0) + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        rollout = a @ rollout
    return to_units(rollout[_query_rows(enc)].sum(0)[:enc.prompt_len], units)


def chefer(hf: HfModel, enc: Encoded, units: list[Unit]) -> np.ndarray:
    """Chefer, Gur & Wolf (2021), "Generic attention-model explainability" for decoders: per
    layer Abar = mean_heads((dy/dA * A)^+), R <- R + Abar R from R = I; y = the target
    log-probability; relevance of position i = sum over target query rows of R[q, i]."""
    x = enc.embeds.clone().requires_grad_(True)
    with torch.enable_grad():
        total, attentions = hf.log_prob(x, enc, output_attentions=True)
        for a in attentions:
            a.retain_grad()
        total.sum().backward()
    n = x.shape[1]
    r = torch.eye(n, dtype=torch.float64)
    for a in attentions:
        cam = (a.grad[0].double() * a[0].detach().double()).clamp(min=0).mean(0)
        r = r + cam @ r
    return to_units(r[_query_rows(enc)].sum(0)[:enc.prompt_len], units)


def occlusion(hf: HfModel, enc: Encoded, units: list[Unit]) -> np.ndarray:
    """Leave-one-unit-out with Captum's FeatureAblation: the unit's input embeddings replaced by
    zeros (token masking at the embedding), relevance = log p(target) - log p(target | masked).
    Only context units are ablated (others score 0)."""
    from captum.attr import FeatureAblation

    n = enc.embeds.shape[1]
    group = torch.full((n,), 0, dtype=torch.long)  # group 0: everything not ablated alone
    context = [u for u in units if u.context]
    for g, u in enumerate(context, start=1):
        group[u.positions] = g
    mask = group.view(1, n, 1).expand_as(enc.embeds).contiguous()

    def f(embeds):
        return hf.log_prob(embeds, enc)

    with torch.no_grad():
        attr = FeatureAblation(f).attribute(enc.embeds.clone(), baselines=0.0, feature_mask=mask,
                                            perturbations_per_eval=16)
    scores = np.zeros(len(units))
    for u in context:
        scores[u.index] = float(attr[0, u.positions[0], 0])
    return scores


def random_baseline(seed: int) -> Callable:
    rng = np.random.default_rng(seed)

    def method(hf, enc, units):
        return rng.random(len(units))

    return method


BASELINES = {
    "IG (Captum)": integrated_gradients,
    "IxG (Captum)": input_x_gradient,
    "Saliency (Captum)": saliency,
    "Attention rollout": attention_rollout,
    "Chefer (grad x attention)": chefer,
    "Occlusion (zero embedding, Captum)": occlusion,
}


# ---------------------------------------------------------------------------------------------
# Deletion curve: context units removed most-relevant-first by attention removal.


def deletion_curve(hf: HfModel, enc: Encoded, context: list[Unit],
                   relevance: np.ndarray) -> list[float]:
    """p(target) after removing round(f * n) of the n context units, most relevant first, for f
    in DELETION_FRACTIONS. Removal = the units' positions masked out as attention keys for every
    query (a 0 in the attention mask; AtMan's factor 0), batched forward passes."""
    return deletion_curves(hf, enc, context, {"": relevance})[""]


def deletion_curves(hf: HfModel, enc: Encoded, context: list[Unit],
                    relevances: dict, batch: int = 16, known: Optional[dict] = None) -> dict:
    """deletion_curve() of several methods' relevance over the same context (name -> curve).
    A removal set that two curves share (every curve starts with none removed and ends with
    all; methods that agree on their top units share more) is computed once: the same p as
    its own row would give, up to the rounding of another batch shape. `known` (removal set ->
    p, filled here) carries the sets of earlier calls on the same item and context."""
    counts = deletion_counts(len(context), DELETION_FRACTIONS)
    removed_sets = {name: [frozenset(deletion_order(rel)[:count]) for count in counts]
                    for name, rel in relevances.items()}
    p = {} if known is None else known
    unique = [s for s in dict.fromkeys(s for sets in removed_sets.values() for s in sets)
              if s not in p]
    n = enc.embeds.shape[1]
    for at in range(0, len(unique), batch):
        chunk = unique[at:at + batch]
        mask = torch.ones(len(chunk), n, dtype=torch.long)
        for row, removed in enumerate(chunk):
            for k in removed:
                mask[row, context[k].positions] = 0
        with torch.no_grad():
            lp = hf.log_prob(enc.embeds.expand(len(chunk), -1, -1), enc, attention_mask=mask)
        p.update(zip(chunk, (math.exp(v) for v in lp.tolist())))
    return {name: [p[s] for s in sets] for name, sets in removed_sets.items()}


def timed(fn: Callable, *args):
    """(result, seconds, peak RSS growth in bytes) of fn(*args) in this process."""
    rss = PeakRss(os.getpid())
    rss.start()
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    return result, seconds, rss.stop()
