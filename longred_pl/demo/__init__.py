"""The demo: its small teacher recipe, the embedded corpora, and ``longred demo``.

* ``corpora.py``  real text shipped by installed packages (Shakespeare's plays, the Python
  standard library, the World English Bible), so that the demo needs no network;
* ``teacher.py``  trains the demo's small Llama teacher (the "original model") from a recipe;
* ``run.py``      ``longred demo``: data, teacher, a LongReD fit and its plots, offline.

Nothing here is needed to train a real model; the library's modules import only
``corpora`` (``longred prepare --corpus NAME``).
"""
