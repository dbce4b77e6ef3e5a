"""The validation loss of a genzoo GPT's weights run by nanoGPT's own model.

    python scripts/nanogpt_val_loss.py WEIGHTS.safetensors TEXT NANOGPT_DIR [WINDOWS]

WEIGHTS comes from `genzoo export weights --run RUN --out WEIGHTS`, TEXT is
the run's text file, NANOGPT_DIR a checkout of karpathy/nanoGPT (its
model.py is imported). The loss is computed as `genzoo eval --run RUN`
computes it: over the last 10 % of the text, in consecutive windows of the
context that overlap by one token, every token predicted once. Prints the
loss in nats per token. Needs torch and numpy (Python 3.11+ for tomllib).
"""

import json
import math
import sys
import tomllib

import numpy as np
import torch


def read_safetensors(path):
    """Tensors and metadata of a safetensors file (f32 only, as genzoo writes)."""
    with open(path, "rb") as f:
        raw = f.read()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    metadata = header.pop("__metadata__", {})
    body = raw[8 + size :]
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", f"{name}: {info['dtype']}"
        start, end = info["data_offsets"]
        values = np.frombuffer(body[start:end], dtype="<f4").reshape(info["shape"])
        tensors[name] = torch.from_numpy(values.copy())
    return tensors, metadata


def main():
    weights, text_path, nanogpt_dir = sys.argv[1:4]
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    sys.path.insert(0, nanogpt_dir)
    from model import GPT, GPTConfig  # nanoGPT's

    tensors, metadata = read_safetensors(weights)
    gpt = tomllib.loads(metadata["model_config"])
    assert gpt["family"] == "gpt" and gpt["input"]["kind"] == "text", "a text GPT's weights"
    vocabulary = gpt["input"].get("vocabulary")  # absent: bytes
    config = GPTConfig(
        block_size=gpt["block_size"],
        vocab_size=gpt["vocab_size"],
        n_layer=gpt["n_layer"],
        n_head=gpt["n_head"],
        n_embd=gpt["n_embd"],
        dropout=0.0,
        bias=gpt["bias"],
    )
    model = GPT(config)
    model.load_state_dict(tensors, strict=True)
    model.eval()

    with open(text_path, "rb") as f:
        raw = f.read()
    if vocabulary is None:
        tokens = list(raw)
    else:
        ids = {c: i for i, c in enumerate(vocabulary)}
        tokens = [ids[c] for c in raw.decode("utf-8")]
    val = tokens[len(tokens) * 9 // 10 :]
    block = config.block_size
    windows = [val[s : s + block + 1] for s in range(0, len(val) - 1, block)]
    windows = windows[:limit] if limit else windows
    nats, count = 0.0, 0
    with torch.no_grad():
        for length in sorted({len(w) for w in windows}, reverse=True):
            same = [w for w in windows if len(w) == length]
            for i in range(0, len(same), 32):
                batch = torch.tensor(same[i : i + 32], dtype=torch.long)
                x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
                _, loss = model(x, y)
                nats += loss.item() * y.numel()
                count += y.numel()
    loss = nats / count
    print(f"nanoGPT val_loss {loss:.6f} over {count} tokens ({loss / math.log(2):.4f} bits/token)")


if __name__ == "__main__":
    main()
