"""Benchmarks of datafast-ingest against plain RQ, run by hand (not tests).

``python bench/drain.py`` compares one drain; ``python -m bench`` runs everything and prints
one table. See ``bench/README.md``. Importing this package has no side effects.
"""
