"""The plumbing that flows and tasks share, and nothing that is itself a task or a flow:

- :mod:`pipeline.paths`: the project root, each stage's files, checkpoint references;
- :mod:`pipeline.store`: the content store, local or ``s3://``;
- :mod:`pipeline.records`: outputs published all-or-nothing, and verified inputs;
- :mod:`pipeline.caching`: what task cache keys hash;
- :mod:`pipeline.tracking`: MLflow runs, metrics and registered models;
- :mod:`pipeline.log`: progress and warning lines, the stop event.

Layers: ``flows`` -> ``tasks`` -> ``pipeline`` -> ``ice`` (pyproject.toml's import contracts).
"""
