"""The Prefect tasks: ``tasks.steps`` (one cached task per pruning step, evaluation, fine-tune
decision, fine-tune, recovery chunk and check; pre-training epochs; auto-tune trials) and
``tasks.weights`` (importing an existing model). Tasks are thin: each calls ``ice`` and
moves checkpoints by reference through the store (:mod:`pipeline`)."""
