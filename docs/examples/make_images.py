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
    from lensworks.circuits import composition_scores, find_induction_heads
    from lensworks.geometry import block_ablation, block_decomposition, logit_lens, residual_stats
    from lensworks.probes import embedding_basis, probe_inputs
    from lensworks.model import text_windows
    from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE

    ind = lambda: zoo.load("induction-2l")  # noqa: E731
    char = lambda: zoo.load("char-mlp")  # noqa: E731

    def windows(n):
        return text_windows(char(), zoo.corpus(1_100_000)[1_000_000:], max_tokens=n * 127)[:n]

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
