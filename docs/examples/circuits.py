"""Circuits on the bundled induction model, offline: which heads compose, copy, and do induction.

Run from the repository root:  .venv/bin/python docs/examples/circuits.py
Writes out/circuits.html (one self-contained page; open it in a browser, VSCode or Jupyter).
In a notebook, any result's ``.figure()`` displays as it is.
"""

from lensworks import report, zoo
from lensworks.circuits import composition_scores, copying_scores, find_induction_heads, head_scores

model = zoo.load("induction-2l")  # 2 layers x 4 heads, attention only, trained by lensworks.zoo

# Composition: does an earlier head's output feed a later head's query, key or value?
k_comp = composition_scores(model, "K")  # [n_layers, n_heads, n_layers, n_heads] + random baseline
print(f"K-composition baseline (random factors): {k_comp.baseline.mean:.3f} ± {k_comp.baseline.std:.3f}")
for pair in k_comp.top(3):
    print(f"  {pair.label}: {pair.score:.3f}")

# Copying: do the eigenvalues of each head's full OV circuit say "copy the token I attend to"?
copying = copying_scores(model)
print("most copying heads:", copying.top(3))

# Behaviour on repeated random tokens.
prev = head_scores(model, "previous_token", seq_len=30)  # 1 + 2 x 30 tokens fit n_ctx = 64
induction = head_scores(model, "induction", seq_len=30)
print("previous-token heads:", prev.top(2))
print("induction heads (behaviour):", induction.top(2))

# The verdict combines behaviour (induction score), mechanism (K-composition with a
# previous-token head) and copying.
verdict = find_induction_heads(model)
print(verdict.summary())

path = report.build(
    [verdict, prev, induction, k_comp, composition_scores(model, "Q"), composition_scores(model, "V"), copying],
    "out/circuits.html", title="Circuits of induction-2l", model=model, model_name="induction-2l",
)
print(f"wrote {path}")
