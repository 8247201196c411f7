"""Remote stores: the S3 settings every client shares, and the checks made before any work.

S3 (or an S3-compatible server) is reached through pyarrow's file system, the one pyiceberg's
FileIO uses: endpoint, region and credentials come from the usual ``AWS_*`` variables
(``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` for a server other than AWS). The checks say
in one line which store is wrong (unreachable, credentials refused, bucket missing, database
refusing connections), with credentials blanked, before a run trains for an hour.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from stores import redact_uri

CONNECT_TIMEOUT_S = 5.0  # a store that does not answer within this is reported, not waited for
REQUEST_TIMEOUT_S = 30.0
DEFAULT_REGION = "us-east-1"  # S3-compatible servers take any; AWS redirects a wrong one


class StoreUnavailable(RuntimeError):
    """A remote store cannot be used (unreachable, credentials refused, bucket or database
    missing); the message names the store, its URI with credentials blanked, and why."""


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str:
    """The S3 region from the environment. Always set: with none, pyiceberg asks AWS for the
    bucket's region over the network, which an S3-compatible server never answers."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def fileio_properties() -> dict[str, str]:
    """pyiceberg FileIO properties for S3 from the environment (credentials stay with the
    AWS SDK's own lookup: environment, profile, instance role)."""
    props = {
        "s3.region": s3_region(),
        "s3.connect-timeout": str(CONNECT_TIMEOUT_S),
        "s3.request-timeout": str(REQUEST_TIMEOUT_S),
    }
    if endpoint := s3_endpoint():
        props["s3.endpoint"] = endpoint
    return props


def s3_filesystem(retries: int = 3) -> Any:
    """A pyarrow S3 file system on the environment's settings."""
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(
        endpoint_override=s3_endpoint(),
        region=s3_region(),
        connect_timeout=CONNECT_TIMEOUT_S,
        request_timeout=REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=retries),
    )


def check_object_store(url: str, name: str) -> None:
    """Raise StoreUnavailable unless the ``s3://bucket/prefix`` store ``name`` can be listed
    (endpoint answering, credentials taken, bucket there). Other URLs are not checked here."""
    import pyarrow.fs as pafs

    parts = urlsplit(url)
    if parts.scheme not in ("s3", "s3a", "s3n"):
        return
    where = f"the {name} {redact_uri(url)}"
    endpoint = s3_endpoint() or "AWS S3"
    bucket = parts.netloc.rsplit("@", 1)[-1]
    try:
        info = s3_filesystem(retries=1).get_file_info(bucket)
    except OSError as err:
        reason = _s3_reason(str(err), endpoint)
        raise StoreUnavailable(f"{where} cannot be used: {reason}") from None
    if info.type == pafs.FileType.NotFound:
        raise StoreUnavailable(
            f"{where} cannot be used: bucket {bucket!r} does not exist at {endpoint}; "
            "create it (aepipe writes inside a bucket, it does not create one)"
        )


# words of the AWS SDK's messages for each cause
REFUSED_CREDENTIALS = (
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "access denied",
    "accessdenied",
    "access_denied",
    "forbidden",
    "credentials",
)
UNREACHABLE = (
    "couldn't connect",
    "could not connect",
    "connection refused",
    "timed out",
    "timeout",
    "resolve",
    "curl error",
)


def _s3_reason(message: str, endpoint: str) -> str:
    """The cause of an S3 error in a few words, from the AWS SDK's message."""
    text = message.lower()
    if any(k in text for k in REFUSED_CREDENTIALS):
        return (
            f"the credentials were refused by {endpoint} "
            "(check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    if any(k in text for k in UNREACHABLE):
        return f"the endpoint {endpoint} cannot be reached (AWS_ENDPOINT_URL)"
    return message.splitlines()[0][:300]


def check_database(uri: str, what: str = "the Iceberg catalog") -> None:
    """Open one connection to ``what``'s database (bounded in time): a server that does not
    answer, refuses the credentials or has no such database is one StoreUnavailable line."""
    import sqlalchemy as sa
    from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

    args: dict[str, Any] = {}
    if uri.startswith("postgresql"):
        args["connect_timeout"] = int(CONNECT_TIMEOUT_S)
    try:
        engine = sa.create_engine(uri, connect_args=args, poolclass=sa.pool.NullPool)
    except (NoSuchModuleError, ModuleNotFoundError) as err:
        raise StoreUnavailable(
            f"{what} {redact_uri(uri)} needs a database driver that is not "
            f"installed ({err}); install aepipe's scale extra: pip install 'aepipe[scale]'"
        ) from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as err:
        orig = getattr(err, "orig", None) or err
        reason = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        raise StoreUnavailable(
            f"{what} database {redact_uri(uri)} refuses connections: {reason[:300]}"
        ) from None
    finally:
        engine.dispose()
