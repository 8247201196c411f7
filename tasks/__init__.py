"""Pipeline stages: plain, typed functions, each wrapped as a Prefect task.

Stages pass small references (paths, run ids, row counts), never DataFrames or tensors.
"""
