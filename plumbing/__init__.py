"""The plumbing that flows and tasks share, and nothing that is itself a task or a flow:

- :mod:`plumbing.paths`: the project root, each stage's files, checkpoint references;
- :mod:`plumbing.store`: the content store, local or ``s3://``;
- :mod:`plumbing.records`: outputs published all-or-nothing, and verified inputs;
- :mod:`plumbing.caching`: what task cache keys hash;
- :mod:`plumbing.tracking`: MLflow runs, metrics and registered models;
- :mod:`plumbing.log`: progress and warning lines, the stop event.

Layers: ``scripts`` -> ``flows`` -> ``tasks`` -> ``plumbing`` -> ``ice`` (pyproject.toml's
import contracts). Not named ``pipeline``: Prefect loads a deployment's entrypoint
(``flows/pipeline.py``) with ``flows/`` on ``sys.path``, where ``pipeline`` is that flow.
"""
