"""Built-in example prompts: two small contrastive sets, lines of Python code against lines of English.

They are library data, beside :func:`lensworks.zoo.corpus`: ``lensworks geometry`` reads them when
no ``--positive``/``--negative`` files are given, and :func:`lensworks.report.analyse` compares them
when no positive/negative prompts are given.

Example:
    >>> from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE
    >>> len(BUILTIN_POSITIVE), len(BUILTIN_NEGATIVE)
    (16, 16)
"""

from __future__ import annotations

__all__ = ["BUILTIN_POSITIVE", "BUILTIN_NEGATIVE"]

#: First built-in set: 16 short lines of Python code.
BUILTIN_POSITIVE = (
    "def main(argv=None):",
    "    return self._cache[key]",
    "for i, line in enumerate(lines):",
    "import os, sys",
    "if not isinstance(value, int):",
    "    raise ValueError(msg)",
    "class Parser(object):",
    "x = [f(y) for y in items]",
    "while n > 0: n -= 1",
    "print(json.dumps(data))",
    "with open(path) as fh:",
    "try: value = int(text)",
    "elif kind == 'dir':",
    "self.assertEqual(a, b)",
    "lambda x: x * 2",
    "return {k: v for k, v in d}",
)

#: Second built-in set: 16 short lines of English prose.
BUILTIN_NEGATIVE = (
    "The cat sat on the mat.",
    "We walked home after dinner.",
    "She wrote a long letter to him.",
    "It rained all day in the city.",
    "The children played in the park.",
    "He said that he would come back.",
    "My sister likes to read books.",
    "They bought bread and milk.",
    "The train was late again today.",
    "Birds sang in the early morning.",
    "Please close the door behind you.",
    "The garden is full of flowers.",
    "Our teacher told us a story.",
    "The river runs to the sea.",
    "I think it will be sunny.",
    "Nobody knew the answer.",
)
