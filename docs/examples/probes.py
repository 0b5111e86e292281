"""Probes on the bundled character model, offline: which input characters each layer still holds.

Run from the repository root:  .venv/bin/python docs/examples/probes.py
Writes out/probes.html. In a notebook, any result's ``.figure()`` displays as it is.
"""

from lensworks import report, zoo
from lensworks.probes import compare_to_embedding, embedding_basis, probe_inputs
from lensworks.model import text_windows

model = zoo.load("char-mlp")
held_out = zoo.corpus(1_100_000)[1_000_000:]
windows = text_windows(model, held_out, max_tokens=200 * 127)[:200]  # [200, 128] token windows

# Seed 002: a linear probe per layer and stream recovers the input character at offset 0, -1, -2;
# controls: a randomly initialised copy of the model and shuffled training labels.
probes = probe_inputs(model, windows, offsets=(0, -1, -2))
print(probes.to_frame().round(3).to_string())

# Does the last layer's probe read the input from the embedding's own directions?
last = (probes.layers[-1], "resid_post", 0)
comparison = compare_to_embedding(model, probes.weights(*last), tokens=probes.classes)
print({k: round(v["value"], 3) for k, v in comparison.summary().items()})

basis = embedding_basis(model, "pca", k=32)

path = report.build([probes, comparison, basis], "out/probes.html", title="Probes of char-mlp",
                    model=model, model_name="char-mlp")
print(f"wrote {path}")
