"""Valid specs: both syntaxes mean the same Spec; literals, positions and the public API."""
from __future__ import annotations

from pathlib import Path

import pytest
from spec_samples import MOONS_PCERT, MOONS_YAML, PAIRS

from pcert.errors import SpecError, UserError
from pcert.spec import load_spec, metrics_for, parse_spec, resolve_path
from pcert.spec.metrics import budget_names
from pcert.spec.model import BoundedThreat, GeneralThreat


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_both_syntaxes_give_the_same_spec(spec_dir: Path, name: str) -> None:
    pcert_text, yaml_text = PAIRS[name]
    a = parse_spec(pcert_text, str(spec_dir / "a.pcert"), "pcert")
    b = parse_spec(yaml_text, str(spec_dir / "b.yaml"), "yaml")
    assert a.model_dump() == b.model_dump()
    assert a.source_text == pcert_text and b.source_text == yaml_text
    for spec, text in ((a, pcert_text), (b, yaml_text)):   # every position lies inside the text
        lines = text.splitlines()
        assert {"threat"} <= set(spec.positions)
        assert all(1 <= line <= len(lines) and 1 <= col <= len(lines[line - 1])
                   for line, col in spec.positions.values())


def test_scores_ensemble_needs_no_model_data_or_train(spec_dir: Path) -> None:
    spec = parse_spec(PAIRS["scores"][0], str(spec_dir / "s.pcert"))
    assert spec.model is None and spec.data is None and spec.train is None
    assert spec.ensemble is not None and resolve_path(spec, spec.ensemble.path or "") == spec_dir / "votes.npz"
    with pytest.raises(SpecError, match="missing statements 'model', 'data', 'train'"):
        parse_spec(PAIRS["scores"][0].replace("ensemble scores { path: \"votes.npz\" }", "ensemble dpa { members: 5 }"),
                   check_files=False)


def test_moons_values() -> None:
    spec = parse_spec(MOONS_PCERT, check_files=False)
    assert isinstance(spec.threat, BoundedThreat)
    assert spec.threat.features.n == [0, 1, 5, 10]          # a list is a sweep
    assert spec.threat.features.eps == 0.01
    assert spec.threat.labels.norm == "0" and spec.threat.features.norm == "inf"
    assert spec.bounds == "crown+ibp" and spec.output == "runs"
    assert spec.train.loss == "cross_entropy" and spec.train.lr_decay == 0.6
    assert spec.data.source == "halfmoons" and spec.data.train == 3000
    assert [g.metric for g in spec.gates] == ["certified_accuracy", "nominal_accuracy"]
    assert spec.gates[0].at == {"n": 10.0} and spec.gates[1].at is None


def test_ensemble_values() -> None:
    pcert_text, _ = PAIRS["ensemble"]
    spec = parse_spec(pcert_text, check_files=False)
    assert spec.ensemble is not None and spec.ensemble.kind == "fa"
    assert (spec.ensemble.members, spec.ensemble.spread) == (50, 16)
    assert spec.vote == "roe" and spec.member.kind == "agt" and spec.member.n == [1, 2, 4]
    assert spec.certify.kind == "multi_sample" and spec.certify.time_limit == 600.0
    assert spec.executor.kind == "ray" and spec.executor.address == "auto"
    assert isinstance(spec.threat, GeneralThreat) and spec.threat.K == [1, 5, 10]
    assert spec.train.lr == pytest.approx(1e-3)


def test_positions_point_at_values() -> None:
    spec = parse_spec(MOONS_PCERT, check_files=False)
    assert spec.positions["threat.features.n"] == (6, 17)
    assert spec.positions["threat.features.n.3"] == (6, 27)
    assert spec.positions["threat"] == (5, 1)
    assert spec.positions["gates.0"] == (13, 1)
    assert spec.positions["gates.1.value"] == (14, 26)
    assert spec.positions["model"] == (2, 7)
    ys = parse_spec(MOONS_YAML, fmt="yaml", check_files=False)
    assert ys.positions["threat.features.n"] == (13, 17)
    assert ys.positions["gates.0.at.n"] == (20, 40)        # inside the quoted gate string
    assert ys.locate("threat.features.unknown") == ys.positions["threat.features"]


def _with_time_limit(literal: str) -> str:
    pcert_text, _ = PAIRS["ensemble"]
    return pcert_text.replace("time_limit: 10m", f"time_limit: {literal}")


@pytest.mark.parametrize("literal,seconds", [("600s", 600.0), ("10m", 600.0), ("1h", 3600.0),
                                             ("1.5h", 5400.0), ("90", 90.0), ("2.5", 2.5)])
def test_durations(literal: str, seconds: float) -> None:
    spec = parse_spec(_with_time_limit(literal), check_files=False)
    assert spec.certify.time_limit == seconds
    _, yaml_text = PAIRS["ensemble"]
    ys = parse_spec(yaml_text.replace("time_limit: 600s", f"time_limit: {literal}"), fmt="yaml",
                    check_files=False)
    assert ys.certify.time_limit == seconds


def test_duration_with_unknown_unit_is_a_syntax_error() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_with_time_limit("10min"), check_files=False)
    assert "unexpected name 'min'" in info.value.diagnostics[0].message


@pytest.mark.parametrize("literal,value", [("1e-3", 1e-3), ("2.5E2", 250.0), (".5", 0.5), ("3", 3.0),
                                           ("+1.0", 1.0)])
def test_number_literals(literal: str, value: float) -> None:
    spec = parse_spec(MOONS_PCERT.replace("eps: 0.01", f"eps: {literal}"), check_files=False)
    assert isinstance(spec.threat, BoundedThreat) and spec.threat.features.eps == value


def test_sweeps_in_every_budget_and_multiline_lists() -> None:
    text = MOONS_PCERT.replace("eps: 0.01", "eps: [0.0,\n    0.01, 0.1,]").replace("m: 0,", "m: [0, 2],")
    spec = parse_spec(text, check_files=False)
    assert isinstance(spec.threat, BoundedThreat)
    assert spec.threat.features.eps == [0.0, 0.01, 0.1] and spec.threat.labels.m == [0, 2]
    assert spec.positions["threat.features.eps.1"] == (7, 5)


def test_statement_order_is_free_and_comments_are_ignored() -> None:
    lines = MOONS_PCERT.splitlines()
    reordered = "# leading comment\n\n" + "\n".join(lines[9:] + lines[:4] + lines[4:9]) + "  # trailing"
    assert parse_spec(reordered, check_files=False).model_dump() == \
        parse_spec(MOONS_PCERT, check_files=False).model_dump()


def test_defaults_and_word_shorthand() -> None:
    text = ('model "m.onnx"\ndata digits { train: 100 }\ntrain { batch: 10, lr: 0.1, loss: cross_entropy }\n'
            "threat bounded\nmember plain\n")
    spec = parse_spec(text, check_files=False)
    assert spec.version == 1 and spec.train.optimizer == "sgd" and spec.objective.kind == "targeted"
    assert spec.bounds == "ibp" and spec.vote == "plurality" and spec.gates == []
    ys = parse_spec("model: m.onnx\ndata: {source: digits, train: 100}\n"
                    "train: {batch: 10, lr: 0.1, loss: cross_entropy}\nthreat: {kind: bounded}\nmember: plain\n",
                    fmt="yaml", check_files=False)
    assert ys.model_dump() == spec.model_dump()


def test_did_you_mean_hints() -> None:
    bad = (MOONS_PCERT.replace("threat bounded", "threat bonded").replace("bounds crown+ibp", "bonds crown+ibp")
           .replace("precision float32", "precision flaot32").replace("lr_decay:", "lr_dcay:"))
    with pytest.raises(SpecError) as info:
        parse_spec(bad, check_files=False)
    hints = {d.message.split()[-1] if "invalid" not in d.message else d.message.split()[2]: d.hint
             for d in info.value.diagnostics}
    assert hints == {"'bonded'": "did you mean 'bounded'?", "'bonds'": "did you mean 'bounds'?",
                     "'flaot32'": "did you mean 'float32'?", "train": "did you mean 'lr_decay'?"}


def test_all_errors_of_a_file_are_reported_together() -> None:
    bad = MOONS_PCERT.replace("epochs: 5", "epochs: five").replace("norm: inf }", "norm: 7 }") + "colour red\n"
    with pytest.raises(SpecError) as info:
        parse_spec(bad, "x.pcert", check_files=False)
    assert [(d.line, d.col) for d in info.value.diagnostics] == [(4, 21), (6, 49), (17, 1)]
    text = str(info.value)
    assert text.count("x.pcert:") == 3 and "hint:" in text


def test_rendered_diagnostic_format() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(MOONS_PCERT.replace("loss: cross_entropy", "loss: crossentropy"), "s.pcert",
                   check_files=False)
    assert str(info.value).splitlines() == [
        "s.pcert:4:67: error: invalid value 'crossentropy' for train.loss",
        "    train sgd { epochs: 5, batch: 3000, lr: 1.0, lr_decay: 0.6, loss: crossentropy }",
        "    " + " " * 66 + "^",
        "  hint: did you mean 'cross_entropy'?",
    ]


@pytest.mark.parametrize("suffix,text", [(".pcert", MOONS_PCERT), (".yaml", MOONS_YAML), (".yml", MOONS_YAML)])
def test_load_spec_by_suffix_and_resolve_path(spec_dir: Path, suffix: str, text: str) -> None:
    path = spec_dir / f"moons{suffix}"
    path.write_text(text, encoding="utf-8")
    spec = load_spec(path)
    assert spec.source_path == str(path)
    assert resolve_path(spec, spec.model) == spec_dir / "models" / "moons_mlp.onnx"
    assert resolve_path(spec, spec.model).is_file()


def test_load_spec_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read spec"):
        load_spec(tmp_path / "missing.pcert")
    with pytest.raises(UserError, match="unknown spec suffix"):
        load_spec(tmp_path / "spec.json")
    (tmp_path / "binary.pcert").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="cannot read spec"):
        load_spec(tmp_path / "binary.pcert")
    with pytest.raises(SpecError, match="not found"):   # files are checked relative to the spec
        (tmp_path / "moons.pcert").write_text(MOONS_PCERT, encoding="utf-8")
        load_spec(tmp_path / "moons.pcert")


def test_metrics_and_budgets() -> None:
    moons = parse_spec(MOONS_PCERT, check_files=False)
    assert metrics_for(moons) == {"certified_accuracy", "nominal_accuracy"}
    assert set(budget_names(moons.threat)) == {"n", "m", "eps", "nu"}
    reg = parse_spec(PAIRS["regression"][0], check_files=False)
    assert metrics_for(reg) == {"worst_case_mse", "best_case_mse", "nominal_mse"}
    ens = parse_spec(PAIRS["ensemble"][0], check_files=False)
    assert metrics_for(ens) == {"certified_accuracy", "per_sample_certified_accuracy", "nominal_accuracy",
                                "multi_sample_certified_accuracy"}
    assert budget_names(ens.threat) == ("K",)
    for objective, metrics in [("untargeted { metric: cross_entropy }",
                                {"worst_case_cross_entropy", "nominal_cross_entropy"}),
                               ("untargeted { metric: accuracy }", {"worst_case_accuracy", "nominal_accuracy"}),
                               ("backdoor { eps: 0.1 }", {"backdoor_certified_accuracy", "nominal_accuracy"})]:
        text = MOONS_PCERT.replace("targeted { on: test }", objective).replace("gate ", "# gate ")
        assert metrics_for(parse_spec(text, check_files=False)) == metrics
    per_sample = PAIRS["ensemble"][0].replace(
        "certify multi_sample { batch: 400, time_limit: 10m, solver: auto }", "certify per_sample").replace(
        "multi_sample_certified_accuracy", "per_sample_certified_accuracy")
    assert "multi_sample_certified_accuracy" not in metrics_for(parse_spec(per_sample, check_files=False))


def test_unknown_format_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown spec format"):
        parse_spec(MOONS_PCERT, fmt="toml")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt,text", [("pcert", "x " + "[" * 1500 + "]" * 1500),
                                      ("yaml", "x: " + "[" * 1500 + "]" * 1500)], ids=["pcert", "yaml"])
def test_absurd_nesting_is_a_spec_error(fmt: str, text: str) -> None:
    with pytest.raises(SpecError, match="nests lists or blocks too deeply"):
        parse_spec(text, fmt=fmt, check_files=False)  # type: ignore[arg-type]


def test_language_reference_documents_every_field() -> None:
    """docs/language.md must name every keyword and field of the model (no silent drift)."""
    from pydantic import BaseModel

    from pcert.spec import model

    doc = (Path(__file__).parents[2] / "docs" / "language.md").read_text(encoding="utf-8")
    for cls in vars(model).values():
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls.__module__ == model.__name__:
            for name in cls.model_fields:
                if name not in ("source_path", "source_text", "positions"):
                    assert f"`{name}`" in doc, f"{cls.__name__}.{name} is not documented"


def test_files_of_a_string_spec_resolve_against_the_working_directory(
        spec_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(spec_dir)
    spec = parse_spec(MOONS_PCERT)                       # files exist under the cwd
    assert resolve_path(spec, spec.model) == Path.cwd() / "models" / "moons_mlp.onnx"
    assert resolve_path(spec, spec_dir / "abs.onnx") == spec_dir / "abs.onnx"
    monkeypatch.chdir(spec_dir / "models")
    with pytest.raises(SpecError, match="file 'models/moons_mlp.onnx' not found"):
        parse_spec(MOONS_PCERT)


def test_several_syntax_errors_are_reported_at_once() -> None:
    text = ('pcert 1\nmodel "m.onnx\ndata halfmoons { train: 3000 test: 1 }\ntrain sgd {\n  epochs 5\n}\n'
            "threat bounded\ngate x >=\nseed 0\n")
    with pytest.raises(SpecError) as info:
        parse_spec(text, check_files=False)
    assert [(d.line, d.col, d.message.split(";")[0]) for d in info.value.diagnostics] == [
        (2, 7, "unterminated string"),
        (3, 30, "unexpected name 'test'"),
        (5, 10, "unexpected number '5'"),
        (8, 10, "unexpected end of line"),
    ]
