"""Pipeline stages, one module each, named after it: a plain, typed function with its Prefect
task wrapper at the bottom (``ingest``, ``normalize``, ``train``, ``register``,
``materialize``, ``score``, ``write_features``, ``report``, ``downstream``, ``validate``).

Beside them: ``config`` (the pipeline config), ``registry`` (every MLflow registry call),
``tracking`` (MLflow runs), ``pyfunc_model`` (the served model's file), and the library code
the stages use, with no Prefect in it: ``io`` (readers, source inspection, the Parquet writer)
and ``evaluation`` (metrics and pictures). Stages pass small references (paths, run ids, row
counts), never DataFrames or tensors.
"""
