"""Writes random-initialised decoder models with transformers, and their expected outputs.

For every family and switch core/model supports, one small model (seed 0, initializer_range
0.2 so that attention is far from uniform) is saved with save_pretrained in <out>/<name>/,
with:

  cases.safetensors  inputs and expected float32 logits, computed by transformers itself
  cases.json         the case list: what each tensor means, the attention controls

Cases (sequence length T = 9 unless said):
  padded    3 rows, left padding of 0, 3 and 1 tokens; position ids cumsum(mask) - 1 as in
            generate(). transformers' eager attention. Logits [3, T, V].
  cached    3 rows of 10 tokens sharing their first 6. Full-pass logits [3, 10, V]: the C++
            test runs the prefix once (batch 1) and continues the rows from the cache.
  control/* the padded inputs with AtMan controls, through a custom attention function
            registered with transformers' AttentionInterface ("atman"), which applies the
            manipulation of docs/method.md to the scaled scores of the selected layers before
            the mask. A query whose every visible key is removed gets a zero attention output,
            as in core/model/attention.h.
  cached_control/*  the cached rows with controls on positions >= 6.
  lengths   (longrope and dynamic models) 4 rows of 3, 5, 6 and 9 tokens around original_max_
            position_embeddings = 5 (longrope), of 3, 10, 12 and 14 around max_position_
            embeddings = 10 (dynamic), each run alone (batch 1) so that transformers picks the
            frequencies by that row's length; stored left-padded. The C++ test runs them as one
            batch: the choice is per row (docs/model.md, "LongRoPE", "Dynamic NTK").

<out>/broken-missing/ and <out>/broken-shape/ are the llama checkpoint with one tensor removed
and one tensor of the wrong shape; <out>/broken-gemma2-missing/ the gemma2 checkpoint without
layer 1's post_feedforward_layernorm (a sandwich norm).
"""
import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (AttentionInterface, Gemma2Config, Gemma2ForCausalLM, GemmaConfig,
                          GemmaForCausalLM, GPT2Config, GraniteConfig, GraniteForCausalLM,
                          GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, Phi3Config,
                          Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM, SmolLM3Config, SmolLM3ForCausalLM,
                          StableLmConfig, StableLmForCausalLM, Starcoder2Config,
                          Starcoder2ForCausalLM)
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from common import seed_everything, write_json

VOCAB = 97
INIT = 0.2
LONGROPE_ORIGINAL = 5
LONGROPE_LENGTHS = (3, 5, 6, 9)
DYNAMIC_MAX = 10
DYNAMIC_LENGTHS = (3, 10, 12, 14)

# name -> (model class, config)
def model_specs():
    common = dict(vocab_size=VOCAB, num_hidden_layers=2, initializer_range=INIT,
                  max_position_embeddings=128)
    return {
        # grouped-query attention, llama3 rope scaling (all three frequency bands with
        # head_dim 8: wavelengths 6.3 < 16 < 63 < 64 < 628), untied embeddings
        "llama": (LlamaForCausalLM, LlamaConfig(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            rope_theta=10000.0, tie_word_embeddings=False,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
            **common)),
        # linear rope scaling, another theta, explicit head_dim != hidden / heads, tied
        # embeddings, attention and MLP biases
        "llama-linear": (LlamaForCausalLM, LlamaConfig(
            hidden_size=32, intermediate_size=40, num_attention_heads=4, num_key_value_heads=4,
            head_dim=16, rope_theta=500.0, tie_word_embeddings=True, attention_bias=True,
            mlp_bias=True, rope_scaling={"rope_type": "linear", "factor": 2.0}, **common)),
        # sliding window of 4 keys, 4 query heads on 1 key head
        "mistral": (MistralForCausalLM, MistralConfig(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=1,
            head_dim=8, sliding_window=4, tie_word_embeddings=False, **common)),
        # q/k/v bias (no o bias), tied embeddings, rope_theta 1e6
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            rope_theta=1e6, tie_word_embeddings=True, **common)),
        # Qwen3: per-head q/k RMSNorm (weights randomised, see RANDOM_NORMS) before the
        # rotary positions, head_dim 12 != hidden / heads, q/k/v/o biases, a sliding window
        # of 4 keys on layer 1 only (layer_types), tied embeddings
        "qwen3": (Qwen3ForCausalLM, Qwen3Config(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            head_dim=12, attention_bias=True, tie_word_embeddings=True, use_sliding_window=True,
            sliding_window=4, max_window_layers=1, rope_parameters={"rope_type": "default",
                                                                     "rope_theta": 1e6},
            **common)),
        # Granite: Llama's block with multipliers in Granite-3.0's places (embeddings x 12,
        # each branch x 0.5 before the residual, attention scale 0.25 instead of 1/sqrt(8),
        # logits / 2; milder than Granite's 0.22, 1/64 and 8 so that the controls still move
        # the logits), attention and MLP biases
        "granite": (GraniteForCausalLM, GraniteConfig(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            embedding_multiplier=12.0, residual_multiplier=0.5, attention_multiplier=0.25,
            logits_scaling=2.0, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
            **common)),
        # SmolLM3: NoPE layers; 3 layers with no_rope_layer_interval 2 give rope, NoPE, rope
        # (config.json then lists no_rope_layers), tied embeddings by default
        "smollm3": (SmolLM3ForCausalLM, SmolLM3Config(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            no_rope_layer_interval=2, vocab_size=VOCAB, num_hidden_layers=3,
            initializer_range=INIT, max_position_embeddings=128, pad_token_id=0,
            bos_token_id=1, eos_token_id=2)),
        # StarCoder2: LayerNorm with bias, q/k/v/o and MLP biases (use_bias), a plain
        # c_fc -> gelu_pytorch_tanh -> c_proj MLP, a sliding window of 5 keys on every layer,
        # tied embeddings
        "starcoder2": (Starcoder2ForCausalLM, Starcoder2Config(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            sliding_window=5, use_bias=True, tie_word_embeddings=True, **common)),
        # StableLM: LayerNorm with bias, partial rotary (the default 0.25: 2 of 8 dims),
        # q/k/v biases, sequential residual, untied; "stablelm-parallel": the parallel
        # residual (one input_layernorm for both branches), 4 of 8 rotary dims, tied
        "stablelm": (StableLmForCausalLM, StableLmConfig(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            use_qkv_bias=True, tie_word_embeddings=False, **common)),
        "stablelm-parallel": (StableLmForCausalLM, StableLmConfig(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=4,
            use_parallel_residual=True, partial_rotary_factor=0.5, tie_word_embeddings=True,
            **common)),
        "gpt2": (GPT2LMHeadModel, GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
            initializer_range=INIT, bos_token_id=0, eos_token_id=0)),
        # partial rotary (head_dim 16, 8 rotary dims), parallel residual
        "gpt_neox": (GPTNeoXForCausalLM, GPTNeoXConfig(
            hidden_size=64, intermediate_size=96, num_attention_heads=4, rotary_pct=0.5,
            use_parallel_residual=True, **common)),
        # sequential residual, 4 rotary dims, tied embeddings
        "gpt_neox-sequential": (GPTNeoXForCausalLM, GPTNeoXConfig(
            hidden_size=64, intermediate_size=96, num_attention_heads=4, rotary_pct=0.25,
            use_parallel_residual=False, tie_word_embeddings=True, **common)),
        # Gemma 1: (1 + w) RMSNorm (norm weights randomised, see RANDOM_NORMS), embeddings
        # scaled by sqrt(hidden), Llama's block otherwise; hidden_act "gelu" as the official
        # releases spell the tanh approximation; multi-query attention with head_dim 16 !=
        # hidden / heads, attention biases, tied embeddings
        "gemma": (GemmaForCausalLM, GemmaConfig(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=1,
            head_dim=16, hidden_act="gelu", attention_bias=True, tie_word_embeddings=True,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, **common)),
        # Gemma-2: (1 + w) RMSNorm (norm weights randomised, see RANDOM_NORMS), embeddings
        # scaled by sqrt(hidden), sandwich norms, query_pre_attn_scalar 24 != head_dim 16,
        # attention and final logit soft-caps small enough to bite, sliding window of 4 keys
        # on layer 0 (layer_types' default: even layers slide), gelu_pytorch_tanh, tied
        # embeddings.
        "gemma2": (Gemma2ForCausalLM, Gemma2Config(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0, sliding_window=4, tie_word_embeddings=True,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, **common)),
        # fused qkv_proj (4 query heads on 2 key heads) and gate_up_proj, default rope with
        # partial rotary (4 of 8 dims), sliding window of 5 keys, tied embeddings
        "phi3": (Phi3ForCausalLM, Phi3Config(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            partial_rotary_factor=0.5, sliding_window=5, tie_word_embeddings=True,
            pad_token_id=0, bos_token_id=0, eos_token_id=0, **common)),
        # LongRoPE: original_max_position_embeddings 5, below every padded and cached row
        # (long factors there; the "lengths" case has rows on both sides); attention_factor
        # from factor = 128 / 5
        "phi3-longrope": (Phi3ForCausalLM, Phi3Config(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            original_max_position_embeddings=LONGROPE_ORIGINAL, tie_word_embeddings=False,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                             "short_factor": [1.0, 1.3, 1.9, 2.7],
                             "long_factor": [2.0, 3.5, 6.0, 11.0]},
            pad_token_id=0, bos_token_id=0, eos_token_id=0, **common)),
        # YaRN as Qwen's long-context configs set it: factor 4 over a pretraining length of
        # 32, theta 500 and head_dim 16, so that the ramp between extrapolated and
        # interpolated frequencies spans several dims (correction range [0, 3]); attention
        # factor 0.1 ln 4 + 1 on cos and sin
        "qwen2-yarn": (Qwen2ForCausalLM, Qwen2Config(
            hidden_size=64, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "yarn", "rope_theta": 500.0, "factor": 4.0,
                             "original_max_position_embeddings": 32}, **common)),
        # YaRN with every optional switch: DeepSeek's mscale / mscale_all_dim attention
        # factor, beta_fast / beta_slow, truncate off (a fractional correction range)
        "llama-yarn": (LlamaForCausalLM, LlamaConfig(
            hidden_size=32, intermediate_size=48, num_attention_heads=2, num_key_value_heads=1,
            head_dim=16, tie_word_embeddings=True,
            rope_parameters={"rope_type": "yarn", "rope_theta": 1000.0, "factor": 3.0,
                             "original_max_position_embeddings": 16, "beta_fast": 8.0,
                             "beta_slow": 2.0, "mscale": 0.707, "mscale_all_dim": 1.0,
                             "truncate": False}, **common)),
        # Dynamic NTK scaling beyond max_position_embeddings = 10: the padded and cached rows
        # (9 and 10 tokens) stay within it; the "lengths" case has rows on both sides
        "llama-dynamic": (LlamaForCausalLM, LlamaConfig(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=False, vocab_size=VOCAB, num_hidden_layers=2,
            initializer_range=INIT, max_position_embeddings=DYNAMIC_MAX,
            rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})),
    }


# Gemma initialises its RMSNorm weights to 0 (a scale of 1 + 0), Qwen3 its q/k norms to 1:
# randomised so that the scales are exercised.
RANDOM_NORMS = {"gemma", "gemma2", "qwen3"}


def randomise_norms(model) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.5)


# ---- The AtMan attention of the oracle: transformers' eager attention plus the manipulation.
# {"mode", "layers" (None: all), "factors" [B, S] float32, "before_cap" (optional, default
# False: the manipulation of a soft-capped model applies to the capped scores)}
CONTROL = None


def atman_attention(module, query, key, value, attention_mask, scaling, dropout=0.0,
                    softcap=None, **kwargs):
    # query [B, Hq, Tq, D]; key, value [B, Hkv, S, D]; attention_mask [B, 1, Tq, S] float
    # (0 where visible, dtype min elsewhere; eager_mask). softcap: Gemma-2's attention logit
    # soft-cap, cap * tanh(s / cap), as transformers' eager attention applies it (after the
    # scaling, before the mask).
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    S = key.shape[2]
    visible = attention_mask[:, :, :, :S] == 0
    c = CONTROL
    before_cap = c is not None and c.get("before_cap", False)
    if softcap is not None and not before_cap:
        scores = torch.tanh(scores / softcap) * softcap
    if c is not None and (c["layers"] is None or module.layer_idx in c["layers"]):
        f = c["factors"][:, None, None, :S].to(scores.dtype)
        if c["mode"] == "log_additive":
            scores = scores + torch.log(f)
        else:
            lowest = scores.masked_fill(~visible, float("inf")).amin(-1, keepdim=True)
            scores = (scores - lowest) * f
    if softcap is not None and before_cap:
        scores = torch.tanh(scores / softcap) * softcap  # the alternative order (self-check only)
    scores = scores.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    dead = ~torch.isfinite(scores).any(-1, keepdim=True)
    weights = weights.masked_fill(dead, 0.0)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


AttentionInterface.register("atman", atman_attention)
AttentionMaskInterface.register("atman", eager_mask)


def padded_inputs(g):
    T = 9
    ids = torch.randint(1, VOCAB, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :1] = 0
    ids[mask == 0] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def cached_inputs(g):
    prefix = torch.randint(1, VOCAB, (1, 6), generator=g)
    rest = torch.randint(1, VOCAB, (3, 4), generator=g)
    return torch.cat([prefix.expand(3, 6), rest], dim=1)


CONTROLS = [
    # name, mode, layers, per-row [(position, factor)]
    ("log_additive", "log_additive", None, [[(2, 0.0), (3, 0.1)], [(5, 0.1), (6, 2.0)], [(1, 2.0), (4, 0.0)]]),
    ("multiplicative", "multiplicative", None, [[(2, 0.0), (3, 0.1)], [(5, 0.1), (6, 2.0)], [(1, 2.0), (4, 0.0)]]),
    ("log_additive-layer1", "log_additive", [1], [[(2, 0.1)], [(4, 0.0)], [(3, 2.0), (5, 0.1)]]),
    ("multiplicative-layer0", "multiplicative", [0], [[(2, 0.1)], [(4, 0.0)], [(3, 2.0), (5, 0.1)]]),
    # Every visible key of a query removed: row 0's query 0 sees only key 0; row 1's first
    # real token (index 3) sees only itself.
    ("all-removed", "log_additive", None, [[(0, 0.0)], [(3, 0.0), (4, 0.0)], []]),
]
CACHED_CONTROLS = [
    ("log_additive", "log_additive", None, [[(7, 0.0)], [(6, 0.1), (8, 2.0)], [(9, 0.0)]]),
    ("multiplicative", "multiplicative", [1], [[(7, 0.0)], [(6, 0.1), (8, 2.0)], [(9, 0.1)]]),
]


def dense_factors(rows, S):
    f = torch.ones(len(rows), S)
    for b, row in enumerate(rows):
        for pos, factor in row:
            f[b, pos] = factor
    return f


@torch.no_grad()
def make_cases(model, g):
    global CONTROL
    tensors, cases = {}, []
    ids, mask, positions = padded_inputs(g)
    model.set_attn_implementation("eager")
    tensors["padded.ids"], tensors["padded.mask"], tensors["padded.positions"] = ids, mask, positions
    tensors["padded.logits"] = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    cases.append({"name": "padded", "inputs": "padded"})

    full = cached_inputs(g)
    tensors["cached.ids"] = full
    tensors["cached.logits"] = model(input_ids=full).logits
    cases.append({"name": "cached", "inputs": "cached"})

    model.set_attn_implementation("atman")
    # Self-check: without controls the oracle's attention is transformers' eager attention.
    plain = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert torch.allclose(plain[real], tensors["padded.logits"][real], atol=1e-5), "atman != eager"
    for inputs, specs in (("padded", CONTROLS), ("cached", CACHED_CONTROLS)):
        for name, mode, layers, rows in specs:
            S = tensors[f"{inputs}.ids"].shape[1]
            CONTROL = {"mode": mode, "layers": layers, "factors": dense_factors(rows, S)}
            kwargs = {"input_ids": tensors[f"{inputs}.ids"]}
            if inputs == "padded":
                kwargs.update(attention_mask=mask, position_ids=positions)
            key = f"{inputs}_control.{name}"
            tensors[f"{key}.logits"] = model(**kwargs).logits
            # The controls must matter, or the parity test could not fail.
            assert (tensors[f"{key}.logits"] - tensors[f"{inputs}.logits"]).abs().max() > 1e-2, key
            if getattr(model.config, "attn_logit_softcapping", None) is not None:
                # Soft-capped attention: the other order (controls before the cap) must give
                # other logits, or the parity test could not tell the orders apart.
                CONTROL = dict(CONTROL, before_cap=True)
                other = model(**kwargs).logits
                gap = (other - tensors[f"{key}.logits"]).abs().max()
                assert gap > 1e-2, (key, "cap order", float(gap))
            cases.append({"name": key, "inputs": inputs, "mode": mode, "layers": layers,
                          "rows": [[[p, f] for p, f in row] for row in rows]})
            CONTROL = None
    model.set_attn_implementation("eager")
    rope_type = (getattr(model.config, "rope_parameters", None) or {}).get("rope_type")
    if rope_type == "longrope":
        lengths_case(model, g, tensors, cases, LONGROPE_LENGTHS, LONGROPE_ORIGINAL)
    elif rope_type == "dynamic":
        lengths_case(model, g, tensors, cases, DYNAMIC_LENGTHS, DYNAMIC_MAX)
    return {k: v.contiguous() for k, v in tensors.items()}, cases


def lengths_case(model, g, tensors, cases, lengths, original):
    """Rows of `lengths` tokens around `original`, each run alone (in increasing length, so
    that transformers' dynamic rotary, which keeps the largest length it has seen, computes
    each as a fresh model would), stored left-padded."""
    T = max(lengths)
    B = len(lengths)
    ids = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    logits = torch.zeros(B, T, VOCAB)
    for b, n in enumerate(lengths):
        ids[b, T - n:] = torch.randint(1, VOCAB, (n,), generator=g)
        mask[b, T - n:] = 1
        # Alone: transformers picks its frequencies by this row's length (longrope: short
        # factors up to `original`, long beyond; dynamic: theta up to `original`, grown from
        # the length beyond).
        logits[b, T - n:] = model(input_ids=ids[b:b + 1, T - n:]).logits[0]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # One batch in transformers takes the longest row's length for every row: the other rows
    # would then differ, so the C++ test (one batch) can tell a per-batch choice from ours.
    batched = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    longrope = model.config.rope_parameters["rope_type"] == "longrope"
    for b, n in enumerate(lengths):
        gap = (batched[b, T - n:] - logits[b, T - n:]).abs().max()
        assert (gap > 1e-2) == (n <= original if longrope else n < T), (n, gap)
    tensors["lengths.ids"], tensors["lengths.mask"] = ids, mask
    tensors["lengths.positions"], tensors["lengths.logits"] = positions, logits
    cases.append({"name": "lengths", "inputs": "lengths", "lengths": list(lengths),
                  "original_max_position_embeddings": original})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    for name, (cls, config) in model_specs().items():
        seed_everything(0)
        model = cls(config).eval()
        if name in RANDOM_NORMS:
            randomise_norms(model)
        folder = args.out / name
        model.save_pretrained(folder)
        if name == "gemma":
            # As the official Gemma releases ship it: "gelu", which GemmaConfig reads as the
            # tanh approximation the model above ran with.
            saved = json.loads((folder / "config.json").read_text())
            saved["hidden_act"] = "gelu"
            write_json(folder / "config.json", saved)
        g = torch.Generator().manual_seed(1)
        tensors, cases = make_cases(model, g)
        save_file(tensors, str(folder / "cases.safetensors"))
        write_json(folder / "cases.json", {"cases": cases, "model_type": config.model_type})

    # Broken checkpoints for the error tests.
    llama = load_file(str(args.out / "llama" / "model.safetensors"))
    config = (args.out / "llama" / "config.json").read_text()
    missing = dict(llama)
    del missing["model.layers.1.mlp.up_proj.weight"]
    shape = dict(llama)
    shape["model.layers.0.self_attn.o_proj.weight"] = shape["model.layers.0.self_attn.o_proj.weight"][:, :24].contiguous()
    gemma2 = load_file(str(args.out / "gemma2" / "model.safetensors"))
    del gemma2["model.layers.1.post_feedforward_layernorm.weight"]
    gemma2_config = (args.out / "gemma2" / "config.json").read_text()
    for folder, tensors, text in (("broken-missing", missing, config),
                                  ("broken-shape", shape, config),
                                  ("broken-gemma2-missing", gemma2, gemma2_config)):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(args.out / folder / "model.safetensors"), metadata={"format": "pt"})
        (args.out / folder / "config.json").write_text(text)


if __name__ == "__main__":
    main()
