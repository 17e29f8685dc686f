"""Prefect flows (one per pipeline stage). Not built yet: see the pipeline issue and ../shared/DESIGN.md."""
