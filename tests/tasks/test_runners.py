"""How mapped stages report a failed part, and which failures are worth a retry."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tasks.errors import ConfigError
from tasks.runners import first_failure, retry_unless_config_error


def test_the_first_exception_among_the_results_is_what_is_raised() -> None:
    first, second = ValueError("part 2 cannot be read"), OSError("disk")
    assert first_failure([1, first, 3, second], int, "partition") is first


def test_a_result_that_is_neither_done_nor_an_exception_is_named() -> None:
    """A runner that lost a worker may hand back None: the error says so instead of a bare
    StopIteration from looking for an exception that is not there."""
    error = first_failure([1, None, 3], int, "ingest partition")
    assert isinstance(error, RuntimeError)
    assert str(error) == (
        "1 ingest partition(s) of 3 returned no result (the first: NoneType); run it again"
    )


@pytest.mark.parametrize(
    ("error", "retried"),
    [(OSError("timed out"), True), (ConfigError("no such column"), False), (MemoryError(), False)],
)
def test_only_failures_that_may_pass_are_retried(error: BaseException, retried: bool) -> None:
    state = SimpleNamespace(data=error)
    assert retry_unless_config_error(None, None, state) is retried
