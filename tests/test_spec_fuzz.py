"""Property tests of the sweep-spec loader (hypothesis; no Ray, nothing trained).

Invalid specs are a valid one with one mutation (an unknown key at any level, a
wrong type, an out-of-range number, an empty list, a duplicate, an unknown
name, a bad pair, a ``model_train`` entry outside the ladder, a missing field,
a setting that needs another). Each gives one :class:`~w2s_ray.config.ConfigError`
whose path is the mutated field or a prefix of it; through ``plan`` and
``sweep``: exit 2, one stderr line naming that path, nothing on stdout, no
``--out``. Valid specs round-trip through :func:`spec_to_dict` and YAML, and
``w2s-ray plan`` accepts them. Over 1,000 specs are generated per run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from w2s_ray import data as data_mod
from w2s_ray import models as models_mod
from w2s_ray.cli import main
from w2s_ray.config import LOSS_NAMES, ConfigError, SplitSizes, TrainOverrides
from w2s_ray.spec import PairRule, ResourcesSpec, SearchSpec, SweepSpec, load_spec, spec_from_dict, spec_to_dict

# per mutation kind (16 kinds): 800 loader and 128 CLI examples; with 125 valid ones, 1,053 specs
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLI_FUZZ = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALL_DATASETS = sorted(data_mod.REGISTRY)
CLI_DATASETS = ["vader", "social-iqa"]  # the BIG-bench fixtures conftest puts in W2S_RAY_HOME
# supervisors that only label (tfidf) stay out of random ladders: a ladder of them alone has no pair
MODELS = [m for m in models_mod.REGISTRY if not models_mod.supervisor_only(m)] + [
    "some-org/some-model", "hub:other-org/tiny-model"]
SECTIONS: dict[str, type] = {"": SweepSpec, "split": SplitSizes, "train": TrainOverrides,
                             "resources": ResourcesSpec, "search": SearchSpec}
DEFAULT_LISTS = {"losses": ["xent"], "alpha_max": [0.5], "warmup_frac": [0.2], "seeds": [0]}

NAN, INF = float("nan"), float("inf")


# -- helpers ------------------------------------------------------------------------------


def join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def on_path(err: str, expected: str) -> bool:
    """``err`` is ``expected`` or one of its prefixes (whole components only)."""
    return err == expected or (expected.startswith(err) and expected[len(err)] in ".[") if err else False


def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def type_ok(tp: Any, v: Any) -> bool:
    """Whether ``v`` has the annotation's type (what the loader's type pass accepts)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(type_ok(a, v) for a in args)
    if tp is type(None):
        return v is None
    if origin is Literal:
        return any(type(v) is type(a) and v == a for a in args)
    if origin is list:
        return isinstance(v, list) and all(type_ok(args[0], e) for e in v)
    if origin is tuple:
        return isinstance(v, list) and len(v) == len(args) and all(type_ok(a, e) for a, e in zip(args, v))
    if origin is dict:
        return isinstance(v, dict) and all(type_ok(args[0], k) and type_ok(args[1], x) for k, x in v.items())
    if dataclasses.is_dataclass(tp):
        return isinstance(v, dict)  # what is inside is the nested section's business
    if tp is float:
        return type(v) in (float, int)
    return type(v) is tp


POOL = [None, True, False, 0, 7, -3, 1.5, "x", "", "12", [], ["x"], [1], [None], {}, {"k": 1}]


def wrong_values(tp: Any, element: bool = False) -> list[Any]:
    """Values of the wrong type for a field (a list field's elements are mutated on their own)."""
    core = strip_optional(tp)
    out = [v for v in POOL if not type_ok(tp, v)]
    options = typing.get_args(core) if typing.get_origin(core) in (Union, types.UnionType) else (core,)
    if not element and any(typing.get_origin(o) in (list, tuple) for o in options):  # bad elements name the element
        out = [v for v in out if not isinstance(v, list)]
    if not element and (typing.get_origin(core) is dict or dataclasses.is_dataclass(core)):
        out = [v for v in out if not isinstance(v, dict)]
    return out


def first_duplicate(values: list[Any]) -> int:
    seen: set = set()
    for i, v in enumerate(values):
        if v in seen:
            return i
        seen.add(v)
    raise AssertionError("no duplicate")


# -- valid specs ------------------------------------------------------------------------

unit = st.floats(0, 1, allow_nan=False)
open_unit = st.floats(0, 1, exclude_min=True, exclude_max=True)
pos = st.integers(1, 64)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,24}", fullmatch=True)
# YAML folds control characters
texts = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30)


@st.composite
def maybe(draw, key: str, strategy, out: dict, none_ok: bool = False) -> None:
    """Leave ``key`` out, set it to None (when allowed) or to a drawn value."""
    how = draw(st.sampled_from(["omit", "value"] + (["none"] if none_ok else [])))
    if how == "value":
        out[key] = draw(strategy)
    elif how == "none":
        out[key] = None


@st.composite
def train_specs(draw) -> dict:
    out: dict = {}
    # batch sizes and minibatches from these sets always divide, whatever the merge order
    for key, strat in (("lr", open_unit), ("batch_size", st.sampled_from([8, 16, 32])),
                       ("minibatch_size", st.sampled_from([1, 2, 4, 8])), ("epochs", st.integers(1, 5)),
                       ("max_len", st.integers(1, 512))):
        draw(maybe(key, strat, out, none_ok=True))
    return out


@st.composite
def pair_lists(draw, ladder: list[str]) -> list[list[str]]:
    all_pairs = [[w, s] for w in ladder for s in ladder]
    return draw(st.lists(st.sampled_from(all_pairs), min_size=1, max_size=4, unique_by=tuple))


@st.composite
def valid_specs(draw, cli: bool = False) -> dict:
    datasets = CLI_DATASETS if cli else ALL_DATASETS
    ladder = draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=4, unique=True))
    d: dict[str, Any] = {
        "name": draw(names),
        "datasets": draw(st.lists(st.sampled_from(datasets), min_size=1, max_size=3, unique=True)),
        "models": ladder,
    }
    pairs = st.one_of(st.sampled_from(["weak<=strong"] + (["weak<strong"] if len(ladder) > 1 else [])),
                      pair_lists(ladder))
    if len(ladder) > 1:
        draw(maybe("pairs", pairs, d))
    else:
        d["pairs"] = draw(pairs)
    draw(maybe("losses", st.lists(st.sampled_from(LOSS_NAMES), min_size=1, max_size=3, unique=True), d))
    draw(maybe("alpha_max", st.lists(unit, min_size=1, max_size=3, unique=True), d))
    draw(maybe("warmup_frac", st.lists(unit, min_size=1, max_size=3, unique=True), d))
    draw(maybe("seeds", st.lists(st.integers(0, 2**31), min_size=1, max_size=3, unique=True), d))
    draw(maybe("description", texts, d))
    search = None
    if draw(st.booleans()):
        search = {}
        draw(maybe("objectives", st.lists(st.sampled_from(["weak", "oracle"]), min_size=1, max_size=2,
                                          unique=True), search))
        for key in ("num_samples", "max_concurrent", "grace_period"):
            draw(maybe(key, pos, search))
        draw(maybe("reduction_factor", st.integers(2, 5), search))
        draw(maybe("seed", st.integers(0, 10**6), search))
        for key in ("alpha_max", "warmup_frac"):
            draw(maybe(key, st.lists(unit, min_size=2, max_size=2).map(sorted), search))
        draw(maybe("lr", st.lists(open_unit, min_size=2, max_size=2).map(sorted), search, none_ok=True))
        d["search"] = search
    elif draw(st.booleans()):
        d["search"] = None
    split: dict[str, Any] = {}
    for key in ("n_weak", "n_strong", "n_test"):
        if cli:
            split[key] = draw(st.integers(1, 20))
        else:
            draw(maybe(key, st.integers(1, 5000), split))
    draw(maybe("n_val", st.integers(0, 10), split))
    if search is not None:
        split["n_val"] = draw(st.integers(1, 10))
    if split or cli or draw(st.booleans()):
        d["split"] = split
    if draw(st.booleans()):
        d["train"] = draw(train_specs())
    if draw(st.booleans()):
        chosen = draw(st.lists(st.sampled_from(ladder), max_size=len(ladder), unique=True))
        d["model_train"] = {m: draw(train_specs()) for m in chosen}
    if draw(st.booleans()):
        r: dict[str, Any] = {}
        profile = draw(st.sampled_from(["local", "cluster", None]))
        if profile:
            r["profile"] = profile
        draw(maybe("address", st.sampled_from(["auto", "ray://head:10001"]), r, none_ok=True))
        if profile == "cluster":
            r["storage"] = draw(st.sampled_from(["/mnt/nfs/w2s", "s3://bucket/w2s", "gs://bucket/w2s"]))
        else:
            draw(maybe("storage", st.sampled_from(["/tmp/w2s-store", "s3://bucket/w2s"]), r, none_ok=True))
        for key in ("num_cpus", "torch_threads"):
            draw(maybe(key, pos, r, none_ok=True))
        for key in ("trial_cpus", "worker_cpus"):
            draw(maybe(key, st.floats(0.01, 16), r))
        for key in ("num_workers", "max_concurrent_trials"):
            draw(maybe(key, pos, r))
        draw(maybe("use_gpu", st.booleans(), r))
        draw(maybe("max_failures", st.integers(-1, 5), r))
        draw(maybe("driver_resource", st.just("w2s_driver"), r, none_ok=True))
        d["resources"] = r
    return d


# -- mutations --------------------------------------------------------------------------
# Each takes (draw, data) and mutates ``data`` in place, returning the expected error path.


def _section(data: dict, loc: str) -> dict:
    """The mapping at ``loc`` ("", split, train, resources, search, model_train.<m>), made if absent."""
    if not loc:
        return data
    if loc.startswith("model_train."):
        return data.setdefault("model_train", {}).setdefault(loc.split(".", 1)[1], {})
    if data.get(loc) is None:
        data[loc] = {}
    return data[loc]


def _section_cls(loc: str) -> type:
    return TrainOverrides if loc.startswith("model_train.") else SECTIONS[loc]


def _locations(draw, data: dict) -> str:
    return draw(st.sampled_from(["", "split", "train", "resources", "search",
                                 f"model_train.{draw(st.sampled_from(data['models']))}"]))


def _ensure_search(data: dict) -> dict:
    """A valid search section (and the validation rows it needs)."""
    if data.get("search") is None:
        data["search"] = {}
    split = data.setdefault("split", {})
    split["n_val"] = max(1, split.get("n_val") or 0)
    return data["search"]


def m_unknown_key(draw, data: dict) -> str:
    loc = _locations(draw, data)
    allowed = {f.name for f in dataclasses.fields(_section_cls(loc))}
    key = draw(st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_ -]{0,15}", fullmatch=True), st.integers(-5, 99))
               .filter(lambda k: k not in allowed))
    _section(data, loc)[key] = draw(st.sampled_from([1, "x", None, [1], {"a": 1}]))
    return join(loc, str(key))


def m_wrong_type(draw, data: dict) -> str:
    loc = _locations(draw, data)
    cls = _section_cls(loc)
    field = draw(st.sampled_from(sorted(hints(cls))))
    wrong = wrong_values(hints(cls)[field])
    if field == "test_curves":  # true / false: 1 / 0 points per epoch
        wrong = [v for v in wrong if not isinstance(v, bool)]
    _section(data, loc)[field] = draw(st.sampled_from(wrong))
    return join(loc, field)


LIST_FIELDS = {"": ["datasets", "models", "losses", "alpha_max", "warmup_frac", "seeds"],
               "search": ["objectives", "alpha_max", "warmup_frac", "lr"]}


def m_wrong_element(draw, data: dict) -> str:
    loc = draw(st.sampled_from(["", "search"]))
    field = draw(st.sampled_from(LIST_FIELDS[loc]))
    section = _ensure_search(data) if loc == "search" else data
    values = section.get(field)
    if not values:
        values = {"objectives": ["weak"], "lr": [1e-5, 1e-4]}.get(field) or DEFAULT_LISTS.get(field) or [0.0, 1.0]
    values = list(values)
    i = draw(st.integers(0, len(values) - 1))
    elem_tp = typing.get_args(strip_optional(hints(_section_cls(loc))[field]))[0]
    values[i] = draw(st.sampled_from(wrong_values(elem_tp, element=True)))
    section[field] = values
    return join(join(loc, field), i)


BAD_UNIT = st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.000001), st.just(NAN))
NON_POSITIVE = st.integers(-10**6, 0)


def r_unit_list(draw, data: dict) -> str:
    field = draw(st.sampled_from(["alpha_max", "warmup_frac"]))
    values = list(data.get(field) or DEFAULT_LISTS[field])
    i = draw(st.integers(0, len(values) - 1))
    values[i] = draw(BAD_UNIT)
    data[field] = values
    return f"{field}[{i}]"


def r_seed(draw, data: dict) -> str:
    values = list(data.get("seeds") or [0])
    i = draw(st.integers(0, len(values) - 1))
    values[i] = draw(st.integers(-10**6, -1))
    data["seeds"] = values
    return f"seeds[{i}]"


def _train_loc(draw, data: dict) -> str:
    return draw(st.sampled_from(["train", f"model_train.{draw(st.sampled_from(data['models']))}"]))


NEGATIVE = st.integers(-10**6, -1)
BAD_LR = st.one_of(st.floats(max_value=0), st.floats(min_value=1), st.just(NAN), st.integers(-5, 0))
OUT_OF_RANGE = {  # field (TRAIN: train or model_train.<model>) -> values outside its range
    **{f"split.{f}": NON_POSITIVE for f in ("n_weak", "n_strong", "n_test")}, "split.n_val": NEGATIVE,
    **{f"TRAIN.{f}": NON_POSITIVE for f in ("batch_size", "minibatch_size", "epochs", "max_len")},
    "TRAIN.lr": BAD_LR, "TRAIN.lora_r": NEGATIVE,
    **{f"resources.{f}": NON_POSITIVE for f in ("num_workers", "max_concurrent_trials", "num_cpus", "torch_threads")},
    **{f"resources.{f}": st.one_of(st.floats(max_value=0, allow_nan=False), st.integers(-5, 0), st.just(INF))
       for f in ("trial_cpus", "worker_cpus")},
    "resources.max_failures": st.integers(-10**6, -2),
    "resources.profile": names.filter(lambda s: s not in ("local", "cluster")),
    "pairs": st.text(max_size=12).filter(lambda s: s not in typing.get_args(PairRule)),
    **{f"search.{f}": NON_POSITIVE for f in ("num_samples", "max_concurrent", "grace_period")},
    "search.reduction_factor": st.integers(-5, 1), "search.seed": NEGATIVE,
}


def r_out_of_range(draw, data: dict) -> str:
    path = draw(st.sampled_from(sorted(OUT_OF_RANGE)))
    values = OUT_OF_RANGE[path]
    if path.startswith("TRAIN."):
        path = _train_loc(draw, data) + path[len("TRAIN"):]
    loc, _, field = path.rpartition(".")
    (_ensure_search(data) if loc == "search" else _section(data, loc))[field] = draw(values)
    return path


def r_search_range(draw, data: dict) -> str:
    search = _ensure_search(data)
    field = draw(st.sampled_from(["alpha_max", "warmup_frac"]))
    how = draw(st.sampled_from(["low", "high", "order"]))
    if how == "low":
        search[field] = [draw(BAD_UNIT), draw(unit)]
        return f"search.{field}[0]"
    if how == "high":
        search[field] = [draw(unit), draw(BAD_UNIT)]
        return f"search.{field}[1]"
    lo, hi = sorted(draw(st.lists(unit, min_size=2, max_size=2, unique=True)))
    search[field] = [hi, lo]
    return f"search.{field}[1]"


def r_search_lr(draw, data: dict) -> str:
    search = _ensure_search(data)
    how = draw(st.sampled_from(["low", "high", "order"]))
    if how == "low":
        search["lr"] = [draw(st.floats(max_value=0, allow_nan=False)), draw(open_unit)]
        return "search.lr[0]"
    if how == "high":
        search["lr"] = [draw(open_unit), draw(st.floats(min_value=1, allow_nan=False))]
        return "search.lr[1]"
    lo, hi = sorted(draw(st.lists(open_unit, min_size=2, max_size=2, unique=True)))
    search["lr"] = [hi, lo]
    return "search.lr"


def r_search_len(draw, data: dict) -> str:
    field = draw(st.sampled_from(["alpha_max", "warmup_frac", "lr"]))
    _ensure_search(data)[field] = draw(st.lists(open_unit, max_size=4).filter(lambda v: len(v) != 2))
    return f"search.{field}"


def m_empty(draw, data: dict) -> str:
    field = draw(st.sampled_from(LIST_FIELDS[""] + ["pairs", "search.objectives"]))
    if field == "search.objectives":
        _ensure_search(data)["objectives"] = []
    else:
        data[field] = []
    return field


def m_duplicate(draw, data: dict) -> str:
    field = draw(st.sampled_from(LIST_FIELDS[""] + ["search.objectives"]))
    if field == "search.objectives":
        section, key = _ensure_search(data), "objectives"
        values = list(section.get(key) or ["weak"])
    else:
        section, key = data, field
        values = list(data.get(field) or DEFAULT_LISTS[field])
    copy_of = draw(st.sampled_from(values))
    values.insert(draw(st.integers(values.index(copy_of) + 1, len(values))), copy_of)
    section[key] = values
    return f"{field}[{first_duplicate(values)}]"


unknown_names = st.from_regex(r"[a-z][a-z0-9-]{2,20}", fullmatch=True)


def m_unknown_name(draw, data: dict) -> str:
    field = draw(st.sampled_from(["datasets", "models", "losses", "search.objectives"]))
    known = {"datasets": set(data_mod.REGISTRY), "models": set(models_mod.REGISTRY), "losses": set(LOSS_NAMES),
             "search.objectives": {"weak", "oracle"}}[field]
    # a name that is no registry entry, no hub id (one "/") and no local directory
    name = draw(unknown_names.filter(lambda s: s not in known and not os.path.isdir(s)))
    if field == "search.objectives":
        section, key = _ensure_search(data), "objectives"
        values = list(section.get(key) or ["weak"])
    else:
        section, key = data, field
        values = list(data.get(field) or DEFAULT_LISTS[field])
    i = draw(st.integers(0, len(values) - 1))
    values[i] = name
    section[key] = values
    return f"{field}[{i}]"


def m_bad_pairs(draw, data: dict) -> str:
    ladder = data["models"]
    how = draw(st.sampled_from(["length", "outside", "no_pair"]))
    if how == "no_pair":
        data["models"] = ladder[:1]
        data["pairs"] = "weak<strong"
        data.pop("model_train", None)
        return "pairs"
    pairs = [list(p) for p in data["pairs"]] if isinstance(data.get("pairs"), list) else [[ladder[0], ladder[-1]]]
    i = draw(st.integers(0, len(pairs)))
    if how == "length":
        bad = draw(st.lists(st.sampled_from(ladder), max_size=4).filter(lambda p: len(p) != 2))
        pairs.insert(i, bad)
        data["pairs"] = pairs
        return f"pairs[{i}]"
    outsider = draw(st.one_of(st.sampled_from(sorted(set(MODELS) - set(ladder))), unknown_names)
                    .filter(lambda m: m not in ladder))
    j = draw(st.integers(0, 1))
    pair = [ladder[0], ladder[-1]]
    pair[j] = outsider
    pairs.insert(i, pair)
    data["pairs"] = pairs
    return f"pairs[{i}][{j}]"


def m_model_train_outside(draw, data: dict) -> str:
    outsider = draw(st.one_of(st.sampled_from(sorted(set(MODELS) - set(data["models"]))), unknown_names)
                    .filter(lambda m: m not in data["models"]))
    data.setdefault("model_train", {})[outsider] = draw(train_specs())
    return f"model_train.{outsider}"


def m_missing(draw, data: dict) -> str:
    field = draw(st.sampled_from(["datasets", "models"]))
    del data[field]
    return field


def m_needs(draw, data: dict) -> str:
    if draw(st.booleans()):
        _ensure_search(data)
        data["split"]["n_val"] = 0
        return "split.n_val"
    r = _section(data, "resources")
    r["profile"] = "cluster"
    storage = draw(st.sampled_from([None, "", "omit"]))
    if storage == "omit":
        r.pop("storage", None)
    else:
        r["storage"] = storage
    return "resources.storage"


MUTATORS = {f.__name__: f for f in (
    m_unknown_key, m_wrong_type, m_wrong_element, m_empty, m_duplicate, m_unknown_name, m_bad_pairs,
    m_model_train_outside, m_missing, m_needs,
    # out-of-range numbers and disallowed values
    r_unit_list, r_seed, r_out_of_range, r_search_range, r_search_lr, r_search_len)}


@st.composite
def invalid_specs(draw, kind: str, cli: bool = False) -> tuple[dict, str]:
    """A valid spec with one ``kind`` mutation, and the path its error must name."""
    data = copy.deepcopy(draw(valid_specs(cli=cli)))
    return data, MUTATORS[kind](draw, data)


# -- the loader ---------------------------------------------------------------------------


def _one_error(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        spec_from_dict(data)
    err = e.value
    assert type(err) is ConfigError and str(err) == f"{err.path}: {err.message}"
    assert err.message and "\n" not in err.message
    return err


@pytest.mark.parametrize("kind", sorted(MUTATORS))
@FUZZ
@given(data=st.data())
def test_invalid_spec_names_the_mutated_field(kind, data):
    data, expected = data.draw(invalid_specs(kind))
    err = _one_error(data)
    assert on_path(err.path, expected), f"{kind}: expected {expected!r}, got {err.path!r}: {err.message}"


def _write(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _assert_usage_error(command: str, spec_path: Path, result: tuple[int, str, str], expected: str) -> str:
    code, out, err = result
    assert code == 2, (code, out, err)
    assert out == "", out
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    prefix = f"w2s-ray {command}: error: {spec_path}: "
    assert lines[0].startswith(prefix), lines[0]
    path = lines[0][len(prefix):].split(": ", 1)[0]
    assert on_path(path, expected), f"expected {expected!r} in {lines[0]!r}"
    return path


@pytest.mark.parametrize("kind", sorted(MUTATORS))
@CLI_FUZZ
@given(data=st.data())
def test_cli_refuses_invalid_spec_with_one_error_line_and_writes_nothing(kind, data):
    data, expected = data.draw(invalid_specs(kind, cli=True))
    _one_error(data)  # invalid before the CLI ever sees it: `sweep` below can never start Ray
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.yaml"
        _write(spec_path, data)
        _assert_usage_error("plan", spec_path, _cli("plan", str(spec_path)), expected)
        out = Path(tmp) / "out"
        _assert_usage_error("sweep", spec_path, _cli("sweep", str(spec_path), "--out", str(out)), expected)
        assert not out.exists()
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["spec.yaml"]


@pytest.mark.parametrize("dataset", CLI_DATASETS)
def test_cli_refuses_splits_larger_than_the_dataset(dataset, tmp_path):
    from w2s_ray.data import load_rows, resolve_dataset

    have = len(load_rows(resolve_dataset(dataset)))
    spec = {"name": "big", "datasets": [dataset], "models": ["minilm-l6-1l", "minilm-l6-2l"],
            "split": {"n_weak": have, "n_strong": 1, "n_test": 1}}
    spec_from_dict(spec)  # valid as a spec: only counting the rows finds it
    path = tmp_path / "big.yaml"
    _write(path, spec)
    _assert_usage_error("plan", path, _cli("plan", str(path)), "split")
    out = tmp_path / "out"
    _assert_usage_error("sweep", path, _cli("sweep", str(path), "--out", str(out)), "split")
    assert not out.exists()


# -- valid specs round-trip --------------------------------------------------------------


@ROUND_TRIP
@given(valid_specs())
def test_valid_specs_round_trip(data):
    spec = spec_from_dict(data)
    as_dict = spec_to_dict(spec)
    assert spec_from_dict(as_dict) == spec
    assert spec_to_dict(spec_from_dict(as_dict)) == as_dict
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        _write(path, as_dict)
        assert load_spec(path) == spec
        unnamed = {k: v for k, v in as_dict.items() if k != "name"}
        _write(path, unnamed)
        assert load_spec(path) == dataclasses.replace(spec, name="spec")  # the file's stem


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_specs(cli=True))
def test_valid_small_specs_plan_cleanly(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        _write(path, data)
        code, out, err = _cli("plan", str(path))
        assert code == 0 and err == "", err
        spec = spec_from_dict(data)
        assert f"= {len(spec.experiments())} cells" in out


# -- values that type-check but cannot run (found by earlier fuzzing) ---------------------------

BASE = {"name": "t", "datasets": ["vader"], "models": ["minilm-l6-1l", "minilm-l6-2l"],
        "split": {"n_weak": 10, "n_strong": 10, "n_test": 10}}

GAPS = [
    pytest.param({"pairs": [["minilm-l6-1l", "minilm-l6-2l"], ["minilm-l6-1l", "minilm-l6-2l"]]}, "pairs[1]",
                 id="duplicate-pair"),
    pytest.param({"train": {"batch_size": 16, "minibatch_size": 5}}, "train.minibatch_size",
                 id="minibatch-does-not-divide-batch"),
    pytest.param({"model_train": {"minilm-l6-2l": {"batch_size": 12, "minibatch_size": 8}}},
                 "model_train.minilm-l6-2l.minibatch_size", id="model-minibatch-does-not-divide-batch"),
]


@pytest.mark.parametrize("changes,expected", GAPS)
def test_loader_gaps(changes, expected):
    err = _one_error({**BASE, **changes})
    assert on_path(err.path, expected), (err.path, err.message)


def test_minibatch_that_does_not_divide_is_refused_by_the_cli(tmp_path):
    """Exit 2, nothing started, and the error names the spec path."""
    path = tmp_path / "mb.yaml"
    _write(path, {**BASE, "train": {"batch_size": 16, "minibatch_size": 5}})
    code, out, err = _cli("plan", str(path))
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "minibatch_size" in err


def test_cli_error_is_one_line_even_for_a_key_with_a_line_break(tmp_path):
    path = tmp_path / "nl.yaml"
    _write(path, {**BASE, "resources": {"max_concurrent\ntrials": 2}})
    code, out, err = _cli("sweep", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and out == "" and not (tmp_path / "out").exists()
    assert len(err.splitlines()) == 1, err


def test_nan_and_inf_never_pass_as_unit_values():
    for bad in (NAN, INF, -INF):
        assert _one_error({**BASE, "alpha_max": [bad]}).path == "alpha_max[0]"
        assert _one_error({**BASE, "train": {"lr": bad}}).path == "train.lr"
