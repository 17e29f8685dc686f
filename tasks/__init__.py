"""Prefect tasks wrapping ice/. Not built yet: see the pipeline issue and ../shared/DESIGN.md."""
