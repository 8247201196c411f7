"""Cached results: the references Prefect keeps as JSON, read back across releases."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "old_name", ["tasks.ingest.IngestResult", "tasks.normalize.NormalizedData"]
)
def test_a_result_cached_by_an_earlier_release_is_still_read(old_name: str) -> None:
    """Issue 43.2 moved the stage references to ``tasks.stages``; a scheduled deployment's
    cache holds records that name them where they lived, and an upgrade must read them (a
    refused record would ingest and normalize the unchanged source again)."""
    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import JSONSerializer

    from tasks.results import checked_record
    from tasks.stages import IngestResult, NormalizedData

    value = {
        "tasks.ingest.IngestResult": IngestResult("/h/raw.parquet", 3, ["a"], False, "fp", "d"),
        "tasks.normalize.NormalizedData": NormalizedData(
            "/h/normalized.parquet", "/h/normalizer.json", 3, ["a"], {"train": 3}, False
        ),
    }[old_name]
    metadata = ResultRecordMetadata(serializer=JSONSerializer(), storage_key="k")
    record = ResultRecord(metadata=metadata, result=value).serialize()
    new_name = f"tasks.stages.{type(value).__name__}"
    assert new_name.encode() in record
    old = record.replace(new_name.encode(), old_name.encode())
    assert ResultRecord.deserialize(checked_record(old, "old")).result == value
