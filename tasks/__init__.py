"""The Prefect tasks, the @task recipes only, one module per stage: ``tasks.prepare``,
``tasks.pretrain`` (one cached task per epoch; an imported model's evaluation),
``tasks.autotune`` (one task per trial), ``tasks.prune`` (one cached task per pruning step,
evaluation, fine-tune decision, fine-tune, recovery chunk and check) and ``tasks.evaluate``.
Tasks are thin: each calls ``ice`` and moves checkpoints by reference through the store;
the plumbing they share is :mod:`plumbing`."""
