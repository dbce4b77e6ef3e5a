#!/usr/bin/env python3
"""nanoGPT's CPU recipe for Tiny Shakespeare in PyTorch, with the PyTorch
peer's gpt-char model (shared/peers/pytorch/bench.py), to compare the final
validation loss with `genzoo train gpt-char` on the same data and split.

    /opt/peers-venv/bin/python scripts/pytorch-gpt-char.py --seed 0

Recipe: batch 12, block 64, 2000 iterations, AdamW(0.9, 0.99, wd 0.1 on
matrices), lr 1e-3 with 100 warm-up steps and cosine decay to 1e-4, gradient
clipping at 1.0. Validation: 200 random batches (genzoo's default) and 20
(nanoGPT's eval_iters in its CPU command), both reported.
"""
import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.environ.get("PEER_DIR", os.path.join(HERE, "..", "..", "shared", "peers", "pytorch"))
sys.path.insert(0, PEER)
import bench  # noqa: E402  (the peer's GPT, optimizer groups and schedule)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", default=os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    text = open(args.text, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    splits = {"train": data[:n], "val": data[n:]}
    block, batch = 64, 12

    def get_batch(split):
        d = splits[split]
        ix = torch.randint(len(d) - block, (batch,))
        x = torch.stack([d[i:i + block] for i in ix])
        y = torch.stack([d[i + 1:i + 1 + block] for i in ix])
        return x, y

    model = bench.GPT(len(chars), block)
    opt = bench.gpt_optimizer(model)
    t0 = time.perf_counter()
    for it in range(args.iters):
        lr = bench.gpt_lr(it, args.iters)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch("train")
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    train_sec = time.perf_counter() - t0

    @torch.no_grad()
    def estimate(split, iters):
        model.eval()
        losses = [model(*get_batch(split))[1].item() for _ in range(iters)]
        model.train()
        return sum(losses) / len(losses)

    print(f"seed {args.seed}: {args.iters} iters in {train_sec:.1f} s; "
          f"val loss {estimate('val', 200):.4f} (200 batches), "
          f"{estimate('val', 20):.4f} (20 batches); train loss {estimate('train', 200):.4f}")


if __name__ == "__main__":
    main()
