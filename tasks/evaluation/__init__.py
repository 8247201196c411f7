"""How a trained model is measured and shown, with no Prefect in it: metrics on the codes and
scores (:mod:`~tasks.evaluation.metrics`) and the pictures logged with each run
(:mod:`~tasks.evaluation.plots`)."""
