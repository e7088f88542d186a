"""`ropelab rope ...`: inspect and compare RoPE methods from the command line (pure, no orchestration)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ropelab.rope.factors_io import lambda_labels, read_rescale_factors
from ropelab.rope.registry import REGISTRY, RopeSpec, known_methods, rescale_factors_of

NUMBER_FLAGS = {  # flag -> (RopeSpec field, type, help)
    "--factor": ("factor", float, "extension ratio s = L'/L"),
    "--original-max-position-embeddings": ("original_max_position_embeddings", int, "pretrained length L"),
    "--beta-fast": ("beta_fast", float, "YaRN β_fast (default 32)"),
    "--beta-slow": ("beta_slow", float, "YaRN β_slow (default 1)"),
    "--low-freq-factor": ("low_freq_factor", float, "Llama-3 low_freq_factor (default 1)"),
    "--high-freq-factor": ("high_freq_factor", float, "Llama-3 high_freq_factor (default 4)"),
    "--attention-factor": ("attention_factor", float, "explicit attention factor (overrides the policy)"),
}


def _add_setting_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head-dim", type=int, default=64, help="attention head dimension d (default 64)")
    p.add_argument("--base", type=float, default=10000.0, help="RoPE base θ (default 10000)")
    for flag, (_, kind, text) in NUMBER_FLAGS.items():
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument("--seq-len", type=int, default=None, help="current length, for length-dependent methods")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_commands(subparsers) -> None:
    rope = subparsers.add_parser("rope", help="inspect RoPE methods").add_subparsers(dest="rope_command", required=True)
    rope.add_parser("methods", help="list the registry").set_defaults(run=cmd_methods)
    show = rope.add_parser("show", help="inv_freq and attention factor of one setting")
    show.add_argument("--method", required=True, help=f"one of {', '.join(known_methods())}")
    _add_setting_flags(show)
    show.add_argument("--rescale-factors", type=Path, help="λ file: one value per line or a JSON list")
    show.add_argument("--start-tokens", type=int, default=0, help="n̂ for longrope (kept un-interpolated)")
    show.add_argument("--attention-policy", choices=["su", "yarn", "none"], help="longrope attention factor")
    show.add_argument("--critical-dim", type=int, help="ntk_cd / yarn_cd: LongRoPE2's critical dim, a rotary-pair "
                                                       "index (the first pair scaled by the full s)")
    show.set_defaults(run=cmd_show)
    compare = rope.add_parser("compare", help="the zoo's per-dimension effective scale, as a table and a plot")
    _add_setting_flags(compare)
    compare.add_argument("--rescale-factors", type=Path, action="append", default=[],
                         help="λ file(s) to add (repeat the flag); each is labelled by the stage it records, files "
                              "with the same label also by their parent directories")
    compare.add_argument("--output", "--out", dest="output", type=Path, default=None,
                         help="write the plot (PNG) here; without it only the table is printed")
    compare.set_defaults(run=cmd_compare)


def _numbers(args) -> dict:
    return {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in NUMBER_FLAGS.items()}


def spec_from_args(args) -> RopeSpec:
    numbers = {k: v for k, v in _numbers(args).items() if v is not None}
    if args.rescale_factors is not None:
        numbers["rescale_factors"] = read_rescale_factors(args.rescale_factors)
    if args.attention_policy is not None:
        numbers["attention_policy"] = args.attention_policy
    if args.critical_dim is not None:
        numbers["critical_dim"] = args.critical_dim
    return RopeSpec(args.method, args.head_dim, args.base, start_tokens=args.start_tokens, **numbers)


def cmd_methods(args) -> int:
    for name in known_methods():
        print(f"{name:10s} {REGISTRY[name].summary}")
    return 0


def cmd_show(args) -> int:
    spec = spec_from_args(args)
    inv_freq, attention = spec.compute(args.seq_len)
    if args.json:
        print(json.dumps({"method": spec.method, "inv_freq": inv_freq.tolist(), "attention_factor": attention,
                          "start_tokens": spec.start_tokens}))
        return 0
    print(f"method {spec.method}   attention_factor {attention:.6g}   start_tokens {spec.start_tokens}")
    print(f"{'i':>3} {'inv_freq':>14} {'scale θ/inv_freq':>18}")
    for i, (f, s) in enumerate(zip(inv_freq.tolist(), rescale_factors_of(spec, args.seq_len).tolist(), strict=True)):
        print(f"{i:>3} {f:>14.6e} {s:>18.6f}")
    return 0


def zoo_specs(args) -> dict[str, RopeSpec]:
    """The classic methods at one setting, plus any λ files."""
    factor = args.factor or 8.0
    original = args.original_max_position_embeddings or 256
    common = {"head_dim": args.head_dim, "base": args.base}
    scaled = {"factor": factor, "original_max_position_embeddings": original}
    zoo = {
        "none": RopeSpec("default", **common),
        "PI": RopeSpec("linear", factor=factor, **common),
        "NTK": RopeSpec("ntk", factor=factor, **common),
        "dynamic NTK": RopeSpec("dynamic", **scaled, **common),
        "YaRN": RopeSpec("yarn", **scaled, **common),
        "Llama-3": RopeSpec("llama3", **scaled, **common),
    }
    factors = [read_rescale_factors(path) for path in args.rescale_factors]  # a bad file fails before labelling
    for label, values in zip(lambda_labels(args.rescale_factors), factors, strict=True):
        zoo[f"λ {label}"] = RopeSpec("longrope", rescale_factors=values, **scaled, **common)
    return zoo


def cmd_compare(args) -> int:
    from ropelab.eval.plots import plot_effective_scale

    factor = args.factor or 8.0
    original = args.original_max_position_embeddings or 256
    seq_len = args.seq_len or int(original * factor)
    zoo = zoo_specs(args)
    curves = {name: rescale_factors_of(spec, seq_len).tolist() for name, spec in zoo.items()}
    attention = {name: spec.compute(seq_len)[1] for name, spec in zoo.items()}
    title = f"effective scale per dimension: d={args.head_dim}, base={args.base:g}, s={factor:g}, L={original}"
    path = plot_effective_scale(curves, args.output, title) if args.output is not None else None
    if args.json:
        print(json.dumps({"scale": curves, "attention_factor": attention, "plot": str(path) if path else None}))
        return 0
    names = list(curves)
    print(title)
    print(f"{'i':>3} " + " ".join(f"{n:>12}" for n in names))
    for i in range(len(curves[names[0]])):
        print(f"{i:>3} " + " ".join(f"{curves[n][i]:>12.4f}" for n in names))
    print(f"{'att':>3} " + " ".join(f"{attention[n]:>12.4f}" for n in names))
    print(f"plot: {path}" if path else "no plot written (--output PATH writes one)", file=sys.stderr)
    return 0

