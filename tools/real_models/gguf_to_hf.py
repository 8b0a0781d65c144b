"""Writes a GGUF checkpoint as a Hugging Face folder (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json) with transformers' own GGUF loader.

Offline tool; scripts/setup.sh runs it once for SmolLM2 so that the same real weights can be
served through both of our loaders (GGUF and Hugging Face) and compared. Weights are written
in float32 (the GGUF's dequantised values, exactly).

    python tools/real_models/gguf_to_hf.py FILE.gguf OUT_DIR
"""

import argparse
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", help="the .gguf file")
    parser.add_argument("out", help="the folder to write (made; must not exist)")
    args = parser.parse_args()
    folder, name = os.path.split(os.path.abspath(args.gguf))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The loader marks the model as GGUF-quantized (not serialisable); the weights it holds
    # are already dequantised float32, so copy them into a plain model of the same config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config).to(torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    tmp = args.out + ".part"
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
