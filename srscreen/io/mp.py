"""Download structures and their labels from the Materials Project with mp-api's MPRester.

`fetch_mp(out, query)` writes `OUT/structures/<material_id>.json` (pymatgen Structure dicts, the
input `featurize` reads) and `OUT/labels.csv` (material_id, formation_energy_per_atom, band_gap,
energy_above_hull: what `train`/`finetune --labels` read), plus `OUT/failures.csv` for records that
could not be used. It is resumable: the ids matching the query are listed first (one small field),
and only those without a structure file and a labels row are downloaded, in chunks of ids, each
chunk retried on rate limits and server errors and committed (files, then labels rows) before the
next. The API key is sent to the server only: never printed, logged or written.
"""

from __future__ import annotations

import csv
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson

from srscreen.io.atomic_write import replace_when_done
from srscreen.errors import InputError, OptionError, SrscreenError, one_line
from srscreen.io.formats.pymatgen_json import structure_from_dict
from srscreen.io.parsed import ParseFailure
from srscreen.io.text_file import text_lines

LABEL_COLUMNS = ("formation_energy_per_atom", "band_gap", "energy_above_hull")
FIELDS = ("material_id", "structure", *LABEL_COLUMNS)
_ALL = 10**9  # num_chunks: page through the whole answer over the REST API (never the bulk S3 path)
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")
_STATUS = re.compile(r"status code (\d{3})|too many (\d{3}) error responses")


class MPKeyError(OptionError):
    """No API key, or one the server refuses."""


class MPFetchError(RuntimeError):
    """The server kept failing after the retries; what was fetched is kept and a rerun resumes."""


@dataclass(frozen=True)
class MPQuery:
    """What to fetch; empty fields do not constrain. Ranges are (min, max), inclusive."""

    chemsys: tuple[str, ...] = ()
    elements: tuple[str, ...] = ()
    material_ids: tuple[str, ...] = ()
    stable: bool | None = None
    energy_above_hull: tuple[float, float] | None = None
    band_gap: tuple[float, float] | None = None
    formation_energy: tuple[float, float] | None = None

    def criteria(self) -> dict:
        """Keyword arguments of `MPRester().materials.summary.search`, ids aside."""
        out: dict = {}
        if self.chemsys:
            out["chemsys"] = list(self.chemsys)
        if self.elements:
            out["elements"] = list(self.elements)
        if self.stable is not None:
            out["is_stable"] = self.stable
        for name in ("energy_above_hull", "band_gap", "formation_energy"):
            if getattr(self, name) is not None:
                out[name] = tuple(getattr(self, name))
        return out

    def is_empty(self) -> bool:
        return not (self.criteria() or self.material_ids)


def material_ids(values: list[str]) -> tuple[str, ...]:
    """The ids of `--ids` values: ids inline (comma or space separated) or a file of ids, one a line
    (the first CSV column; blank lines, # comments and a material_id header skipped; a pipe such as
    <(cut -d, -f1 list.csv) too). A value that gives no id, or anything but ids, is refused here, before
    any request: an empty file (/dev/null, only comments) left nothing to ask (a minute of retries
    to learn it) or, beside other filters, silently widened the query to all they select."""
    ids: list[str] = []
    for value in values:
        path = Path(value)
        if path.exists() and not path.is_dir():
            found = []
            for n, line in enumerate(text_lines(path, "a file of material ids"), start=1):
                id_ = line.split(",")[0].strip()
                if id_ and not id_.startswith(("#", "material_id")):
                    if not _SAFE_ID.match(id_):
                        raise InputError(f"{path}:{n}: {one_line(id_)[:40]!r} is not a material id (one id a line, e.g. mp-149)")
                    found.append(id_)
            if not found:
                raise InputError(f"{path}: no material ids in it (one id a line, e.g. mp-149; blank lines and "
                                 "# comments are skipped): nothing to fetch")
        elif path.is_dir() or "/" in value or "." in value:  # Materials Project ids hold neither
            raise InputError(f"{value}: {'a folder' if path.is_dir() else 'no such file'}, and not material ids "
                             "(give a file of one id a line, or ids like mp-149,mp-13)")
        else:
            found = value.replace(",", " ").split()
            bad = next((x for x in found if not _SAFE_ID.match(x)), None) if found else value
            if bad is not None:
                raise OptionError(f"`ids` {bad!r}: neither a file nor material ids (e.g. mp-149,mp-13)")
        ids += found
    return tuple(ids)


@dataclass(frozen=True)
class FetchSummary:
    matched: int  # ids the query selects
    fetched: int  # written by this run
    already: int  # found complete from an earlier run
    failed: int  # records that could not be used (see failures.csv)
    out: str
    failures: list[tuple[str, str]] = field(default_factory=list, repr=False)


def _read_done(labels: Path, structures: Path) -> set[str]:
    """Ids with a labels row and a structure file. A labels line cut by a kill is dropped."""
    if not labels.exists():
        return set()
    text = labels.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        labels.write_text(text, encoding="utf-8")
    rows = list(csv.reader(text.splitlines()))
    if not rows or rows[0] != ["material_id", *LABEL_COLUMNS]:
        raise InputError(f"{labels} is not a labels file written by fetch-mp; choose another output folder")
    return {row[0] for row in rows[1:] if row and (structures / f"{row[0]}.json").exists()}


def _number(value) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return ""
    return repr(x) if math.isfinite(x) else ""


def _write_atomic(path: Path, data: bytes) -> None:
    with replace_when_done(path) as tmp:
        tmp.write_bytes(data)


def _require_mp_api() -> None:
    """mp-api is an extra (it pulls boto3, pyarrow and deltalake): without it, say how to install it
    before anything is written."""
    try:
        import mp_api.client  # noqa: F401
    except ImportError:
        raise SrscreenError('fetching from the Materials Project needs mp-api, an optional dependency: '
                            'pip install "srscreen[mp]"') from None


class _Session:
    """MPRester calls with retries, and errors that say what to do without the key in them."""

    def __init__(self, api_key: str, endpoint: str | None, retries: int, backoff: float) -> None:
        self.key, self.retries, self.backoff = api_key, retries, backoff
        self.rester = self.call(lambda: self._connect(endpoint), "connecting to the Materials Project")

    def _connect(self, endpoint: str | None):
        from mp_api.client import MPRester

        return MPRester(api_key=self.key, endpoint=endpoint, use_document_model=False, mute_progress_bars=True)

    def search(self, **kwargs) -> list[dict]:
        return self.call(lambda: self.rester.materials.summary.search(num_chunks=_ALL, **kwargs), "querying the Materials Project")

    def call(self, function: Callable, what: str):
        import requests
        from mp_api.client.core.client import MPRestError

        for attempt in range(self.retries + 1):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # mp-api's version notices; failures raise
                    return function()
            except (MPRestError, requests.RequestException, ValueError, KeyError) as e:
                message = self._clean(e)
                status = self._status(message)
                if status in (401, 403):
                    raise MPKeyError(
                        f"the Materials Project refused the API key (HTTP {status}): set MP_API_KEY or pass "
                        "--api-key with a valid key from https://materialsproject.org/api"
                    ) from None
                retryable = status == 429 or (status is not None and status >= 500) or isinstance(
                    e, (requests.ConnectionError, requests.Timeout)) or "Max retries exceeded" in message
                if not retryable or attempt == self.retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise MPFetchError(f"{what} failed{tries}: {message}; rerun the same command to resume") from None
                time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _clean(self, e: Exception) -> str:
        """One line, never the key (defensive: no known message holds it)."""
        text = one_line(e) or type(e).__name__
        return text.replace(self.key, "***") if self.key else text

    @staticmethod
    def _status(message: str) -> int | None:
        m = _STATUS.search(message)
        return int(next(g for g in m.groups() if g)) if m else None

    def close(self) -> None:
        session = getattr(self.rester, "session", None)
        if session is not None:
            session.close()


def _api_key(api_key: str | None) -> str:
    key = api_key or os.environ.get("MP_API_KEY", "")
    if not key:
        raise MPKeyError("no Materials Project API key: set MP_API_KEY or pass --api-key (get one at https://materialsproject.org/api)")
    if len(key) != 32 or not key.isalnum():
        raise MPKeyError("the Materials Project API key must be 32 letters and digits: check MP_API_KEY or --api-key")
    return key


def fetch_mp(
    out: str | Path,
    query: MPQuery,
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    chunk_size: int = 500,
    retries: int = 5,
    backoff: float = 2.0,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> FetchSummary:
    """Fetch the structures and labels `query` selects into the folder `out` (see the module doc).

    `api_key` defaults to $MP_API_KEY; `endpoint` to mp-api's (https://api.materialsproject.org).
    `on_progress(done, total, failed)` is called once the ids are known and after each chunk.
    """
    if query.is_empty():
        raise OptionError("give a query: `chemsys`, `elements`, `ids`, `stable`, `energy_above_hull`, `band_gap` or `formation_energy`")
    if chunk_size < 1:
        raise OptionError("`chunk_size` must be at least 1")
    if retries < 0:
        raise OptionError(f"`retries` must be 0 or more, not {retries}")
    _require_mp_api()
    key = _api_key(api_key)
    out = Path(out)
    structures, labels, failures_csv = out / "structures", out / "labels.csv", out / "failures.csv"
    if not labels.exists() and failures_csv.exists():  # not fetch-mp's: never written over
        raise InputError(f"{failures_csv} exists but {out} holds no labels.csv from fetch-mp; choose another output folder")
    structures.mkdir(parents=True, exist_ok=True)
    done = _read_done(labels, structures)
    if not labels.exists():
        _write_atomic(labels, (",".join(["material_id", *LABEL_COLUMNS]) + "\n").encode())
    session = _Session(key, endpoint, retries, backoff)
    try:
        criteria = query.criteria()
        wanted = _matching_ids(session, query, criteria)
        already = sum(1 for i in wanted if i in done)
        missing = [i for i in wanted if i not in done]
        failures: list[tuple[str, str]] = []
        fetched = 0
        if on_progress is not None:
            on_progress(already, len(wanted), 0)
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start : start + chunk_size]
            docs = session.search(material_ids=chunk, **criteria, fields=list(FIELDS), chunk_size=len(chunk))
            rows, returned = [], set()
            for i, doc in enumerate(docs):
                id_, row, reason = _record(doc, structures)
                returned.add(id_)
                if reason is not None:
                    failures.append((id_ or f"record {start + i}", reason))
                else:
                    rows.append(row)
            for id_ in chunk:
                if id_ not in returned:  # asked by id, or listed a moment ago (removed since, or a typo)
                    failures.append((id_, "not returned by the Materials Project"))
            with labels.open("a", encoding="utf-8", newline="") as stream:  # after the chunk's files: a row means done
                csv.writer(stream, lineterminator="\n").writerows(rows)
                stream.flush()
                os.fsync(stream.fileno())
            fetched += len(rows)
            if on_progress is not None:
                on_progress(already + fetched, len(wanted), len(failures))
    finally:
        session.close()
    lines = ["id,reason\n"] + [f"{_csv_cell(i)},{_csv_cell(r)}\n" for i, r in failures]
    _write_atomic(failures_csv, "".join(lines).encode())
    return FetchSummary(matched=len(wanted), fetched=fetched, already=already, failed=len(failures), out=str(out),
                        failures=failures)


def _matching_ids(session: _Session, query: MPQuery, criteria: dict) -> list[str]:
    """The ids to fetch, in the server's order: the given ids, or those the criteria select (among the
    given ids, when both are given). Listing asks for the id field only: cheap for 10^5 materials."""
    ids = list(dict.fromkeys(query.material_ids))
    if not criteria:
        return ids
    if not ids:
        listed = session.search(**criteria, fields=["material_id"], chunk_size=1000)
    else:
        listed = [d for start in range(0, len(ids), 1000)
                  for d in session.search(material_ids=ids[start : start + 1000], **criteria, fields=["material_id"], chunk_size=1000)]
    return list(dict.fromkeys(str(d["material_id"]) for d in listed if isinstance(d, dict) and d.get("material_id")))


def _record(doc: object, structures: Path) -> tuple[str | None, list[str] | None, str | None]:
    """(id, labels row, None) after writing the structure file, or (id, None, reason)."""
    if not isinstance(doc, dict):
        return None, None, "malformed record (not an object)"
    id_ = doc.get("material_id")
    if not isinstance(id_, str) or not _SAFE_ID.match(id_):
        return None, None, f"malformed record (material_id {str(id_)[:40]!r})"
    structure = doc.get("structure")
    if not isinstance(structure, dict):
        return id_, None, "malformed record (no structure)"
    checked = structure_from_dict(id_, structure, "majority")  # disorder is featurize's policy, not an error here
    if isinstance(checked, ParseFailure):
        return id_, None, f"malformed record: {checked.reason}"
    _write_atomic(structures / f"{id_}.json", orjson.dumps(structure, option=orjson.OPT_SERIALIZE_NUMPY))
    return id_, [id_, *(_number(doc.get(c)) for c in LABEL_COLUMNS)], None


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
