"""Training: the one loop for every variant (:mod:`~ae_models.training.loop`) and its
settings (:mod:`~ae_models.training.config`), the fit path that also fits the scorer
(:mod:`~ae_models.training.fitting`), rows streamed from disk
(:mod:`~ae_models.training.streaming`), data-parallel processes
(:mod:`~ae_models.training.distributed`), fair CPU shares (:mod:`~ae_models.training.cpus`),
callbacks, and the estimator's inputs larger than memory."""
