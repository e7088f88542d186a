"""Peak resident memory of a perplexity evaluation at several lengths (tiny model, sdpa, fp32, CPU).

Each length runs in a fresh interpreter so ru_maxrss is that evaluation's own peak.
Usage: .venv/bin/python bench/ppl_memory.py [--lengths 1024 4096 16384] [--model artifacts/models/base-…]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from ropelab.config import ModelConfig
from ropelab.eval.perplexity import perplexity
from ropelab.models import build_tiny_llama, load_model
length, model_dir = int(sys.argv[1]), sys.argv[2]
torch.set_num_threads(2)
model = load_model(model_dir)[0] if model_dir else build_tiny_llama(ModelConfig(), 0).eval()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
windows = torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(0))
start = time.monotonic()
result = perplexity(model, windows)
seconds = time.monotonic() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"length": length, "seconds": seconds, "peak_mb": peak / 1024, "before_mb": base / 1024,
                  "ppl": result.ppl}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--model", default="", help="a saved model directory (default: a random tiny model)")
    args = parser.parse_args()
    print(f"{'length':>8} {'seconds':>8} {'peak RSS MB':>12} {'RSS before eval MB':>19}")
    for length in args.lengths:
        out = subprocess.run([sys.executable, "-c", CHILD, str(length), args.model], capture_output=True, text=True,
                             check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{row['length']:>8} {row['seconds']:>8.2f} {row['peak_mb']:>12.0f} {row['before_mb']:>19.0f}")


if __name__ == "__main__":
    main()
