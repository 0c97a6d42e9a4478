"""Document masks on long data packed from short documents (issue 22's study).

`python -m experiments.document_masks` runs the study (:mod:`.study`); its tables and plot
are :mod:`.report`.
"""
