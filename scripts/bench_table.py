#!/usr/bin/env python3
"""Joins `genzoo bench --json` and the PyTorch peer's `bench.py --json`
records (JSON lines, any number of files) into one Markdown table of speeds
and genzoo/PyTorch ratios (above 1: genzoo is faster).

    python3 scripts/bench_table.py runs/bench/*.jsonl
"""
import json
import sys


def speed(r):
    """(what is measured, a rate where higher is faster) of one record."""
    if r["task"] == "train":
        return "train examples/s", r["examples_per_sec"]
    if r["task"] == "sample":
        measured = r.get("ddim50_sec_measured")
        secs = measured if measured else r["ddim50_sec_extrapolated"]
        return "DDIM-50 x64 images/s", 64.0 / secs
    if r["task"] == "generate":
        cache = "KV cache" if r.get("kv_cache") else "no cache"
        return f"generate tokens/s ({cache})", r["tokens_per_sec"]
    return r["task"], float("nan")


def main(paths):
    rows = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                r = json.loads(line)
                what, rate = speed(r)
                key = (r["model"], what, r["threads"])
                rows.setdefault(key, {})[r["framework"]] = rate
    # PyTorch's generation has no cache: both genzoo rows compare with it.
    for (model, what, threads), v in list(rows.items()):
        if what.startswith("generate") and "pytorch" in v:
            for other in ("generate tokens/s (KV cache)", "generate tokens/s (no cache)"):
                rows.setdefault((model, other, threads), {}).setdefault("pytorch", v["pytorch"])
    order = ["vae-mlp", "dcgan-28", "ddpm-unet", "gpt-char", "gpt-pixel"]
    print("| model | measure | threads | genzoo | PyTorch | genzoo / PyTorch |")
    print("|---|---|---:|---:|---:|---:|")
    for (model, what, threads) in sorted(
        rows, key=lambda k: (order.index(k[0]) if k[0] in order else 99, k[1], k[2])
    ):
        v = rows[(model, what, threads)]
        g, p = v.get("genzoo"), v.get("pytorch")
        if g is None:
            continue
        ratio = f"{g / p:.2f}" if p else "–"
        fmt = lambda x: "–" if x is None else f"{x:.1f}"
        print(f"| {model} | {what} | {threads} | {fmt(g)} | {fmt(p)} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1:])
