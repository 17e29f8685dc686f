"""Plain entry points, run as ``python -m scripts.<name>`` from the project root: export,
links, method_config (and ``gc.py``, ``setup.sh``). None of them is a Prefect flow; they
sit above the flows in the layers (``scripts`` -> ``flows`` -> ``tasks`` -> ``ice``)."""
