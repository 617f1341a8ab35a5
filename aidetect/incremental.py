"""Incremental scans: score only what the score cache lacks; report every file, in order.

A `ScoreSession` (`open_session`) holds what is known before any model loads: the cache
(`aidetect.cache`), the weights' facts and the score key (`aidetect.score_key`). Its `plan`
hashes every candidate (the cache's stat fast path skips unchanged files), looks the hashes up,
and lists the `misses`: the files whose content has no cached score, each distinct content once.
Only when there are misses does the caller load the model; `ScorePlan.results` then takes a
function that scores the misses (the `Scanner`) and yields one result per candidate, in the
candidates' order: cached ones as stored (the label recomputed from the threshold), the others
as scored, and a copy of the first for identical files. New scores are stored as they arrive,
committed every STORE_EVERY results; one whose file changed after it was hashed is not stored.
Errors are never stored; `settle_errors` finds the misses that cannot be decoded before any
model loads, so that a broken file alone does not make a rescan load the model.

With the cache off (`--no-cache`), files are still hashed (each result's `sha256`) and
identical files still scored once; nothing is looked up or stored.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from aidetect.cache import CachedScore, FileDigest, ScoreCache, stamp_of
from aidetect.data import Candidate
from aidetect.results import LABEL_AI, LABEL_REAL, ImageResult
from aidetect.score_key import ModelFacts, ScoreKey, compute_kind, read_model_facts, score_key

if TYPE_CHECKING:
    from aidetect.provenance import ProvenanceSettings

STORE_EVERY = 64  # results per transaction: a killed scan loses at most these
HASH_THREADS = 4  # hashing overlaps reading; hashlib releases the GIL

Scorer = Callable[[list[Candidate]], Iterable[ImageResult]]
_OUT_OF_MEMORY = "out of memory while decoding (try a lower --max-pixels)"  # as aidetect.scan


class ScorePlan:
    """The candidates, hashed and looked up: what is cached and what must be scored."""

    def __init__(self, candidates: Sequence[Candidate], *, cache: ScoreCache,
                 key: ScoreKey | None) -> None:
        started = time.perf_counter()
        self.candidates = list(candidates)
        self.cache = cache
        self.key = key
        readable = [i for i, c in enumerate(self.candidates) if c.error is None]
        hashed = cache.hash_files([self.candidates[i].path for i in readable],
                                  threads=HASH_THREADS)
        self.digests: list[FileDigest | None] = [None] * len(self.candidates)
        for i, digest in zip(readable, hashed, strict=True):
            self.digests[i] = digest if isinstance(digest, FileDigest) else None
        counts = Counter(d.sha256 for d in self.digests if d is not None)
        self.repeated = {sha for sha, count in counts.items() if count > 1}  # identical files
        self.cached: dict[str, CachedScore] = {}
        self.known_errors: dict[str, str] = {}  # path -> error, found without the model
        self.lookup(key)
        self.seconds = time.perf_counter() - started  # hashing and looking up

    def lookup(self, key: ScoreKey | None) -> None:
        """(Re)do the lookups under `key` (None: nothing is cached)."""
        self.key = key
        shas = {d.sha256 for d in self.digests if d is not None}
        self.cached = self.cache.lookup(shas, key.key) if key is not None else {}
        self.misses: list[Candidate] = []
        seen: set[str] = set()
        for candidate, digest in zip(self.candidates, self.digests, strict=True):
            if candidate.error is not None or candidate.path in self.known_errors:
                continue
            if digest is None:  # unreadable: the scanner says why
                self.misses.append(candidate)
            elif digest.sha256 not in self.cached and digest.sha256 not in seen:
                seen.add(digest.sha256)
                self.misses.append(candidate)
        self.hits = sum(d is not None and d.sha256 in self.cached for d in self.digests)

    def settle_errors(self, *, max_pixels: int | None) -> None:
        """Decode the misses, in order, until one decodes; those before it that cannot be
        decoded get their error now, without a model. So a rescan of a library with a broken
        file (errors are never cached) loads no model when everything else hits."""
        from aidetect.data import open_image
        from aidetect.errors import ImageError

        for candidate in list(self.misses):
            try:
                open_image(candidate.path, max_pixels=max_pixels)
            except ImageError as error:
                self.known_errors[candidate.path] = error.message
            except MemoryError:
                self.known_errors[candidate.path] = _OUT_OF_MEMORY
            else:
                break  # the model is needed: the scanner decodes the rest
            self.misses.remove(candidate)

    def results(self, score: Scorer, *, threshold: float, thumbnails: bool = False,
                max_pixels: int | None = None,
                provenance: ProvenanceSettings | None = None) -> Iterator[ImageResult]:
        """One result per candidate, in order; `score` is called once, with the misses.

        With `provenance` settings, the files not scored by `score` (cached, known errors)
        get their provenance read here. It is not cached: it is cheap, and its verdict depends
        on the trust list given now, which may differ from the cached scan's.
        """
        pending = iter(score(self.misses)) if self.misses else iter(())
        arrived: dict[str, ImageResult] = {}
        scored: dict[str, ImageResult] = {}  # by sha256, for the identical files to come
        batch: list[tuple[str, CachedScore]] = []
        try:
            for candidate, digest in zip(self.candidates, self.digests, strict=True):
                sha = digest.sha256 if digest is not None else None
                if candidate.error is not None:
                    result = ImageResult(path=candidate.path, error=candidate.error)
                elif sha in self.cached:
                    result = _from_cache(candidate.path, sha, self.cached[sha], threshold,
                                         thumbnails=thumbnails, max_pixels=max_pixels)
                    _read_provenance(result, provenance)
                elif sha in scored:
                    result = dataclasses.replace(scored[sha], path=candidate.path)
                elif candidate.path in self.known_errors:
                    result = ImageResult(path=candidate.path, sha256=sha,
                                         error=self.known_errors[candidate.path])
                    _read_provenance(result, provenance)
                    if sha in self.repeated:
                        scored[sha] = result
                else:
                    result = _take(pending, arrived, candidate.path)
                    result.sha256 = sha
                    if sha in self.repeated:
                        scored[sha] = result
                    if sha is not None and result.ok and unchanged(candidate.path, digest):
                        batch.append((sha, _to_cache(result)))
                    if len(batch) >= STORE_EVERY:
                        self.store(batch)
                        batch = []
                yield result
        finally:
            self.store(batch)

    def store(self, batch: list[tuple[str, CachedScore]]) -> None:
        """Keep these new scores under the plan's key (none without a key)."""
        if batch and self.key is not None:
            self.cache.store(batch, self.key.key, self.key.description)


class ScoreSession:
    """The cache, the weights' facts and the score key of one scan (see the module doc)."""

    def __init__(self, cache: ScoreCache, *, facts: ModelFacts | None = None,
                 compute: str | None = None, device: Any = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.cache = cache
        self.facts = facts
        self.compute = compute  # e.g. "cpu/bf16"
        self.device = device  # the torch device where it was resolved already, else None
        self.extra = extra
        self.key = score_key(facts, compute, extra=extra) if facts and compute else None

    @property
    def warnings(self) -> list[str]:
        return self.cache.warnings

    def plan(self, candidates: Sequence[Candidate]) -> ScorePlan:
        return ScorePlan(candidates, cache=self.cache, key=self.key)

    def confirm(self, plan: ScorePlan, *, sha256: str, preprocess: Any, device_type: str,
                precision: str) -> None:
        """After the model loaded for the misses: check it is the one the key describes.

        Weights or preprocessing that differ mean the files changed while the scan started
        (`WeightsError`); another device kind or precision re-keys the plan (never a score
        of another computation).
        """
        from aidetect.errors import WeightsError

        if self.facts is None:
            return
        if sha256 != self.facts.sha256 or preprocess != self.facts.preprocess:
            raise WeightsError(f"{self.facts.reference}: the weights changed while the scan "
                               "started; run it again")
        compute = f"{device_type}/{precision}"
        if compute != self.compute:
            self.compute = compute
            self.key = score_key(self.facts, compute, extra=self.extra)
            plan.lookup(self.key)

    def cached_device(self) -> str:
        """The report's `device` when no model ran: e.g. "cpu (bf16; scores from the cache)"."""
        kind, _, precision = (self.compute or "?/?").partition("/")
        return f"{kind} ({precision}; scores from the cache)"

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> ScoreSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass
class EvalCache:
    """The score cache as `aidetect.evaluate` uses it: a session whose key carries eval's own
    decoding and perturbations (`open_session(extra=...)`), and the facts of the detector that
    was loaded, checked against the key before any score is read."""

    session: ScoreSession
    sha256: str
    preprocess: Any
    device_type: str
    precision: str

    def plan(self, paths: Iterable[os.PathLike | str]) -> ScorePlan:
        plan = self.session.plan([Candidate(str(path)) for path in paths])
        self.session.confirm(plan, sha256=self.sha256, preprocess=self.preprocess,
                             device_type=self.device_type, precision=self.precision)
        return plan


def open_session(*, weights: str, device: str, precision: str, cache: str | None,
                 enabled: bool = True, extra: dict[str, Any] | None = None) -> ScoreSession:
    """A session for scoring with `weights` on `device` at `precision`.

    `eval` can use it as `scan` does: `plan` its files, score `plan.misses`, read the others'
    scores from `plan.cached` (by `plan.digests[i].sha256`), and `cache.store` the new ones
    under `session.key`. Its own decoding and perturbations go in `extra` (e.g.
    {"pipeline": "eval", "jpeg_quality": 75}), so that its scores never mix with a scan's.

    Args:
        cache: the cache folder (None: `aidetect.cache.cache_folder()`'s default).
        enabled: False for --no-cache: hashes only, and the device is resolved at once.
        extra: anything else that changes a score, made part of the key.

    Raises:
        UsageError: an unavailable device; WeightsError: as `load_detector` would.
    """
    if not enabled:
        from aidetect.devices import resolve_device

        return ScoreSession(ScoreCache.disabled(), device=resolve_device(device))
    compute, resolved = compute_kind(device, precision)  # a bad device fails before hashing
    store = ScoreCache.open(cache)
    try:
        facts = read_model_facts(weights, sha256_of=lambda path: _sha256(store, path))
    except BaseException:
        store.close()
        raise
    return ScoreSession(store, facts=facts, compute=compute, device=resolved, extra=extra)


def _sha256(cache: ScoreCache, path: os.PathLike | str) -> str | None:
    digest = cache.hash_files([os.fspath(path)], threads=1)[0]
    return digest.sha256 if isinstance(digest, FileDigest) else None


def _take(pending: Iterator[ImageResult], arrived: dict[str, ImageResult],
          path: str) -> ImageResult:
    """The scorer's result for `path`; results that come first for other paths are kept."""
    while path not in arrived:
        try:
            result = next(pending)
        except StopIteration:
            raise RuntimeError(f"the scanner returned no result for {path}") from None
        arrived[result.path] = result
    return arrived.pop(path)


def _read_provenance(result: ImageResult, settings: ProvenanceSettings | None) -> None:
    if settings is not None:
        from aidetect.provenance import read_provenance

        result.provenance = read_provenance(result.path, settings)


def _from_cache(path: str, sha: str, cached: CachedScore, threshold: float, *,
                thumbnails: bool, max_pixels: int | None) -> ImageResult:
    """A cached score as the scanner would report the file now."""
    from aidetect.data import pixel_limit_error

    refused = None
    if cached.width and cached.height:
        refused = pixel_limit_error(cached.width, cached.height, max_pixels)
    if refused is not None:  # a lower --max-pixels than when it was scored
        return ImageResult(path=path, error=refused, sha256=sha)
    result = ImageResult(
        path=path, score=cached.score, logit=cached.logit,
        label=LABEL_AI if cached.score > threshold else LABEL_REAL,
        format=cached.format, mode=cached.mode, width=cached.width, height=cached.height,
        sha256=sha, cached=True,
    )
    if thumbnails:
        result.thumbnail = _thumbnail(path, max_pixels)
    return result


def _thumbnail(path: str, max_pixels: int | None) -> bytes | None:
    from aidetect.data import jpeg_thumbnail, open_image
    from aidetect.errors import ImageError

    try:
        return jpeg_thumbnail(open_image(path, max_pixels=max_pixels).image)
    except (ImageError, MemoryError):
        return None  # the file changed since it was hashed: the score stands, no picture


def _to_cache(result: ImageResult) -> CachedScore:
    return CachedScore(score=result.score, logit=result.logit, format=result.format,
                       mode=result.mode, width=result.width, height=result.height)


def unchanged(path: str, digest: FileDigest) -> bool:
    """Whether the file the scanner read is the one that was hashed (stat stamp unchanged)."""
    if not digest.stable:
        return False
    try:
        return stamp_of(os.stat(path)) == digest.stamp
    except OSError:
        return False
