"""Residual-stream geometry of the bundled character model, offline.

Run from the repository root:  .venv/bin/python docs/examples/geometry.py
Writes out/geometry.html. In a notebook, any result's ``.figure()`` displays as it is.
"""

from lensworks import report, zoo
from lensworks.geometry import NeighbourApproximation, block_ablation, block_decomposition, logit_lens, residual_stats
from lensworks.model import text_windows
from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE

model = zoo.load("char-mlp")  # 4 layers with MLPs, characters of Python source
held_out = zoo.corpus(1_050_000)[1_000_000:]  # text the model was not trained on
prompts = text_windows(model, held_out, max_tokens=64 * 127)[:64]  # [64, 128] token windows

# Seed 000: how the two data sets' residual streams drift apart and how variance grows with depth.
stats = residual_stats(model, {"Python code": list(BUILTIN_POSITIVE), "English prose": list(BUILTIN_NEGATIVE)})
print(stats.to_frame().head(12).round(4).to_string(index=False))

# Seed 004: drop each block's attention or MLP output and see how far the prediction moves.
ablation = block_ablation(model, prompts)
print(ablation.to_frame().round(3).to_string(index=False))

# The block outputs tip to tail, and how close embed + MLP outputs alone get to the final residual.
decomposition = block_decomposition(model, prompts)
print(f"cos(final residual, embed + MLP outputs only): mean {float(decomposition.ffn_only_cosine.mean()):.3f}")

# Logit lens: each layer's residual stream read through the final LayerNorm and unembedding.
lens = logit_lens(model, prompts[:8])

# Seed 004: windows of the corpus whose FFN outputs are most similar predict the next token.
corpus = zoo.corpus(50_000)
approx = NeighbourApproximation(window=10, thresholds=0.9).fit(model, corpus)
queries = [held_out[i : i + 10] for i in range(0, 20_000, 100)]
prediction = approx.predict(queries)  # per prompt: the predicted and the model's top token
evaluation = approx.evaluate(prediction)  # Hellinger distance to the model, nothing recomputed
print(prediction.headline())
print(f"FFN-neighbour approximation vs model: Hellinger {evaluation.mean:.3f} ± {evaluation.std:.3f}")

path = report.build([stats, ablation, decomposition, lens, evaluation], "out/geometry.html",
                    title="Geometry of char-mlp", model=model, model_name="char-mlp")
print(f"wrote {path}")
