"""The OpenSearch connection: one place that turns :class:`ConnectionSettings` into a client."""

from __future__ import annotations

import orjson
from opensearchpy import OpenSearch
from opensearchpy.exceptions import SerializationError
from opensearchpy.serializer import JSONSerializer

from .config import ConnectionSettings


class FastJSONSerializer(JSONSerializer):
    """The client's JSON through orjson: bulk bodies and query vectors are mostly floats, which
    orjson writes and reads several times faster than the standard library."""

    _OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

    def dumps(self, data):
        if isinstance(data, str):
            return data
        try:
            return orjson.dumps(data, default=self.default, option=self._OPTIONS).decode()
        except TypeError:  # e.g. integers beyond 64 bits: the standard library copes
            return super().dumps(data)

    def loads(self, s):
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError as e:
            raise SerializationError(s, e) from None


def make_client(settings: ConnectionSettings | None = None, *, timeout_s: float | None = None,
                retries: bool = True) -> OpenSearch:
    """A client with auth, TLS, timeouts and retries from ``settings`` (default: the environment).

    Retries cover connection errors, timeouts and 502/503/504 answers, never 4xx answers, so a
    bad request is reported at once instead of being repeated.

    ``retries=False`` gives a client that sends every request exactly once. Use it where another
    layer owns the time or the retries:

    * the search path (``SearchPipeline``, ``StrategyExecutor``): a search has a deadline (the
      strategies' timeout plus a small margin, passed as the _msearch's request timeout); a
      client retry would start the whole wait again, so a 1 s search could take 4x as long;
    * bulk loading (``catalog.load_dataset``): ``BulkWriter`` retries 429/5xx/no answer with
      backoff itself; client retries underneath would multiply its attempts and waits.
    """
    s = settings or ConnectionSettings.from_env()
    kwargs: dict = {
        "hosts": [s.url],
        "timeout": timeout_s if timeout_s is not None else s.timeout_s,
        "max_retries": s.max_retries if retries else 0,
        "retry_on_timeout": retries,
        "http_compress": False,
        "serializer": FastJSONSerializer(),
    }
    if s.user is not None:
        kwargs["http_auth"] = (s.user, s.password)
    if s.use_ssl:
        kwargs["use_ssl"] = True
        kwargs["verify_certs"] = s.verify_certs
        kwargs["ssl_show_warn"] = s.verify_certs
        if s.ca_certs:
            kwargs["ca_certs"] = s.ca_certs
    return OpenSearch(**kwargs)
