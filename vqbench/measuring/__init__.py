"""Measuring speed and memory: the op records and the code a timed op runs, inputs, timing and memory,
the machine's ceilings, the sweep, the code fingerprint of a row, provenance, shards and the machine-load check.
"""
