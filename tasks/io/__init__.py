"""Library code the ingest and normalize stages use, with no Prefect in it: source readers
(image folders, IDX and NPZ arrays in :mod:`~tasks.io.arrays`; CSV and Parquet tables with
their column typing in :mod:`~tasks.io.tables`), source inspection and fingerprints
(:mod:`~tasks.io.sources`) and the Parquet writer (:mod:`~tasks.io.parquet`)."""
