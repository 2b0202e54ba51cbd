"""Security properties: safe YAML, artifact paths confined to the store, no pickle, no remote code.

* specs and cluster files are read with ``yaml.safe_load``: a ``!!python/…``
  tag is a ConfigError (or a validation error), never executed, and no
  module calls an unsafe YAML loader;
* artifact keys and file names cannot leave ``<root>/objects/<key>/``;
* every ``torch.load`` in the package passes ``weights_only=True`` and nothing
  unpickles (``pickle``/``dill``/``joblib``/``read_pickle``/``allow_pickle``);
* ``trust_remote_code`` is False for every registry model, for hub ids
  resolved by ``resolve_model`` and in what ``load_pretrained`` passes to
  ``transformers``; the package never writes ``trust_remote_code=True``.
"""

from __future__ import annotations

import ast
import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import w2s_ray
from w2s_ray.artifacts import ArtifactStore, check_key
from w2s_ray.config import ConfigError
from w2s_ray.models import REGISTRY, load_pretrained, resolve_model
from w2s_ray.spec import load_spec, spec_from_dict

PKG = Path(w2s_ray.__file__).parent
SOURCES = sorted(PKG.rglob("*.py"))
KEY = "train-" + "ab" * 12
VALID = {"name": "t", "datasets": ["vader"], "models": ["minilm-l6-1l", "minilm-l6-2l"],
         "split": {"n_weak": 10, "n_strong": 10, "n_test": 10}}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain, "" otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _calls() -> list[tuple[Path, ast.Call, str]]:
    """Every call in the package with its callee's dotted name, import aliases resolved."""
    out = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                head, _, rest = name.partition(".")
                if head in aliases:
                    name = aliases[head] + (f".{rest}" if rest else "")
                out.append((path, node, name))
    return out


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PKG.parent)}:{node.lineno}"


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


# -- YAML -----------------------------------------------------------------------------------


def _tagged_docs(marker: Path) -> list[str]:
    return [
        f"!!python/object/apply:os.mkdir [{str(marker)!r}]\n",
        f"name: t\ndatasets: !!python/object/apply:os.mkdir [{str(marker)!r}]\nmodels: [minilm-l6]\n",
        "!!python/object:w2s_ray.spec.SweepSpec {name: x, datasets: [vader], models: [minilm-l6]}\n",
        "name: !!python/name:os.system\ndatasets: [vader]\nmodels: [minilm-l6-1l, minilm-l6]\n",
        f"!!python/object/new:subprocess.Popen [[mkdir, {str(marker)!r}]]\n",
    ]


def test_python_yaml_tags_are_refused_not_run(tmp_path):
    from w2s_ray.cli import main

    marker = tmp_path / "pwned"
    for i, text in enumerate(_tagged_docs(marker)):
        path = tmp_path / f"evil{i}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_spec(path)
        assert e.value.path == "spec" and "not valid YAML" in e.value.message, e.value
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["sweep", str(path), "--out", str(tmp_path / "out")])
        assert code == 2 and out.getvalue() == "" and len(err.getvalue().splitlines()) == 1
        assert err.getvalue().startswith("w2s-ray sweep: error: ")
        assert not marker.exists() and not (tmp_path / "out").exists()


def test_cluster_files_with_python_tags_are_invalid_not_run(tmp_path):
    from w2s_ray.cluster import validate_file

    marker = tmp_path / "pwned"
    for i, text in enumerate(_tagged_docs(marker)):
        path = tmp_path / f"cluster{i}.yaml"
        path.write_text(text)
        assert validate_file(path), text  # some error, never a pass
    assert not marker.exists()


UNSAFE_YAML = {"yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
               "yaml.full_load_all"}
SAFE_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader"}


def test_no_unsafe_yaml_loader_in_the_package():
    bad = []
    for path, call, name in _calls():
        if name in UNSAFE_YAML:
            loader = _kw(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
            if loader is None or _dotted(loader) not in SAFE_LOADERS:
                bad.append(_where(path, call))
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _dotted(node) in ("yaml.Loader", "yaml.UnsafeLoader",
                                                                     "yaml.FullLoader", "yaml.CLoader"):
                bad.append(_where(path, node))
    assert not bad, f"unsafe YAML loading at {bad}"
    assert any(name == "yaml.safe_load" for _, _, name in _calls())  # the check looked at real loads


# -- the artifact store stays inside its root -----------------------------------------------

# keys and file names that could escape: tests/test_storage.py, on every kind of store


def _inside(path: str, root: Path) -> bool:
    resolved = Path(path).resolve()
    return resolved == root or root in resolved.parents


@settings(max_examples=200, deadline=None)
@given(key=st.one_of(st.text(max_size=40), st.from_regex(r"[a-z]{1,8}-[0-9a-f]{24}", fullmatch=True)),
       parts=st.lists(st.text(st.sampled_from("./\\~ab:"), max_size=8), max_size=3))
def test_any_accepted_path_stays_inside_its_artifact(key, parts):
    store = ArtifactStore("/nonexistent/w2s-store")  # nothing is written: only addresses are computed
    try:
        path = store.path(key, *parts)
    except ValueError:
        return
    assert _inside(path, Path(store.root) / "objects" / key), (key, parts, path)
    assert _inside(path, Path(store.root) / "objects")


def test_a_key_with_a_trailing_newline_is_refused():
    with pytest.raises(ValueError):
        check_key(KEY + "\n")


# -- the spec's name becomes a directory ------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "../../etc/w2s", "/tmp/abs", "a/b", "..", ".", "", "a\\b"])
def test_sweep_name_cannot_escape_the_output_folder(name):
    with pytest.raises(ConfigError) as e:
        spec_from_dict({**VALID, "name": name})
    assert e.value.path == "name"


def test_ordinary_sweep_names_are_accepted():
    for name in ("local", "paper-nlp", "pythia_ladder.v2", "A1"):
        assert spec_from_dict({**VALID, "name": name}).name == name


# -- no pickle ------------------------------------------------------------------------------

PICKLE_CALLS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads", "dill.load",
                "dill.loads", "cloudpickle.load", "cloudpickle.loads", "joblib.load", "pandas.read_pickle",
                "pd.read_pickle", "shelve.open", "marshal.load", "marshal.loads", "numpy.load", "np.load"}


def test_every_torch_load_is_weights_only():
    loads = [(path, call) for path, call, name in _calls() if name in ("torch.load", "torch.serialization.load")]
    assert loads, "expected the Train checkpoint's torch.load (w2s_ray/train.py)"
    for path, call in loads:
        flag = _kw(call, "weights_only")
        assert isinstance(flag, ast.Constant) and flag.value is True, f"{_where(path, call)}: weights_only=True"


def test_nothing_in_the_package_unpickles():
    bad = []
    for path, call, name in _calls():
        if name in PICKLE_CALLS:
            allow = _kw(call, "allow_pickle")
            refuses = allow is None or (isinstance(allow, ast.Constant) and allow.value is False)
            if name.endswith(("np.load", "numpy.load")) and refuses:
                continue  # numpy's default refuses pickled arrays
            bad.append(f"{_where(path, call)}: {name}")
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{_where(path, node)}: import {n}" for n in names
                    if n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve")]
    assert not bad, bad


# -- no remote code ---------------------------------------------------------------------------


def test_registry_models_never_trust_remote_code():
    assert REGISTRY
    for name, spec in REGISTRY.items():
        assert spec.trust_remote_code is False, name
        assert spec.effective()["trust_remote_code"] is False, name


@pytest.mark.parametrize("value", ["some-org/some-model", "hub:some-org/some-model", "EleutherAI/pythia-70m",
                                   "hub:Qwen/Qwen2.5-0.5B", "gpt2"])
def test_resolved_hub_models_never_trust_remote_code(value):
    spec = resolve_model(value)
    assert spec.trust_remote_code is False and spec.effective()["trust_remote_code"] is False


def test_a_local_model_directory_never_trusts_remote_code(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "auto_map": {"AutoModel": "evil.Model"}}')
    assert resolve_model(str(tmp_path)).trust_remote_code is False


def test_load_pretrained_passes_trust_remote_code_false(monkeypatch):
    """What reaches transformers for a hub id: config, weights and tokenizer all with trust_remote_code=False."""
    import types

    import torch
    import transformers

    seen: list[tuple[str, object]] = []
    made = {
        "AutoConfig": lambda: types.SimpleNamespace(model_type="gpt2", is_decoder=False, architectures=None,
                                                    attn_pdrop=0.1),
        "AutoModel": lambda: types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=4)),
        "AutoTokenizer": lambda: types.SimpleNamespace(pad_token=None, eos_token="<eos>"),
    }

    def fake(cls):
        def from_pretrained(src, *args, **kwargs):
            seen.append((cls, kwargs.get("trust_remote_code", "unset")))
            return made[cls]()

        return from_pretrained

    for cls in made:
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", fake(cls))
    for value in ("some-org/some-model", "hub:EleutherAI/pythia-70m"):
        model, _ = load_pretrained(resolve_model(value))
        assert isinstance(model, torch.nn.Module)
    assert sorted({cls for cls, _ in seen}) == sorted(made), seen
    assert all(flag is False for _, flag in seen), seen


def test_the_package_never_enables_remote_code():
    bad = []
    for path, call, _ in _calls():
        flag = _kw(call, "trust_remote_code")
        if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False) \
                and "trust_remote_code" not in ast.unparse(flag):
            bad.append(_where(path, call))  # only False, or the spec's own (False) flag passed through
        if isinstance(flag, ast.Constant) and flag.value is True:
            bad.append(_where(path, call))
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and \
                            isinstance(v, ast.Constant) and v.value is True:
                        bad.append(_where(path, node))
    assert not bad, bad
