"""Procedural tasks of the embedded default model, with the ground truth of each answer.

Three task families, each a pure function of a seed (`generate(task, count, seed)`):

- "shapes": an image of coloured shapes on a plain background and a question about one shape
  type's colour, side (left/right, top/bottom) or count. Ground truth: the pixel mask of the
  shape(s) the answer depends on, and that mask on the vision tower's patch grid (fraction of
  each patch covered).
- "facts": text only. A few sentences "<Name> lives in <City>." and a question answered by
  exactly one of them. Ground truth: the character span of the answering sentence, of the
  city it names (the answer) and of the person's name, all within `Item.prompt`.
- "mixed": a caption sentence "The <object> is <colour>." plus a shapes image; the question asks
  either the caption object's colour (evidence "text") or an image shape's colour (evidence
  "image"; the caption's colour then differs from the answer). Ground truth: which source
  answers, and the span or mask of the evidence.

Prompt format (fixed; the model is trained on exactly this):

    "<s><image>\\n" [caption + "\\n"] "Question: <question>\\nAnswer:"     (image tasks)
    "<s>" facts + "\\n" "Question: <question>\\nAnswer:"                   (facts)

The target is one word with a leading space, e.g. " red", followed by "</s>". "<image>" is a
single special token that LlavaProcessor expands to one token per vision patch.

The later fidelity benchmark imports this module; keep the generators' output for a given seed
stable (changing them changes every recorded result).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Optional

import numpy as np

IMAGE_SIZE = 48  # pixels; the images are generated at the model's input size
PATCH_SIZE = 8  # the vision tower's patch size: a 6 x 6 grid of patches
GRID = IMAGE_SIZE // PATCH_SIZE
CELL = 2 * PATCH_SIZE  # shapes sit in whole 2 x 2 patch blocks: a 3 x 3 grid of cells
CELLS = IMAGE_SIZE // CELL

BOS = "<s>"
EOS = "</s>"
PAD = "<pad>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IMAGE_TOKEN]  # ids 0..3 in this order

TASKS = ("shapes", "facts", "mixed")

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
NAMES = ("Tom", "Anna", "Ben", "Lisa", "Max", "Eva", "Sam", "Mia", "Leo", "Zoe", "Jack", "Emma")
CITIES = ("Rome", "Paris", "London", "Berlin", "Madrid", "Vienna", "Oslo", "Lisbon", "Prague",
          "Dublin", "Athens", "Warsaw")
OBJECTS = ("car", "ball", "hat", "kite", "cup", "book")

# Every word a model answer can be (each must be a single token of the trained tokenizer).
ANSWER_WORDS = (tuple(COLOURS) + ("left", "right", "top", "bottom") + tuple(COUNT_WORDS.values())
                + CITIES)


@dataclasses.dataclass
class Item:
    """One question with its answer and ground truth.

    prompt: the model input text in the fixed format above (with one "<image>" when `image` is
      set). answer: the expected greedy continuation before "</s>", e.g. " red".
    image: uint8 array (IMAGE_SIZE, IMAGE_SIZE, 3) or None.
    evidence: "image" or "text", the source the answer depends on.
    mask: bool (IMAGE_SIZE, IMAGE_SIZE), the pixels of the relevant shape(s), when evidence is
      "image". patch_fraction: float32 (GRID, GRID), the fraction of each patch the mask
      covers, row-major like the vision tower's patch order.
    sentence_span / entity_span / subject_span: [start, end) character offsets into `prompt`
      of the answering sentence, of the answer-bearing word in it (city or colour) and of its
      subject (person or object), when evidence is "text".
    other_questions: every other (question, answer) the same context answers unambiguously;
      training appends some of them as further turns, for more supervision per sequence.
    patch_shape / patch_colour / patch_count: int64 (GRID, GRID), for every image, what lies
      under each patch: 1 + index into SHAPES, 1 + index into COLOURS, and how many shapes of
      that kind the image holds (all 0 on background). Training uses them for an auxiliary
      per-patch loss on the vision tower; they are not model inputs.
    """

    task: str
    kind: str
    prompt: str
    answer: str
    evidence: str
    image: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    patch_fraction: Optional[np.ndarray] = None
    sentence_span: Optional[tuple[int, int]] = None
    entity_span: Optional[tuple[int, int]] = None
    subject_span: Optional[tuple[int, int]] = None
    other_questions: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    patch_shape: Optional[np.ndarray] = None
    patch_colour: Optional[np.ndarray] = None
    patch_count: Optional[np.ndarray] = None


@dataclasses.dataclass
class _Shape:
    kind: str
    colour: str
    cx: float
    cy: float
    r: float


def _shape_mask(shape: _Shape) -> np.ndarray:
    """Boolean (IMAGE_SIZE, IMAGE_SIZE) mask, sampled at pixel centres (no anti-aliasing)."""
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5
    dx, dy = xs - shape.cx, ys - shape.cy
    if shape.kind == "circle":
        return dx * dx + dy * dy <= shape.r * shape.r
    if shape.kind == "square":
        h = shape.r * 0.9
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    # Upward triangle: apex at (cx, cy - r), base at y = cy + r * 0.8, half-width r.
    top, bottom = shape.cy - shape.r, shape.cy + shape.r * 0.8
    t = (ys - top) / (bottom - top)  # 0 at the apex, 1 at the base
    return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * shape.r)


def patch_fraction(mask: np.ndarray) -> np.ndarray:
    """Fraction of each PATCH_SIZE x PATCH_SIZE patch that `mask` covers, shape (GRID, GRID)."""
    m = mask.reshape(GRID, PATCH_SIZE, GRID, PATCH_SIZE).astype(np.float32)
    return m.mean(axis=(1, 3))


def _place(rng: random.Random, kinds_colours: list[tuple[str, str]]) -> list[_Shape]:
    """Places each shape in its own CELL x CELL cell of the image (a CELLS x CELLS grid whose
    cells are whole 2 x 2 blocks of patches), centred with at most 1 px of jitter, so a shape
    covers the same four patches wherever it is."""
    cells = rng.sample(range(CELLS * CELLS), len(kinds_colours))
    placed = []
    for (kind, colour), cell in zip(kinds_colours, cells):
        r = rng.uniform(6.0, 7.0)
        cx = (cell % CELLS + 0.5) * CELL + rng.uniform(-1.0, 1.0)
        cy = (cell // CELLS + 0.5) * CELL + rng.uniform(-1.0, 1.0)
        placed.append(_Shape(kind, colour, cx, cy, r))
    return placed


def _patch_labels(shapes: list[_Shape]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What lies under each patch (the shape covering most of it, if it covers a quarter)."""
    kind_ids = np.zeros((GRID, GRID), dtype=np.int64)
    colour_ids = np.zeros((GRID, GRID), dtype=np.int64)
    counts = np.zeros((GRID, GRID), dtype=np.int64)
    best = np.full((GRID, GRID), 0.25, dtype=np.float32)
    for s in shapes:
        frac = patch_fraction(_shape_mask(s))
        take = frac > best
        best[take] = frac[take]
        kind_ids[take] = 1 + SHAPES.index(s.kind)
        colour_ids[take] = 1 + list(COLOURS).index(s.colour)
        counts[take] = sum(1 for o in shapes if o.kind == s.kind)
    return kind_ids, colour_ids, counts


def _render(rng: random.Random, shapes: list[_Shape]) -> np.ndarray:
    grey = rng.randint(20, 70)
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), grey, dtype=np.uint8)
    for s in shapes:
        base = np.array(COLOURS[s.colour], dtype=np.int32)
        colour = np.clip(base + np.array([rng.randint(-15, 15) for _ in range(3)]), 0, 255)
        image[_shape_mask(s)] = colour.astype(np.uint8)
    return image


def _scene_with_unique(rng: random.Random, target_kind: str) -> tuple[list[_Shape], _Shape]:
    """A target shape of `target_kind` plus 1-3 distractors of other kinds."""
    others = [k for k in SHAPES if k != target_kind]
    spec = [(target_kind, rng.choice(list(COLOURS)))]
    spec += [(rng.choice(others), rng.choice(list(COLOURS))) for _ in range(rng.randint(1, 3))]
    shapes = _place(rng, spec)
    return shapes, shapes[0]


def _scene_questions(shapes: list[_Shape], colour_only: bool = False) -> list[tuple[str, str]]:
    """Every question the scene answers unambiguously, in a fixed order."""
    questions = []
    for kind in SHAPES:
        of_kind = [s for s in shapes if s.kind == kind]
        if not of_kind:
            continue
        if not colour_only:
            questions.append((f"How many {kind}s are there?", " " + COUNT_WORDS[len(of_kind)]))
        if len(of_kind) != 1:
            continue
        s = of_kind[0]
        questions.append((f"What colour is the {kind}?", " " + s.colour))
        if colour_only:
            continue
        if abs(s.cx - IMAGE_SIZE / 2) >= 5:
            side = "left" if s.cx < IMAGE_SIZE / 2 else "right"
            questions.append((f"Is the {kind} left or right?", " " + side))
        if abs(s.cy - IMAGE_SIZE / 2) >= 5:
            side = "top" if s.cy < IMAGE_SIZE / 2 else "bottom"
            questions.append((f"Is the {kind} top or bottom?", " " + side))
    return questions


def _labels(shapes: list[_Shape]) -> dict:
    kind_ids, colour_ids, counts = _patch_labels(shapes)
    return {"patch_shape": kind_ids, "patch_colour": colour_ids, "patch_count": counts}


def _shapes_item(rng: random.Random) -> Item:
    kind = rng.choice(("colour", "horizontal", "vertical", "count"))
    target = rng.choice(SHAPES)
    if kind == "count":
        n = rng.randint(1, 3)
        others = [k for k in SHAPES if k != target]
        spec = [(target, rng.choice(list(COLOURS))) for _ in range(n)]
        spec += [(rng.choice(others), rng.choice(list(COLOURS))) for _ in range(rng.randint(0, 2))]
        shapes = _place(rng, spec)
        relevant = shapes[:n]
        question, answer = f"How many {target}s are there?", COUNT_WORDS[n]
    else:
        while True:
            shapes, t = _scene_with_unique(rng, target)
            # Side questions need the shape's centre clearly on one side.
            centre = t.cx if kind == "horizontal" else t.cy
            if kind == "colour" or abs(centre - IMAGE_SIZE / 2) >= 5:
                break
        relevant = [t]
        if kind == "colour":
            question, answer = f"What colour is the {target}?", t.colour
        elif kind == "horizontal":
            question = f"Is the {target} left or right?"
            answer = "left" if t.cx < IMAGE_SIZE / 2 else "right"
        else:
            question = f"Is the {target} top or bottom?"
            answer = "top" if t.cy < IMAGE_SIZE / 2 else "bottom"
    image = _render(rng, shapes)
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for s in relevant:
        mask |= _shape_mask(s)
    prompt = f"{BOS}{IMAGE_TOKEN}\nQuestion: {question}\nAnswer:"
    others = [qa for qa in _scene_questions(shapes) if qa[0] != question]
    return Item("shapes", kind, prompt, " " + answer, "image", image, mask, patch_fraction(mask),
                other_questions=others, **_labels(shapes))


def _facts_item(rng: random.Random) -> Item:
    n = rng.randint(2, 4)
    names = rng.sample(NAMES, n)
    cities = rng.sample(CITIES, n)
    asked = rng.randrange(n)
    prompt = BOS
    spans = None
    for i, (name, city) in enumerate(zip(names, cities)):
        # Every sentence, the first included, starts with a space, so each name is the same
        # token (" Tom") as in the question.
        start = len(prompt) + 1
        sentence = f"{name} lives in {city}."
        prompt += " " + sentence
        if i == asked:
            city_start = start + len(sentence) - len(city) - 1
            spans = ((start, start + len(sentence)), (city_start, city_start + len(city)),
                     (start, start + len(name)))
    question = rng.choice(("Where does {} live?", "In which city does {} live?"))
    prompt += f"\nQuestion: {question.format(names[asked])}\nAnswer:"
    others = [(f"Where does {name} live?", " " + city)
              for i, (name, city) in enumerate(zip(names, cities)) if i != asked]
    return Item("facts", "retrieval", prompt, " " + cities[asked], "text",
                sentence_span=spans[0], entity_span=spans[1], subject_span=spans[2],
                other_questions=others)


def _mixed_item(rng: random.Random) -> Item:
    target = rng.choice(SHAPES)
    shapes, t = _scene_with_unique(rng, target)
    image = _render(rng, shapes)
    obj = rng.choice(OBJECTS)
    caption_colour = rng.choice([c for c in COLOURS if c != t.colour])
    caption = f"The {obj} is {caption_colour}."
    head = f"{BOS}{IMAGE_TOKEN}\n"
    caption_question = (f"What colour is the {obj}?", " " + caption_colour)
    image_questions = _scene_questions(shapes, colour_only=True)
    if rng.random() < 0.5:
        prompt = f"{head}{caption}\nQuestion: What colour is the {obj}?\nAnswer:"
        start = len(head)
        colour_start = start + len(caption) - len(caption_colour) - 1
        subject_start = start + len("The ")
        return Item("mixed", "caption", prompt, " " + caption_colour, "text", image,
                    sentence_span=(start, start + len(caption)),
                    entity_span=(colour_start, colour_start + len(caption_colour)),
                    subject_span=(subject_start, subject_start + len(obj)),
                    other_questions=image_questions, **_labels(shapes))
    prompt = f"{head}{caption}\nQuestion: What colour is the {target}?\nAnswer:"
    mask = _shape_mask(t)
    question = f"What colour is the {target}?"
    others = [caption_question] + [qa for qa in image_questions if qa[0] != question]
    return Item("mixed", "image", prompt, " " + t.colour, "image", image, mask,
                patch_fraction(mask), other_questions=others, **_labels(shapes))


_GENERATORS = {"shapes": _shapes_item, "facts": _facts_item, "mixed": _mixed_item}


def generate(task: str, count: int, seed: int) -> list[Item]:
    """`count` items of `task`, a pure function of (task, count, seed); item i does not depend
    on `count`, so a longer list extends a shorter one."""
    if task not in _GENERATORS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    rng = random.Random(f"{task}:{seed}")
    return [_GENERATORS[task](rng) for _ in range(count)]


def stream(seed: int, weights: Optional[dict[str, float]] = None):
    """Endless training stream mixing the tasks (uniformly, or by `weights`), deterministic in
    `seed` and `weights`."""
    rng = random.Random(f"stream:{seed}")
    names = list(TASKS)
    w = [1.0] * len(names) if weights is None else [float(weights.get(t, 0.0)) for t in names]
    while True:
        task = rng.choices(names, weights=w)[0]
        yield _GENERATORS[task](rng)


def corpus_text(seed: int, count: int) -> list[str]:
    """Prompt + answer texts (without special tokens) to train the tokenizer on."""
    texts = []
    for item in _take(stream(seed), count):
        text = item.prompt + item.answer
        for special in SPECIAL_TOKENS:
            text = text.replace(special, "")
        texts.append(text)
    return texts


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]
