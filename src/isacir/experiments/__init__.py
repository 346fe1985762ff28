"""Experiments that measure the system where real weights and data cannot be had.

Nothing in the library imports from here; the experiments import the library like any user would.
"""
