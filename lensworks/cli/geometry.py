"""``lensworks geometry``: residual statistics of two prompt sets, block ablations, logit lens,
effective dimensionality."""

from __future__ import annotations

import argparse
from typing import Any

from lensworks.cli._common import text_file
from lensworks.cli._common import (
    add_model_argument, add_option, fit_fallback, add_outputs, format_table, model_from_args, read_lines, records, write_outputs,
)

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``geometry`` subcommand.

    Args:
        subparsers: The top-level parser's ``add_subparsers()`` action.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> register(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["geometry"]).batch_size
        32
    """
    g = subparsers.add_parser(
        "geometry", help="residual statistics of two prompt sets, block ablations, logit lens, effective dimensionality",
        description="Per-layer residual statistics for two contrastive prompt sets (one prompt per line), "
                    "attention/MLP ablation per block (Hellinger), logit lens, block decomposition and the "
                    "effective dimensionality of the residual stream (both sets together). Without "
                    "files, built-in sets (Python code vs English prose) are used.")
    add_model_argument(g)
    g.add_argument("--positive", metavar="FILE", type=text_file, help="prompts of the first set, one per line")
    g.add_argument("--negative", metavar="FILE", type=text_file, help="prompts of the second set, one per line")
    add_option(g, "--batch-size", default=32)
    add_outputs(g, "write all numbers as JSON", "write all figures as one HTML page")
    g.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print residual statistics, block ablations and the logit lens; write JSON/HTML when asked.

    Args:
        args: The parsed ``geometry`` arguments.

    Returns:
        0.

    Example:
        >>> from lensworks.cli import main
        >>> main(["geometry", "--json", "out/geometry.json"])  # doctest: +ELLIPSIS
        no --positive/--negative files: using the built-in sets (16 lines of Python code vs 16 lines of English prose)
        model: char-mlp (4 layers, d_model 128)
        ...
        0
    """
    from lensworks.model import LensworksError
    from lensworks.report import Context, registry, run_sections

    pos = read_lines(args.positive, "positive")
    neg = read_lines(args.negative, "negative")
    if (pos is None) != (neg is None):
        raise LensworksError("give both --positive and --negative, or neither (for the built-in sets)")
    if pos is None:
        from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE

        pos, neg = list(BUILTIN_POSITIVE), list(BUILTIN_NEGATIVE)
        print(f"no --positive/--negative files: using the built-in sets ({len(pos)} lines of Python code vs "
              f"{len(neg)} lines of English prose)")
    model, name = model_from_args(args)
    print(f"model: {name} ({model.cfg.n_layers} layers, d_model {model.cfg.d_model})")
    if args.positive is None:
        pos, neg = fit_fallback(model, pos, "positive"), fit_fallback(model, neg, "negative")
    both = pos + neg
    bs = args.batch_size
    # the report's geometry sections (and update alignment) on both prompt sets
    ctx = Context.of(model, positive=pos, negative=neg, windows_given={"geometry": both},
                     options={"batch_size": bs, "lens_windows": len(both), "more_samples": "give more prompts"})
    names = ["residual statistics", "block ablation", "logit lens", "decomposition", "update alignment",
             "effective dimensionality"]
    run = run_sections(ctx, registry(names=names))
    stats, table, lens, dec, align, dim = (run.result(n) for n in names)

    cos = stats.cosine("positive", "negative")
    rows = []
    for layer in range(model.cfg.n_layers):
        row = [layer]
        for s in stats.streams:
            row.append(float(cos[s][layer]))
        si = stats.streams.index("resid_post")
        row += [float(stats.var_mean("positive")[si, layer]), float(stats.var_mean("negative")[si, layer])]
        rows.append(row)
    print("\nresidual statistics at the last token (cosine of the class means; mean variance of resid_post)")
    print(format_table(rows, ["layer"] + [f"cos {s}" for s in stats.streams] + ["var pos", "var neg"]))

    df = table.to_frame()
    print("\nblock ablation (Hellinger distance to the normal next-token distribution, mean ± std over prompts)")
    print(format_table(
        [(int(r.block), f"{r.drop_attn_hellinger_mean:.3f} ± {r.drop_attn_hellinger_std:.3f}",
          f"{r.drop_mlp_hellinger_mean:.3f} ± {r.drop_mlp_hellinger_std:.3f}", float(r.drop_attn_top1_agreement),
          float(r.drop_mlp_top1_agreement)) for r in df.itertuples()],
        ["block", "drop attention", "drop MLP", "top1 kept (attn)", "top1 kept (MLP)"]))
    if not table.decomposition_ok:
        print(f"WARNING: embed + attn + MLP outputs do not add up to the final residual "
              f"(relative error {table.decomposition_error:.2e}); read the ablations with care")

    lf = lens.to_frame()
    print("\nlogit lens (each layer normalised with its own statistics)")
    print(format_table([(r.layer, float(r.kl_mean), float(r.top1_agreement)) for r in lf.itertuples()],
                       ["layer", "KL to final (nats)", "top1 = final"]))
    print(f"\ncosine(final residual, embed + MLP outputs only): mean {float(dec.ffn_only_cosine.mean()):.3f} "
          f"over {len(both)} prompts")
    _print_dimensionality(dim)

    payload = {
        "model": name,
        "n_positive": len(pos),
        "n_negative": len(neg),
        "builtin_sets": args.positive is None,
        "residual_stats": records(stats.to_frame()),
        "cosine_of_means": {s: v.tolist() for s, v in cos.items()},
        "block_ablation": records(df),
        "decomposition_ok": table.decomposition_ok,
        "decomposition_error": table.decomposition_error,
        "logit_lens": records(lf),
        "block_decomposition": records(dec.to_frame()),
        "ffn_only_cosine_mean": float(dec.ffn_only_cosine.mean()),
        "update_alignment": {"labels": list(align.labels), "cosine": align.cosine.tolist()},
        "effective_dimensionality": records(dim.to_frame()),
        "effective_dimensionality_samples": dim.n_samples,
    }
    write_outputs(args, payload, [stats.figure(), table.figure(), lens.figure(), dec.figure(0), align.figure(),
                                  dim.figure()],
                  title=f"lensworks geometry: {name}")
    return 0


def _print_dimensionality(dim: Any) -> None:
    """The effective-dimensionality table, with a note when the samples cap the covariance's rank."""
    print(f"\neffective dimensionality at the last token ({dim.n_samples} prompts of both sets; participation ratio "
          "(sum lambda)^2 / sum lambda^2 and components for 90% of the variance)")
    print(format_table([(int(r.layer), r.stream, float(r.participation_ratio), int(r.n_components_90))
                        for r in dim.to_frame().itertuples()],
                       ["layer", "stream", "participation_ratio", "n_components_90"]))
    if dim.note:  # the section's note: the sample count bounds the covariance's rank
        print(f"note: {dim.note}")
