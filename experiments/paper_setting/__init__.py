"""LongReD's claim in the paper's setting: continued-training text the teacher never learned.

`python -m experiments.paper_setting` runs the study (:mod:`.study`); its tables and plot
are :mod:`.report`; the teacher's learning curves at two sizes are :mod:`.teacher_curve`.
"""
