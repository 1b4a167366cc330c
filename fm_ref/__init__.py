"""fm_ref: a NumPy-only, float64 reference implementation of normalizing flows,
continuous normalizing flows and (conditional) flow matching.

Every formula is derived and tagged in ``derivations/``; the docstrings cite the tags.
"""
__version__ = "0.1.0"
