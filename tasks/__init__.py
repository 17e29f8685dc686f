"""Prefect tasks (``tasks.steps``), MLflow tracking (``tasks.tracking``) and the paths and
references they share (``tasks.common``). Tasks are thin: each calls ``ice`` and moves
checkpoints by reference."""
