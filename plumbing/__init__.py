"""The plumbing that flows and tasks share, and nothing that is itself a task or a flow:

- :mod:`plumbing.paths`: the project root, each stage's files, checkpoint references;
- :mod:`plumbing.stages`: the one stage table (dvc.yaml agrees with it, a test checks);
- :mod:`plumbing.store` (local) and :mod:`plumbing.s3`: the content store;
- :mod:`plumbing.records`: outputs published all-or-nothing, and verified inputs;
- :mod:`plumbing.caching`: what task cache keys hash; :mod:`plumbing.artifacts`: loading
  and saving the data and models tasks read and write;
- :mod:`plumbing.runtime`: a stage's run (:func:`~plumbing.runtime.open_stage`);
  :mod:`plumbing.cli`: the flows' command line and its preflight;
- :mod:`plumbing.tracking`: MLflow runs and metrics; :mod:`plumbing.pipeline_run`: the
  parent run of one pipeline run; :mod:`plumbing.registry`: registered models;
  :mod:`plumbing.metric_names`: metric names with their units;
- :mod:`plumbing.prefect_views`: Prefect artifacts, progress and tags;
- :mod:`plumbing.compare`, :mod:`plumbing.compare_page`, :mod:`plumbing.steptable`:
  compare.md's tables, header and figures, and the per-step metrics;
- :mod:`plumbing.log`: progress and warning lines, the stop event.

Layers: ``scripts`` -> ``flows`` -> ``tasks`` -> ``plumbing`` -> ``ice`` (pyproject.toml's
import contracts). Not named ``pipeline``: Prefect loads a deployment's entrypoint
(``flows/pipeline.py``) with ``flows/`` on ``sys.path``, where ``pipeline`` is that flow.
"""
