#!/usr/bin/env python3
"""Joins `genzoo bench --json` and the PyTorch peer's `bench.py --json`
records (JSON lines, any number of files) into one Markdown table of speeds
and genzoo/PyTorch ratios (above 1: genzoo is faster).

    python3 scripts/bench_table.py runs/bench/*.jsonl

Records tagged with a `round` (scripts/compare-pytorch.sh with ROUNDS=N)
are paired within their round: each speed is the median over the rounds
and the ratio is the median of the rounds' own ratios, followed by their
range. Untagged records of the same measure count as rounds 1, 2, ... in
the order they are read.
"""
import json
import statistics
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


def read(paths):
    """{(model, measure, threads): {framework: {round: rate}}}."""
    rows = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                r = json.loads(line)
                what, rate = speed(r)
                rounds = rows.setdefault((r["model"], what, r["threads"]), {}).setdefault(
                    r["framework"], {}
                )
                rounds[r.get("round", len(rounds) + 1)] = rate
    # PyTorch's generation has no cache: both genzoo rows compare with it.
    for (model, what, threads), v in list(rows.items()):
        if what.startswith("generate") and "pytorch" in v:
            for other in ("generate tokens/s (KV cache)", "generate tokens/s (no cache)"):
                rows.setdefault((model, other, threads), {}).setdefault("pytorch", v["pytorch"])
    return rows


def ratio_cell(genzoo, pytorch):
    """The median of the per-round ratios, with their range over several rounds."""
    ratios = sorted(genzoo[k] / pytorch[k] for k in genzoo if k in pytorch and pytorch[k])
    if not ratios:
        return "–"
    cell = f"{statistics.median(ratios):.2f}"
    if len(ratios) > 1:
        cell += f" ({ratios[0]:.2f}–{ratios[-1]:.2f}, {len(ratios)} rounds)"
    return cell


def main(paths):
    rows = read(paths)
    order = ["vae-mlp", "dcgan-28", "ddpm-unet", "gpt-char", "gpt-pixel"]
    print("| model | measure | threads | genzoo | PyTorch | genzoo / PyTorch |")
    print("|---|---|---:|---:|---:|---:|")
    for (model, what, threads) in sorted(
        rows, key=lambda k: (order.index(k[0]) if k[0] in order else 99, k[1], k[2])
    ):
        v = rows[(model, what, threads)]
        g, p = v.get("genzoo"), v.get("pytorch", {})
        if not g:
            continue
        fmt = lambda x: f"{statistics.median(x.values()):.1f}" if x else "–"
        print(f"| {model} | {what} | {threads} | {fmt(g)} | {fmt(p)} | {ratio_cell(g, p)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
