"""Benchmarks: scripts that measure and print figures (``python benchmarks/<name>.py --help``).

They sit on top of the project's layers (``make lint`` checks it): they may import any of
``scripts``, ``flows``, ``tasks``, ``plumbing`` and ``ice``, and none of those imports them.
What they share is in :mod:`benchmarks.common`.
"""
