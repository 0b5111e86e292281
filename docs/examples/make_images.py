"""Regenerate the static figures in docs/images/ from the demo models, with headless Chromium.

plotly's own PNG export needs kaleido, which lensworks does not depend on; instead each figure
is written into a one-figure report and screenshotted. Needs the ``chromium`` binary.

Run from the repository root:  .venv/bin/python docs/examples/make_images.py [NAME ...]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from lensworks import report, zoo

OUT = Path(__file__).resolve().parent.parent / "images"
HIDE = "<style>header,nav,figcaption,details,pre.summary,.picker,#model,#highlights,section>h2,section>p{display:none}main{padding:0}figure{margin:0;border:0}</style>"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("no chromium binary: apt-get install -y chromium")


def shoot(html: Path, png: Path, size: str, tmp: Path) -> None:
    subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         f"--user-data-dir={tmp / 'profile'}", f"--window-size={size}", "--hide-scrollbars",
         "--virtual-time-budget=15000", f"--screenshot={png}", html.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    print(f"wrote {png}")


def figures() -> dict[str, tuple[Callable[[], object], str]]:
    """Name -> (function computing the result, window size); computed only when asked for."""
    from lensworks.circuits import (circuit_graph, composition_scores, find_induction_heads, skip_trigrams,
                                     term_importance)
    from lensworks.circuits.heads import repeated_tokens
    from lensworks.geometry import block_ablation, block_decomposition, effective_dimensionality, logit_lens, residual_stats
    from lensworks.plotting import attention_explorer
    from lensworks.probes import embedding_basis, probe_inputs
    from lensworks.model import text_windows
    from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE

    ind = lambda: zoo.load("induction-2l")  # noqa: E731
    char = lambda: zoo.load("char-mlp")  # noqa: E731

    def windows(n):
        return text_windows(char(), zoo.corpus(1_100_000)[1_000_000:], max_tokens=n * 127)[:n]

    def explorer():
        # The strongest induction head first, so the screenshot (the menu's first view) shows its stripe
        # one position after the repeated token; every other head stays in the menu.
        model = ind()
        first = find_induction_heads(model).heads[0]
        heads = [first] + [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads) if (l, h) != first]
        tokens = repeated_tokens(model, seq_len=10, n_seqs=1, seed=0, prepend_bos=True)
        return attention_explorer(model, tokens, heads=heads)

    def dimensionality():
        # as in docs/seed-experiments.md (seed 001): the last position of 600 held-out windows of 64 tokens
        held_out = text_windows(char(), zoo.corpus(None)[1_000_000:], max_tokens=600 * 64 * 2, width=64)[:600]
        return effective_dimensionality(char(), held_out)

    return {
        "induction-verdict": (lambda: find_induction_heads(ind()), "1100,520"),
        "k-composition": (lambda: composition_scores(ind(), "K"), "1100,520"),
        "copying": (lambda: find_induction_heads(ind()).copying, "1100,520"),
        "residual-stats": (lambda: residual_stats(char(), {"Python code": list(BUILTIN_POSITIVE),
                                                           "English prose": list(BUILTIN_NEGATIVE)}), "1100,960"),
        "block-ablation": (lambda: block_ablation(char(), windows(64)), "1100,520"),
        "block-decomposition": (lambda: block_decomposition(char(), windows(64)), "1100,520"),
        "logit-lens": (lambda: logit_lens(char(), windows(8)), "1100,620"),
        "probes": (lambda: probe_inputs(char(), windows(120)), "1100,620"),
        "embedding-basis": (lambda: embedding_basis(char(), "pca", k=32), "1100,520"),
        "attention-explorer": (explorer, "1000,650"),
        "circuit-graph": (lambda: circuit_graph(ind()), "1100,490"),
        "skip-trigrams": (lambda: skip_trigrams(ind(), 1, 3, k=20), "1100,560"),
        "effective-dimensionality": (dimensionality, "1100,490"),
        # as in docs/seed-experiments.md (seed 003): 32 repeated random sequences of 31 tokens
        "term-importance": (lambda: term_importance(ind(), repeated_tokens(ind(), seq_len=31, n_seqs=32), progress=False),
                            "1100,660"),
    }


def main(names: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not names or "report" in names:
            model = zoo.load("char-mlp")
            page = report.build(report.analyse(model, progress=False), tmp / "report.html", model=model,
                                model_name="char-mlp", title="lensworks report: char-mlp")
            shoot(page, OUT / "report.png", "1300,900", tmp)
        for name, (compute, size) in figures().items():
            if names and name not in names:
                continue
            page = report.build([compute()], tmp / f"{name}.html")
            page.write_text(page.read_text().replace("</head>", HIDE + "</head>", 1))
            shoot(page, OUT / f"{name}.png", size, tmp)


if __name__ == "__main__":
    main(sys.argv[1:])
