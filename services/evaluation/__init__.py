"""Evaluation against a labelled set: how often vlwatch is right, and how that moves with blur, darkness, noise,
JPEG compression and tilt (docs/evaluation.md).

The flow of one run: ``truth`` reads the set (images + one truth file), ``runner`` puts each image, clean and then
degraded (``degrade``), through the same analyzers a profile runs in production, ``metrics`` and ``grounding``
score the predictions, ``store`` keeps the run with its lineage in SQL and ``report`` writes JSON and HTML.
``diff`` compares two runs, or two selections of jobs, image by image. Nothing here imports torch: the analyzers
are built by the CLI and passed in.
"""
