"""The catalogue stage: index templates, versioned indices behind aliases, and bulk loading.

Every index is created as ``<alias>-v<N>`` and served through ``<alias>``. A load builds the next
version, checks that the documents in it equal the rows it accepted, then swaps the alias in one
atomic ``_aliases`` call, so an interrupted or failed load leaves the previous version serving.

A catalogue's Q2E memory lives beside its versions in ``<alias>-q2e`` (orchestrator.feedback.q2e):
a load makes sure it exists and never deletes it, so what users taught survives a reload. Alias
names ending in ``-q2e`` are therefore reserved.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError, TransportError

from .config import ConfigError, index_templates_dir
from .datasets import CorpusRow, Dataset, DatasetSpec, RowError

POPULARITY_FLOOR = 1e-3  # rank_feature values must be positive normal floats
BIG_TEXT_BYTES = 1 << 20  # a title or text over this (UTF-8) is loaded, with a warning in the report
_VERSION_RE = re.compile(r"^(?P<alias>.+)-v(?P<n>\d+)$")
_ALIAS_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,200}$")
_MEMORY_SUFFIX = "-q2e"  # = feedback.q2e.MEMORY_SUFFIX (not imported: q2e imports this module)


class CatalogError(RuntimeError):
    """An index operation failed; the message says which index and why."""


def templates_dir() -> Path:
    """``LTRR_INDEX_TEMPLATES``, else the installed ``index_templates/`` (package data)."""
    try:
        return index_templates_dir()
    except ConfigError as e:
        raise CatalogError(str(e)) from None


@dataclass(frozen=True)
class IndexTemplate:
    """One file of ``index_templates/``: settings, mappings and optional snippets."""

    name: str
    description: str
    version: int
    settings: dict
    mappings: dict
    snippets: dict

    @classmethod
    def load(cls, name: str) -> IndexTemplate:
        path = templates_dir() / f"{name}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in templates_dir().glob("*.yaml"))
            raise CatalogError(f"no index template {name!r} in {templates_dir()} (known: {', '.join(known)})")
        data = yaml.safe_load(path.read_text())
        unknown = set(data) - {"description", "version", "settings", "mappings", "snippets"}
        if unknown:
            raise CatalogError(f"{path}: unknown keys {sorted(unknown)}")
        return cls(name, data.get("description", ""), int(data.get("version", 1)), data.get("settings", {}),
                   data["mappings"], data.get("snippets", {}))

    def body(self, spec: DatasetSpec | None = None) -> dict:
        """The create-index body; with a dataset spec, its facet and numeric fields are added."""
        mappings = copy.deepcopy(self.mappings)
        props = mappings.setdefault("properties", {})
        if spec is not None:
            for name in spec.facets:
                _check_field_name(name, props)
                props[name] = copy.deepcopy(self.snippets["facet_field"])
            for name in spec.numeric:
                _check_field_name(name, props)
                props[name] = copy.deepcopy(self.snippets["numeric_field"])
        mappings.setdefault("_meta", {})["ltrr"] = {"template": self.name, "template_version": self.version,
                                                   "facets": list(spec.facets) if spec else [],
                                                   "numeric": list(spec.numeric) if spec else []}
        return {"settings": copy.deepcopy(self.settings), "mappings": mappings}


def _check_field_name(name: str, props: dict) -> None:
    if name in props:
        raise CatalogError(f"dataset field {name!r} collides with the catalogue's own field of that name")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", name):
        raise CatalogError(f"dataset field name {name!r} is not usable as an index field")


# ------------------------------------------------------------------------------------------------
# Versioned indices behind aliases
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexVersion:
    alias: str
    index: str
    version: int
    docs: int
    size_bytes: int
    serving: bool


def default_alias(dataset_name: str) -> str:
    """A dataset's name made into an index name: lowercase, '-' for anything else."""
    return re.sub(r"[^a-z0-9_\-]+", "-", dataset_name.lower()).strip("-_") or "catalog"


def check_alias(alias: str) -> str:
    if not _ALIAS_RE.match(alias):
        raise CatalogError(f"index name {alias!r} must be lowercase letters, digits, '-' or '_'")
    if alias.endswith(_MEMORY_SUFFIX):
        raise CatalogError(f"index name {alias!r} ends in {_MEMORY_SUFFIX!r}, which is reserved for Q2E memories "
                           f"(the memory of catalogue X is X{_MEMORY_SUFFIX})")
    return alias


def list_versions(client: OpenSearch, alias: str | None = None) -> list[IndexVersion]:
    pattern = f"{alias}-v*" if alias else "*-v*"
    try:
        rows = client.cat.indices(index=pattern, params={"format": "json", "bytes": "b", "expand_wildcards": "open"})
    except NotFoundError:
        return []
    aliases = client.indices.get_alias(index=pattern, params={"ignore_unavailable": "true"}) if rows else {}
    out = []
    for row in rows:
        m = _VERSION_RE.match(row["index"])
        if not m or (alias and m["alias"] != alias):
            continue
        serving = m["alias"] in aliases.get(row["index"], {}).get("aliases", {})
        out.append(IndexVersion(m["alias"], row["index"], int(m["n"]), int(row.get("docs.count") or 0),
                                int(row.get("store.size") or 0), serving))
    return sorted(out, key=lambda v: (v.alias, v.version))


def create_version(client: OpenSearch, alias: str, template: str = "catalog", spec: DatasetSpec | None = None,
                   *, for_bulk: bool = False) -> str:
    """Create ``<alias>-v<N+1>`` (not yet serving). ``for_bulk`` turns refresh off until the load ends."""
    check_alias(alias)
    versions = list_versions(client, alias)
    n = max((v.version for v in versions), default=0) + 1
    index = f"{alias}-v{n}"
    body = IndexTemplate.load(template).body(spec)
    if for_bulk:
        body["settings"].setdefault("index", {})["refresh_interval"] = "-1"
    try:
        client.indices.create(index=index, body=body)
    except TransportError as e:
        raise CatalogError(f"creating {index} failed: {e.info if hasattr(e, 'info') else e}") from e
    return index


def swap_alias(client: OpenSearch, alias: str, index: str) -> None:
    """Point ``alias`` at ``index`` only, in one atomic call."""
    check_alias(alias)
    if not client.indices.exists(index=index):
        raise CatalogError(f"index {index} does not exist")
    actions: list[dict] = [{"add": {"index": index, "alias": alias}}]
    if client.indices.exists_alias(name=alias):
        for current in client.indices.get_alias(name=alias):
            if current != index:
                actions.insert(0, {"remove": {"index": current, "alias": alias}})
    client.indices.update_aliases(body={"actions": actions})
    _mark_served(client, index)


def drop(client: OpenSearch, alias: str, version: int | None = None, *, memory: bool = False) -> list[str]:
    """Delete one version (refusing the serving one) or, without a version, all of them.

    Dropping all versions keeps the catalogue's Q2E memory ``<alias>-q2e`` (a later load of the
    same alias finds it again) unless ``memory`` is set, or it holds nothing (no item documents),
    in which case it goes too. Returns the indices deleted."""
    if memory and version is not None:
        raise CatalogError("memory=True drops the Q2E memory with the whole catalogue; it cannot go with a version")
    versions = list_versions(client, alias)
    if version is not None:
        targets = [v for v in versions if v.version == version]
        if not targets:
            raise CatalogError(f"{alias} has no version {version}")
        if targets[0].serving:
            raise CatalogError(f"{targets[0].index} is serving {alias}; swap the alias first or drop all versions")
    else:
        targets = versions
    for v in targets:
        client.indices.delete(index=v.index)
    dropped = [v.index for v in targets]
    if version is None and _ALIAS_RE.match(alias) and not alias.endswith(_MEMORY_SUFFIX):  # else it has no memory
        from .feedback.q2e import Q2EMemory

        q2e = Q2EMemory(client, alias)
        if q2e.exists() and (memory or q2e.document_count() == 0):
            q2e.drop()
            dropped.append(q2e.index)
    return dropped


def ensure_index(client: OpenSearch, alias: str, template: str) -> str:
    """Create ``alias`` (as ``alias-v1``) from ``template`` when it does not exist yet."""
    if client.indices.exists_alias(name=alias):
        return next(iter(client.indices.get_alias(name=alias)))
    index = create_version(client, alias, template)
    swap_alias(client, alias, index)
    return index


# ------------------------------------------------------------------------------------------------
# Documents
# ------------------------------------------------------------------------------------------------


def to_document(row: CorpusRow, spec: DatasetSpec, loaded_at: str) -> dict[str, Any]:
    """The catalogue document for one validated corpus row."""
    fields: Mapping[str, Any] = row.fields  # validated by the reader: facet str/list, numbers finite
    doc: dict[str, Any] = {"doc_id": row.id, "title": row.title, "text": row.text, "loaded_at": loaded_at}
    entity = fields.get(spec.entity_type) if spec.entity_type else None
    doc["entity_type"] = entity or spec.default_entity_type or "document"
    facet_values: list[str] = []
    for name in spec.facets:
        value = fields.get(name)
        if value is None or value == [] or value == "":
            continue
        doc[name] = value
        facet_values.extend([value] if isinstance(value, str) else list(value))
    if facet_values:
        doc["facets_all"] = sorted(set(facet_values))
    for name in spec.numeric:
        value = fields.get(name)
        if value is not None:
            doc[name] = float(value)
    if spec.popularity and fields.get(spec.popularity) is not None:
        pop = float(fields[spec.popularity])
        doc["popularity_raw"] = pop
        doc["popularity"] = max(pop, POPULARITY_FLOOR)
    # No popularity, no field: a popularity boost then adds nothing, instead of a constant.
    return doc


def embedding_text(row: CorpusRow) -> str:
    """What the encoder sees for a document: title first, then the text (truncated by the encoder)."""
    return f"{row.title}. {row.text}".strip(". ") if row.title else row.text


# ------------------------------------------------------------------------------------------------
# Bulk loading
# ------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    alias: str
    index: str
    rows_read: int = 0
    accepted: int = 0
    rejected: list[RowError] = field(default_factory=list)
    docs_in_index: int = 0
    embedded: int = 0
    embed_cache_hits: int = 0
    retries: int = 0
    seconds: float = 0.0
    swapped: bool = False
    size_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def docs_per_second(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class BulkOptions:
    chunk_size: int = 500
    threads: int = 2
    max_retries: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.threads < 1 or self.max_retries < 0:
            raise ValueError("chunk_size and threads must be >= 1, max_retries >= 0")


class BulkWriter:
    """Parallel bulk indexing with retry and backoff for 429/503 (whole request or single items).

    Every document ends in exactly one of ``accepted`` or ``rejected`` (with the index's reason);
    nothing is dropped silently.

    This is the only retry layer of a load: give it a client made with
    ``make_client(..., retries=False)`` (as ``ltrr load`` and the demo do). A retrying client
    underneath would repeat each attempt up to its own ``max_retries`` times (also on timeouts,
    each up to ``request_timeout``), multiplying both the attempts and the waits.
    """

    RETRY_STATUSES = {429, 502, 503, 504}

    def __init__(self, client: OpenSearch, index: str, options: BulkOptions = BulkOptions()):
        self.client = client
        self.index = index
        self.options = options
        self.accepted = 0
        self.rejected: list[tuple[str, int, str]] = []  # (doc id, source line, reason)
        self.retries = 0
        self._lock = threading.Lock()

    def _send(self, docs: list[tuple[str, dict, int]]) -> int:
        pending = docs
        backoff = self.options.initial_backoff_s
        for attempt in range(self.options.max_retries + 1):
            body: list[dict] = []
            for doc_id, doc, _line in pending:
                body.append({"index": {"_index": self.index, "_id": doc_id}})
                body.append(doc)
            try:
                resp = self.client.bulk(body=body, params={"request_timeout": 120})
            except TransportError as e:
                status = e.status_code if isinstance(e.status_code, int) else None
                # No status: the node did not answer (down, timeout). Worth retrying too.
                if status in self.RETRY_STATUSES or status is None:
                    if attempt == self.options.max_retries:
                        return self._reject_all(pending, f"bulk request failed after retries: {e}")
                    self._backoff(backoff)
                    backoff = min(backoff * 2, self.options.max_backoff_s)
                    continue
                if len(pending) > 1:
                    # One bad document can make OpenSearch refuse the whole request (e.g. an _id
                    # over 512 bytes): bisect so the good ones still go in and the bad one is named.
                    half = len(pending) // 2
                    return self._send(pending[:half]) + self._send(pending[half:])
                return self._reject_all(pending, f"bulk request rejected: {e}")
            retry: list[tuple[str, dict, int]] = []
            ok = 0
            failed: list[tuple[str, int, str]] = []
            for (doc_id, doc, line), item in zip(pending, resp["items"]):
                result = item["index"]
                status = result.get("status", 500)
                if 200 <= status < 300:
                    ok += 1
                elif status in self.RETRY_STATUSES and attempt < self.options.max_retries:
                    retry.append((doc_id, doc, line))
                else:
                    err = result.get("error", {})
                    reason = err.get("reason", str(err)) if isinstance(err, dict) else str(err)
                    failed.append((doc_id, line, f"{err.get('type', status) if isinstance(err, dict) else status}: {reason}"))
            with self._lock:
                self.accepted += ok
                self.rejected.extend(failed)
            if not retry:
                return ok
            pending = retry
            self._backoff(backoff)
            backoff = min(backoff * 2, self.options.max_backoff_s)
        return 0

    def _backoff(self, seconds: float) -> None:
        with self._lock:
            self.retries += 1
        time.sleep(seconds)

    def _reject_all(self, docs: list[tuple[str, dict, int]], reason: str) -> int:
        with self._lock:
            self.rejected.extend((doc_id, line, reason) for doc_id, _, line in docs)
        return 0

    def write(self, chunks: Iterable[list[tuple[str, dict, int]]], on_done: Callable[[int], None] = lambda n: None) -> None:
        """Send chunks with ``threads`` requests in flight; ``on_done(n)`` after each chunk."""
        with ThreadPoolExecutor(self.options.threads, thread_name_prefix="ltrr-bulk") as pool:
            in_flight: set[Future] = set()
            sizes: dict[Future, int] = {}
            for chunk in chunks:
                if len(in_flight) >= self.options.threads * 2:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
                        on_done(sizes.pop(f))
                future = pool.submit(self._send, chunk)
                sizes[future] = len(chunk)
                in_flight.add(future)
            for f in in_flight:
                f.result()
                on_done(sizes.pop(f))


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def load_dataset(
    client: OpenSearch,
    dataset: Dataset,
    *,
    alias: str | None = None,
    limit: int | None = None,
    embed: bool = True,
    encoder: Any = None,
    embedding_cache: Any = None,
    options: BulkOptions = BulkOptions(),
    keep_versions: int = 2,
    progress: Callable[[int, int], None] | None = None,
    swap_on_errors: bool = False,
    force_merge: bool = True,
) -> LoadReport:
    """Load ``dataset``'s corpus into a new version of ``alias`` and swap the alias to it.

    ``progress(done, total)`` is called as documents are acknowledged. The alias is swapped only
    when the index holds exactly the accepted rows (and, unless ``swap_on_errors``, nothing was
    rejected: a load with errors leaves the new version built but not serving). On any exception
    the new version is deleted and the old one keeps serving.
    """
    spec = dataset.spec
    alias = check_alias(alias or default_alias(spec.name))
    if not dataset.corpus_path.is_file():
        raise CatalogError(f"{dataset.corpus_path} does not exist")
    if client.indices.exists(index=alias) and not client.indices.exists_alias(name=alias):
        raise CatalogError(f"{alias!r} is an index, not an alias; ltrr serves catalogues through aliases "
                           f"({alias} -> {alias}-v<N>). Load under another name or delete that index.")
    t0 = time.monotonic()
    index = create_version(client, alias, "catalog", spec, for_bulk=True)
    report = LoadReport(alias, index)
    loaded_at = datetime.now(UTC).isoformat()
    total = dataset.count_corpus_lines()
    if limit is not None:
        total = min(total, limit)
    done = 0

    def on_done(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    def rows() -> Iterator[CorpusRow]:
        for item in dataset.iter_corpus():
            if limit is not None and report.rows_read >= limit:
                return
            report.rows_read += 1
            if isinstance(item, RowError):
                report.rejected.append(item)
                on_done(1)
                continue
            yield item

    present: Counter[str] = Counter()  # field -> documents holding a non-empty value
    big: list[str] = []  # ids of rows with a title or text over BIG_TEXT_BYTES

    def documents() -> Iterator[list[tuple[str, dict, int]]]:
        # Batches big enough for efficient encoding, sent as bulk chunks.
        batch_size = max(options.chunk_size, 256)
        for batch in _chunks(rows(), batch_size):
            docs = [to_document(row, spec, loaded_at) for row in batch]
            big.extend(row.id for row in batch if _big_text(row.title) or _big_text(row.text))
            if embed:
                need = [i for i, row in enumerate(batch) if "embedding" not in row.fields]
                for i, row in enumerate(batch):
                    if "embedding" in row.fields:
                        docs[i]["embedding"] = list(row.fields["embedding"])
                if need:
                    vectors, hits = _embed([embedding_text(batch[i]) for i in need], encoder, embedding_cache)
                    report.embedded += len(need) - hits
                    report.embed_cache_hits += hits
                    for i, vec in zip(need, vectors):
                        docs[i]["embedding"] = [float(x) for x in vec]
            else:
                for i, row in enumerate(batch):
                    if "embedding" in row.fields:
                        docs[i]["embedding"] = list(row.fields["embedding"])
            for doc in docs:
                present.update(k for k, v in doc.items() if v not in ("", None, []))
            pairs = [(row.id, doc, row.line) for row, doc in zip(batch, docs)]
            yield from _chunks(pairs, options.chunk_size)

    writer = BulkWriter(client, index, options)
    try:
        writer.write(documents(), on_done)
        client.indices.put_settings(index=index, body={"index": {"refresh_interval": "1s"}})
        client.indices.refresh(index=index)
        if force_merge:
            # The version is not serving yet: merging now into one segment makes it ~5x smaller
            # (bulk loads leave many segments) and its HNSW graph one graph to search.
            client.indices.forcemerge(index=index, params={"max_num_segments": 1, "request_timeout": 3600})
            # The reader opened by the refresh above still holds the merged-away segments (their
            # files stay on disk, counted by the store stats, until the next refresh): let go of them.
            client.indices.refresh(index=index)
        report.accepted = writer.accepted
        report.retries = writer.retries
        for doc_id, line, reason in writer.rejected:
            report.rejected.append(RowError(str(dataset.corpus_path), line,
                                            f"_id {doc_id!r} rejected by OpenSearch: {reason}"))
        report.docs_in_index = int(client.count(index=index)["count"])
        if report.docs_in_index != report.accepted:
            raise CatalogError(f"{index} holds {report.docs_in_index} documents but {report.accepted} rows were "
                               "accepted; not swapping the alias")
        report.size_bytes = _live_size(client, index)
        # Which fields the catalogue really holds, for plans that need one (no titles: no fuzzy arm).
        _update_meta(client, index, fields_present=dict(present))
        swap = (swap_on_errors or not report.rejected) and report.accepted > 0
        if swap:
            swap_alias(client, alias, index)
            report.swapped = True
    except BaseException:
        # Interrupted or failed before the swap: the previous version keeps serving; remove the
        # partial one. (Nothing below this block may delete the new index: it may be serving.)
        try:
            serving = client.indices.exists_alias(name=alias, index=index)
            if not serving:
                client.indices.delete(index=index, params={"ignore_unavailable": "true"})
        except Exception:
            pass
        raise
    if report.swapped:
        try:
            _prune(client, alias, keep_versions)
        except Exception as e:  # pruning is housekeeping: the load itself succeeded
            report.warnings.append(f"could not remove old versions of {alias}: {e}")
        try:  # the memory of what users engaged with: created once, kept across loads
            from .feedback.q2e import Q2EMemory

            Q2EMemory(client, alias).ensure()
        except Exception as e:  # the catalogue serves without it (its arm is then not applicable)
            report.warnings.append(f"could not create the Q2E memory of {alias}: {e}")
    elif report.accepted == 0:
        report.warnings.append("no rows were accepted; the alias was not moved")
    if big:
        report.warnings.append(
            f"{len(big)} document(s) have a title or text over {BIG_TEXT_BYTES >> 20} MB (first: "
            f"{', '.join(repr(i) for i in big[:5])}): loaded whole, which costs memory and time at load and "
            "search; the embedding reads only their first 256 tokens")
    report.seconds = time.monotonic() - t0
    return report


def _big_text(value: str) -> bool:
    return len(value) * 4 > BIG_TEXT_BYTES and len(value.encode("utf-8", "surrogatepass")) > BIG_TEXT_BYTES


def _live_size(client: OpenSearch, index: str) -> int:
    """Bytes of the primary shards' live segments. Not the store stats: OpenSearch caches those
    (index.store.stats_refresh_interval, 10 s) and they count files of merged-away segments until
    Lucene deletes them, which made a reload report about twice the real size."""
    shards = client.indices.segments(index=index)["indices"][index]["shards"]
    return sum(seg.get("size_in_bytes", 0) for copies in shards.values() for copy in copies
               if copy.get("routing", {}).get("primary", True) for seg in copy.get("segments", {}).values())


def _update_meta(client: OpenSearch, index: str, **values: Any) -> None:
    """Merge ``values`` into the index mapping's ``_meta.ltrr``."""
    mapping = client.indices.get_mapping(index=index)[index]["mappings"]
    meta = dict(mapping.get("_meta", {}))
    meta["ltrr"] = {**meta.get("ltrr", {}), **values}
    client.indices.put_mapping(index=index, body={"_meta": meta})


def _mark_served(client: OpenSearch, index: str) -> None:
    """Record in the mapping's _meta that this version has served, so pruning keeps versions
    worth rolling back to rather than builds that never served (they had rejected rows)."""
    _update_meta(client, index, served_at=datetime.now(UTC).isoformat())


def _prune(client: OpenSearch, alias: str, keep: int) -> None:
    """Keep the serving version and the ``keep - 1`` newest versions that served before it; delete
    older served versions and builds that never served."""
    versions = [v for v in list_versions(client, alias) if not v.serving]
    if not versions:
        return
    mappings = client.indices.get_mapping(index=",".join(v.index for v in versions))
    served = [v for v in versions if mappings[v.index]["mappings"].get("_meta", {}).get("ltrr", {}).get("served_at")]
    keep_set = {v.index for v in served[len(served) - max(keep - 1, 0):]} if keep > 1 else set()
    for v in versions:
        if v.index not in keep_set:
            client.indices.delete(index=v.index)


def _embed(texts: Sequence[str], encoder: Any, cache: Any) -> tuple[Any, int]:
    """Vectors for ``texts`` and how many came from the cache."""
    if cache is None:
        return encoder.encode(list(texts)), 0
    from .embeddings import encode_cached

    counts: dict[str, int] = {}
    return encode_cached(encoder, cache, texts, counts=counts), counts.get("cached", len(texts))
