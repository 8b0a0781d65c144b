"""Trains the embedded default vision-language model and writes it to models/default/.

The model is a LLaVA-1.5-format checkpoint (transformers `LlavaForConditionalGeneration`): a
small CLIP vision tower, the two-layer projector and a small Llama decoder, with a byte-level
BPE `tokenizer.json` trained here by the `tokenizers` library on the task text. The tasks and
the prompt format are in tasks.py.

Reproducible: everything derives from --seed (tokenizer corpus, initial weights, the training
stream, the held-out sets); deterministic torch kernels are requested and the thread count is
fixed by --threads, so the same seed and thread count give the same weights on the same
machine (see docs/default-model.md for how that was checked).

    nice -n 5 ~/.cache/atman/venv/bin/python tools/default_model/train.py --out models/default
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pathlib
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import tasks  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NUM_IMAGE_TOKENS = tasks.GRID * tasks.GRID  # CLS dropped ("default" feature selection)

TOKENIZER_SEED_OFFSET = 1  # the tokenizer corpus, the training stream and the held-out
HELD_OUT_SEED_OFFSET = 1000  # sets use different seeds derived from --seed


def train_tokenizer(seed: int, vocab_size: int) -> Tokenizer:
    """GPT-2 style byte-level BPE trained on task text; SPECIAL_TOKENS get ids 0..3."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=tasks.SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(tasks.corpus_text(seed + TOKENIZER_SEED_OFFSET, 20000), trainer)
    for i, special in enumerate(tasks.SPECIAL_TOKENS):
        if tok.token_to_id(special) != i:
            raise RuntimeError(f"special token {special} got id {tok.token_to_id(special)}, not {i}")
    for word in tasks.ANSWER_WORDS:
        ids = tok.encode(" " + word).ids
        if len(ids) != 1:
            raise RuntimeError(f"answer ' {word}' is {len(ids)} tokens; raise --vocab-size")
    return tok


def model_config(vocab_size: int, args: argparse.Namespace):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        image_size=tasks.IMAGE_SIZE, patch_size=tasks.PATCH_SIZE, num_channels=3,
        hidden_size=args.vision_hidden, intermediate_size=4 * args.vision_hidden,
        num_hidden_layers=args.vision_layers, num_attention_heads=args.vision_heads,
        hidden_act="quick_gelu", projection_dim=args.vision_hidden)
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=args.text_hidden,
        intermediate_size=2 * args.text_hidden, num_hidden_layers=args.text_layers,
        num_attention_heads=args.text_heads, num_key_value_heads=args.text_kv_heads,
        max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=3,
        image_seq_length=NUM_IMAGE_TOKENS, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def pixel_values(image: np.ndarray) -> torch.Tensor:
    """What CLIPImageProcessor gives for an image already at the model size (resize and crop
    are identities there): rescale to [0, 1], normalise, channels first. tests check this."""
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def encode(tok: Tokenizer, item: tasks.Item) -> tuple[list[int], int, int]:
    """Input ids of prompt + answer + EOS with "<image>" expanded like LlavaProcessor, the
    answer token and the position whose logits must predict it."""
    prompt_ids = []
    for i in tok.encode(item.prompt).ids:
        prompt_ids += [i] * (NUM_IMAGE_TOKENS if i == 3 else 1)
    answer_ids = tok.encode(item.answer).ids
    return prompt_ids + answer_ids + [2], answer_ids[0], len(prompt_ids) - 1


def encode_turns(tok: Tokenizer, item: tasks.Item,
                 extra: list[tuple[str, str]]) -> tuple[list[int], list[int], list[tuple[int, str]]]:
    """Training sequence: the item's prompt and answer, then each extra (question, answer) as
    a further turn "\nQuestion: ...\nAnswer: ...", then EOS. Returns the ids, the positions
    that carry a loss (every answer token and the final EOS; the end of a non-final answer
    carries none, so EOS stays the only thing taught after an answer) and, for each turn, the
    position of its answer token with the question asked."""
    ids, _, last_prompt = encode(tok, item)
    ids = ids[:-1]  # the EOS goes after the last turn
    targets = list(range(last_prompt + 1, len(ids)))
    turns = [(last_prompt + 1, item.prompt.rsplit("Question: ", 1)[1])]
    for question, answer in extra:
        ids += tok.encode(f"\nQuestion: {question}\nAnswer:").ids
        start = len(ids)
        ids += tok.encode(answer).ids
        targets += range(start, len(ids))
        turns.append((start, question))
    ids.append(2)
    targets.append(len(ids) - 1)
    return ids, targets, turns


def evidence_positions(item: tasks.Item, ids: list[int], answer_at: int, question: str,
                       question_id: int) -> list[int]:
    """Where the answer to `question` lies in the sequence `ids`: for a question about a shape
    kind, the image tokens of the patches showing shapes of that kind; otherwise (facts, the
    caption) the context token that is the answer word (cities are distinct, and a question
    never contains its text answer). Used by the attention supervision."""
    for k, kind in enumerate(tasks.SHAPES):
        if kind in question:
            image = [p for p, i in enumerate(ids) if i == 3]
            under = item.patch_shape.reshape(-1)
            return [p for p, label in zip(image, under) if label == 1 + k]
    context_end = ids.index(3) + NUM_IMAGE_TOKENS if 3 in ids else 0
    question_start = len(ids)
    # The context ends at the first "Question"; answers of earlier turns never count.
    for p in range(context_end, len(ids) - 1):
        if ids[p] == question_id:
            question_start = p
            break
    return [p for p in range(question_start) if ids[p] == ids[answer_at]]


def answer_kind(answer: str) -> str:
    """The question kind (tasks.Item.kind's names) an answer word belongs to."""
    word = answer.strip()
    if word in ("left", "right"):
        return "horizontal"
    if word in ("top", "bottom"):
        return "vertical"
    if word in tasks.COUNT_WORDS.values():
        return "count"
    return "colour" if word in tasks.COLOURS else "retrieval"


def further_turns(rng: random.Random, item: tasks.Item, count: int,
                  kind_weights: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """`count` further (question, answer) turns about the item's context, drawn with
    replacement from every question it answers (its own included), each with the weight of
    its kind (`kind_weights`, default 1). Drawing only the other questions without
    replacement taught elimination ("the city not yet named") instead of retrieval: with two
    facts the second answer follows from the first."""
    own = item.prompt.rsplit("Question: ", 1)[1].removesuffix("\nAnswer:")
    pool = [(own, item.answer)] + item.other_questions
    if not kind_weights:
        return [rng.choice(pool) for _ in range(count)]
    weights = [kind_weights.get(answer_kind(a), 1.0) for _, a in pool]
    return rng.choices(pool, weights=weights, k=count)


# Attention routes the supervision teaches (see docs/default-model.md): "answer", at the
# position predicting an answer, to the answer's evidence (the city, the caption colour, the
# asked shape's patches); "asked", at that same position, to the question's subject word (the
# name, shape or object asked about, wherever the question template puts it); and for facts
# "subject", at each city, to the name of its sentence. "asked" and "subject" are the lookup's
# first hop: the answer head then matches the asked subject against each candidate's.


def subject_ids(tok: Tokenizer) -> set[int]:
    """Token ids of every word a question can ask about (each one token, with its space)."""
    words = (list(tasks.NAMES) + list(tasks.SHAPES) + [k + "s" for k in tasks.SHAPES]
             + list(tasks.OBJECTS))
    ids = set()
    for word in words:
        encoded = tok.encode(" " + word).ids
        if len(encoded) != 1:
            raise RuntimeError(f"subject ' {word}' is {len(encoded)} tokens")
        ids.add(encoded[0])
    return ids


def fact_subjects(tok: Tokenizer, ids: list[int]) -> list[tuple[str, int, list[int]]]:
    """The facts' "subject" routes: each city (the token after " lives in") to its name."""
    lives, in_ = tok.token_to_id("\u0120lives"), tok.token_to_id("\u0120in")
    first_question = ids.index(tok.token_to_id("Question"))
    return [("subject", p, [p - 3]) for p in range(3, first_question)
            if ids[p - 2] == lives and ids[p - 1] == in_]


def collate(tok: Tokenizer, items: list[tasks.Item],
            extras: list[list[tuple[str, str]]] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels only on answer tokens and the final EOS. Also returns the
    attention routes to supervise: (route, row, query position, key positions)."""
    extras = extras or [[] for _ in items]
    encoded = [encode_turns(tok, it, ex) for it, ex in zip(items, extras)]
    width = max(len(ids) for ids, _, _ in encoded)
    input_ids = torch.zeros(len(items), width, dtype=torch.long)
    attention = torch.zeros(len(items), width, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    routes = []
    question_id = tok.token_to_id("Question")
    subjects = subject_ids(tok)
    for row, (ids, targets, turns) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        # transformers shifts labels: labels[t] is predicted from position t - 1.
        labels[row, targets] = input_ids[row, targets]
        for answer_at, question in turns:
            where = evidence_positions(items[row], ids, answer_at, question, question_id)
            if not where:
                continue
            routes.append(("answer", row, answer_at - 1, where))
            start = max(p for p in range(answer_at) if ids[p] == question_id)
            asked = [p for p in range(start, answer_at) if ids[p] in subjects]
            if asked:
                routes.append(("asked", row, answer_at - 1, asked))
        if items[row].task == "facts":
            routes += [(route, row, q, k) for route, q, k in fact_subjects(tok, ids)]
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    images = [pixel_values(it.image) for it in items if it.image is not None]
    if images:
        batch["pixel_values"] = torch.stack(images)
    return batch, routes


@torch.no_grad()
def accuracy(model, tok: Tokenizer, items: list[tasks.Item], batch_size: int = 64,
             by_kind: dict | None = None) -> float:
    """Fraction of items whose greedy continuation is exactly answer + EOS. Answers are one
    token, so greedy decoding is right iff the argmax at the last prompt position is the answer
    and the argmax after the answer is EOS; one teacher-forced pass checks both. `by_kind`,
    when given, receives each question kind's accuracy."""
    model.eval()
    right = 0
    kinds: dict[str, list[int]] = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch, _ = collate(tok, chunk)
        labels = batch.pop("labels")
        logits = model(**batch).logits
        predicted = logits[:, :-1].argmax(-1)
        target = labels[:, 1:]
        ok = ((predicted == target) | (target == -100)).all(dim=1)
        right += int(ok.sum())
        for item, good in zip(chunk, ok.tolist()):
            kinds.setdefault(item.kind, []).append(int(good))
    model.train()
    if by_kind is not None:
        by_kind.update({k: round(sum(v) / len(v), 3) for k, v in sorted(kinds.items())})
    return right / len(items)


class PatchProbe(torch.nn.Module):
    """Training-only auxiliary heads on the vision features the projector receives: predict,
    for each patch, the shape kind, colour and same-kind count under it (tasks.Item
    patch_shape / patch_colour / patch_count, and the cell column and row). They give the
    vision tower a direct signal for binding a shape's kind to its colour and place; they are
    not part of the saved model."""

    def __init__(self, width: int):
        super().__init__()
        self.shape = torch.nn.Linear(width, 1 + len(tasks.SHAPES))
        self.colour = torch.nn.Linear(width, 1 + len(tasks.COLOURS))
        self.count = torch.nn.Linear(width, 1 + max(tasks.COUNT_WORDS))
        self.column = torch.nn.Linear(width, tasks.CELLS)
        self.row = torch.nn.Linear(width, tasks.CELLS)

    def loss(self, features: torch.Tensor, items: list[tasks.Item]) -> torch.Tensor:
        with_image = [it for it in items if it.image is not None]
        labels = {name: torch.stack([torch.from_numpy(getattr(it, "patch_" + name)).reshape(-1)
                                     for it in with_image])
                  for name in ("shape", "colour", "count")}
        cell = torch.arange(tasks.GRID) // (tasks.CELL // tasks.PATCH_SIZE)
        labels["column"] = cell.repeat(tasks.GRID).expand(len(with_image), -1)
        labels["row"] = cell.repeat_interleave(tasks.GRID).expand(len(with_image), -1)
        total = 0.0
        for name in ("shape", "colour", "count", "column", "row"):
            head = getattr(self, name)
            logits = head(features)
            total = total + torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels[name].reshape(-1))
        return total


def attention_supervision_loss(attention: dict[str, torch.Tensor],
                               routes: list[tuple[str, int, int, list[int]]]) -> torch.Tensor:
    """Mean over routes (and over a route's heads) of -log(attention mass that the head, at
    the query position, puts on the key positions). attention: route -> weights [B, h, T, T]."""
    terms = []
    for route, row, query, keys in routes:
        mass = attention[route][row][:, query][:, keys].sum(-1)  # [h]
        terms.append(-torch.log(mass + 1e-6).mean())
    return torch.stack(terms).mean()


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def save(out: pathlib.Path, model, tok: Tokenizer, report: dict) -> None:
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=tasks.BOS, eos_token=tasks.EOS, pad_token=tasks.PAD,
        unk_token=None, model_max_length=256, padding_side="left")
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": tasks.IMAGE_SIZE},
        crop_size={"height": tasks.IMAGE_SIZE, "width": tasks.IMAGE_SIZE},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=hf_tok, patch_size=tasks.PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        image_token=tasks.IMAGE_TOKEN)
    processor.save_pretrained(out)
    # Also the classic standalone file, which readers that do not parse processor_config.json
    # (our C++ runtime) look for.
    image_processor.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--extra-turns", type=int, default=3,
                        help="further questions about the same context per training sequence")
    parser.add_argument("--aux-weight", type=float, default=1.0,
                        help="weight of the per-patch auxiliary loss on the vision features")
    parser.add_argument("--attn-weight", type=float, default=1.0,
                        help="weight of the attention supervision loss (0: off)")
    parser.add_argument("--attn-steps", type=int, default=None,
                        help="supervise attention during the first this many steps only "
                             "(default: every step)")
    parser.add_argument("--attn-layer", type=int, default=1,
                        help="decoder layer whose head --attn-head is supervised")
    parser.add_argument("--attn-head", type=int, default=0,
                        help="first supervised head of the answer route")
    parser.add_argument("--answer-heads", type=int, default=2,
                        help="heads of --attn-layer taught the answer route (from --attn-head)")
    parser.add_argument("--aux-at", choices=("tower", "embeddings"), default="embeddings",
                        help="the per-patch probe reads the tower features or the projected ones")
    parser.add_argument("--turn-weights", default="",
                        help="further turns' weight by question kind, e.g. horizontal=3 (default 1)")
    parser.add_argument("--task-weights", default="shapes=1,facts=1,mixed=1",
                        help="relative frequency of each task in the training stream")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--vision-hidden", type=int, default=96)
    parser.add_argument("--vision-layers", type=int, default=3)
    parser.add_argument("--vision-heads", type=int, default=4)
    parser.add_argument("--text-hidden", type=int, default=192)
    parser.add_argument("--text-layers", type=int, default=3)
    parser.add_argument("--text-heads", type=int, default=6)
    parser.add_argument("--text-kv-heads", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; part of what fixes the result")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-count", type=int, default=300, help="held-out items per task")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    from transformers import LlavaForConditionalGeneration

    started = time.monotonic()
    tok = train_tokenizer(args.seed, args.vocab_size)
    config = model_config(tok.get_vocab_size(), args)
    torch.manual_seed(args.seed)
    model = LlavaForConditionalGeneration(config)
    model.train()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"vocab {tok.get_vocab_size()}, parameters {parameters}", flush=True)

    weights = {k: float(v) for k, v in (kv.split("=") for kv in args.task_weights.split(","))}
    # Held-out sets of the tasks in the stream (all three in the default recipe).
    held_out = {t: tasks.generate(t, args.eval_count, args.seed + HELD_OUT_SEED_OFFSET)
                for t in tasks.TASKS if weights.get(t, 0.0) > 0}
    # The probe reads the projector's input (the tower's features) or its output (the image
    # tokens' input embeddings, what the decoder sees).
    on_embeddings = args.aux_at == "embeddings"
    probe = PatchProbe(config.text_config.hidden_size if on_embeddings
                       else config.vision_config.hidden_size)
    captured = {}
    projector = model.model.multi_modal_projector
    hook = projector.register_forward_hook(
        lambda module, inputs, output: captured.__setitem__(
            "features", output if on_embeddings else inputs[0]))
    # Attention supervision (training only, the first --attn-steps steps): the eager path
    # returns attention weights; a hook keeps those of the supervised decoder layer.
    if args.attn_weight > 0:
        model.set_attn_implementation("eager")
    layers = model.model.language_model.layers
    answer_layer = len(layers) + args.attn_layer if args.attn_layer < 0 else args.attn_layer
    # route -> (layer, heads); a route with several heads supervises each of them.
    heads = {"answer": (answer_layer, list(range(args.attn_head, args.attn_head + args.answer_heads))),
             "subject": (0, [1]), "asked": (0, [2])}

    def keep_attention(layer):
        def hook(module, inputs, output):
            if captured.get("want_attention"):
                for route, (l, h) in heads.items():
                    if l == layer:
                        captured.setdefault("attention", {})[route] = output[1][:, h]  # [B,h,T,T]
        return hook

    attention_hooks = [layers[l].self_attn.register_forward_hook(keep_attention(l))
                       for l in sorted({l for l, _ in heads.values()})]
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(probe.parameters()),
                                  lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    stream = tasks.stream(args.seed, weights)
    turn_weights = ({k: float(v) for k, v in (kv.split("=") for kv in args.turn_weights.split(","))}
                    if args.turn_weights else {})
    turns_rng = random.Random(f"turns:{args.seed}")
    history = []
    for step in range(1, args.steps + 1):
        items = [next(stream) for _ in range(args.batch_size)]
        extras = [further_turns(turns_rng, it, args.extra_turns, turn_weights) for it in items]
        batch, routes = collate(tok, items, extras)
        captured.clear()
        supervise = args.attn_weight > 0 and (args.attn_steps is None or step <= args.attn_steps)
        captured["want_attention"] = supervise
        loss = model(**batch).loss
        aux = torch.zeros(())
        if args.aux_weight > 0 and "features" in captured:
            aux = probe.loss(captured["features"], items)
        attn = torch.zeros(())
        if supervise and routes:
            attn = attention_supervision_loss(captured["attention"], routes)
        optimizer.zero_grad(set_to_none=True)
        (loss + args.aux_weight * aux + args.attn_weight * attn).backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(probe.parameters()), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} aux {aux.item():.4f} "
                  f"attn {attn.item():.4f} "
                  f"elapsed {time.monotonic() - started:.0f}s", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            kinds: dict = {}
            acc = {t: accuracy(model, tok, items, by_kind=kinds.setdefault(t, {}))
                   for t, items in held_out.items()}
            history.append({"step": step, "accuracy": acc, "by_kind": kinds,
                            "elapsed_s": round(time.monotonic() - started, 1)})
            print(f"step {step} held-out accuracy {acc} by kind {kinds}", flush=True)

    hook.remove()
    for h in attention_hooks:
        h.remove()
    model.set_attn_implementation("sdpa")
    elapsed = time.monotonic() - started
    report = {
        # The recipe; not --out (where it was written is no part of it, and a path of the
        # training machine has no place in a shipped file).
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "seed": args.seed, "steps": args.steps, "extra_turns": args.extra_turns,
        "batch_size": args.batch_size, "lr": args.lr,
        "threads": args.threads, "parameters": parameters, "vocab_size": tok.get_vocab_size(),
        "train_seconds": round(elapsed, 1), "held_out_per_task": args.eval_count,
        "held_out_seed": args.seed + HELD_OUT_SEED_OFFSET,
        "accuracy": history[-1]["accuracy"], "history": history,
        "weights_sha256": weights_digest(model),
        "torch": torch.__version__,
    }
    save(args.out, model, tok, report)
    print(json.dumps({k: report[k] for k in ("train_seconds", "accuracy", "weights_sha256")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
