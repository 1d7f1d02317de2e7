"""Every Redis connection the package opens is made here, from ``INGEST_REDIS_URL``.

Besides ``redis://``, ``rediss://`` and ``unix://``, a Sentinel URL names the sentinels and
the monitored primary, so a failover moves every process to the new primary by itself::

    redis+sentinel://[:password@]host1:26379,host2:26379/<service>/<db>

(``rediss+sentinel://`` for TLS). The password is the data nodes' (``requirepass``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.exceptions
import redis.sentinel

from .errors import ConfigurationError

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)
# scheme://user:password@ or scheme://password@ (which redis-py reads as a user name, but
# which is more often a password written without the colon); and ?password=... in the query.
_USERINFO = re.compile(r"^(?P<scheme>[^:/]*://)(?P<userinfo>[^@/]*)@")
_QUERY_PASSWORD = re.compile(r"(?P<name>[?&]password=)[^&]*", re.IGNORECASE)
# Answers with which Redis refuses a command for now, not for good: a primary without an
# in-sync replica (min-replicas-to-write), a demoted primary, a script still running, a
# server loading its data.
_REFUSED_FOR_NOW = ("NOREPLICAS", "MASTERDOWN", "BUSY ", "TRYAGAIN", "LOADING")


def redacted_url(url: str) -> str:
    """``url`` fit to show: the password replaced by ``***``, the rest as written, e.g.
    ``redis://:***@127.0.0.1:6379/0``. Works on a URL too malformed to connect with."""

    def mask(found: re.Match[str]) -> str:
        user, colon, _ = found["userinfo"].partition(":")
        shown = f"{user}:***" if colon else "***"
        return f"{found['scheme']}{shown}@"

    return _QUERY_PASSWORD.sub(r"\g<name>***", _USERINFO.sub(mask, url, count=1))


def check_url(url: str) -> None:
    """Raise ``ValueError`` saying what is wrong unless :func:`connect` can use ``url``.

    The message quotes the URL only through :func:`redacted_url`.
    """
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError(
            "must start with redis://, rediss://, unix:// or redis+sentinel://, "
            f"got {redacted_url(url)!r}"
        )
    try:
        if scheme in SENTINEL_SCHEMES:
            parse_sentinel_url(url)
        else:
            redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except (ValueError, ConfigurationError) as exc:
        reason = str(exc).rstrip(".")
        raise ValueError(f"{reason[:1].lower()}{reason[1:]}: {redacted_url(url)!r}") from None


def redis_unavailable(exc: BaseException) -> bool:
    """True for an error that means "Redis cannot take this now": down, restarting, failing
    over, loading, full or short of replicas. Producers spool and workers back off on these;
    anything else (a bug in a script, a wrong type) is raised, never hidden."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError | TimeoutError):
        return True
    if isinstance(exc, redis.exceptions.ReadOnlyError | redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_REFUSED_FOR_NOW)


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    hosts: list[tuple[str, int]]
    service: str
    db: int
    password: str | None
    username: str | None
    ssl: bool


def parse_sentinel_url(url: str) -> SentinelTarget:
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ConfigurationError(
            f"not a sentinel URL: {parts.scheme}://", setting="INGEST_REDIS_URL"
        )
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        user, _, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) or None
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, "26379"
        try:
            hosts.append((host, int(port)))
        except ValueError as exc:
            raise ConfigurationError(
                f"bad sentinel address {item!r}", setting="INGEST_REDIS_URL"
            ) from exc
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ConfigurationError(
            "a sentinel URL needs the service name: redis+sentinel://host:26379/mymaster/0",
            setting="INGEST_REDIS_URL",
        )
    try:
        db = int(path[1]) if len(path) > 1 else 0
    except ValueError as exc:
        raise ConfigurationError(
            f"the database must be a number, not {path[1]!r}", setting="INGEST_REDIS_URL"
        ) from exc
    return SentinelTarget(hosts, path[0], db, password, username, parts.scheme.startswith("rediss"))


def is_sentinel(url: str) -> bool:
    return url.split("://", 1)[0] in SENTINEL_SCHEMES


def connect(url: str, *, pool_size: int | None = None, **options: Any) -> redis.Redis:
    """A synchronous client for ``url`` (plain or Sentinel); ``options`` go to redis-py.

    With ``pool_size``, callers beyond that many connections wait (up to ``socket_timeout``)
    for a free one instead of redis-py raising ``MaxConnectionsError``: a busy pool is not
    an outage.
    """
    if not is_sentinel(url):
        if pool_size is not None:
            pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=pool_size, timeout=options.get("socket_timeout"), **options
            )
            return redis.Redis.from_pool(pool)
        return redis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    sentinel_options = {
        k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")
    }
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        target.hosts, sentinel_kwargs=sentinel_options, **sentinel_options
    )
    master = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service,
        db=target.db,
        password=target.password,
        username=target.username,
        ssl=target.ssl,
        **options,
    )
    return cast(redis.Redis, master)


def connect_async(url: str, *, pool_size: int | None = None, **options: Any) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`connect`."""
    if not is_sentinel(url):
        if pool_size is not None:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url, max_connections=pool_size, timeout=options.get("socket_timeout"), **options
            )
            return redis.asyncio.Redis.from_pool(pool)
        return redis.asyncio.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    sentinel_options = {
        k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")
    }
    sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        target.hosts, sentinel_kwargs=sentinel_options, **sentinel_options
    )
    master = sentinel.master_for(
        target.service,
        db=target.db,
        password=target.password,
        username=target.username,
        ssl=target.ssl,
        **options,
    )
    return cast(redis.asyncio.Redis, master)
