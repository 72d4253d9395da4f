"""A corpus of malformed specs: each must fail with one exact position and message."""
from __future__ import annotations

from pathlib import Path

import pytest
from spec_samples import ENSEMBLE_PCERT as E
from spec_samples import ENSEMBLE_YAML as EY
from spec_samples import MOONS_PCERT as P
from spec_samples import MOONS_YAML as Y
from spec_samples import REGRESSION_PCERT as R
from spec_samples import REGRESSION_YAML as RY
from spec_samples import SCORES_PCERT as SC

from pcert.errors import SpecError, UserError
from pcert.spec import parse_spec


def sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (name, text, syntax, line, col, message substring)
CASES = [
    # ---- .pcert syntax
    ("colon", sub(P, "train: 3000,", "train 3000,"), "pcert", 3, 24, "expected ':' or '{'"),
    ("unterminated", sub(P, '"models/moons_mlp.onnx"', '"models/moons_mlp.onnx'), "pcert", 2, 7, "unterminated string"),
    ("unclosed_block", sub(P, "}\nobjective", "objective"), "pcert", 8, 11, "unexpected name 'targeted'"),
    ("bad_op", sub(P, "certified_accuracy >=", "certified_accuracy =>"), "pcert", 13, 25, "unexpected '='; expected a comparison"),
    ("two_values", sub(P, "seed 0", "seed 0 1"), "pcert", 16, 8, "unexpected number '1'"),
    ("list_comma", sub(P, "[0, 1, 5, 10]", "[0 1, 5, 10]"), "pcert", 6, 20, "expected ',', ']' or a new line"),
    ("bad_char", sub(P, "eps: 0.01", "eps: $0.01"), "pcert", 6, 37, "unexpected character '$'"),
    ("gate_no_value", sub(P, "nominal_accuracy >= 0.8", "nominal_accuracy >="), "pcert", 14, 25, "unexpected end of line; expected a number"),
    ("eof_in_block", P.rstrip("\n") + "\nexecutor local {\n", "pcert", 17, 17, "unexpected end of file; expected '}' or a name"),
    ("list_tag", sub(P, "threat bounded {", "threat [1] {"), "pcert", 5, 8, "takes a single word before its block"),
    ("float_twice", sub(P, "lr: 1.0,", "lr: 1.0.0,"), "pcert", 4, 44, "unexpected number '.0'"),
    # ---- .pcert names and types
    ("unknown_stmt", sub(P, "bounds crown+ibp", "bound crown+ibp"), "pcert", 10, 1, "unknown statement 'bound'"),
    ("unknown_field", sub(P, "epochs: 5", "epochz: 5"), "pcert", 4, 13, "unknown field 'epochz' in train"),
    ("bad_loss", sub(P, "loss: cross_entropy", "loss: cross_entropi"), "pcert", 4, 67, "invalid value 'cross_entropi' for train.loss"),
    ("bad_norm", sub(P, "norm: inf }", "norm: 3 }"), "pcert", 6, 49, "invalid value '3' for threat.features.norm"),
    ("bad_bounds", sub(P, "bounds crown+ibp", "bounds crown+ibb"), "pcert", 10, 8, "invalid value 'crown+ibb' for bounds"),
    ("bad_kind", sub(P, "threat bounded", "threat bonded"), "pcert", 5, 8, "unknown threat kind 'bonded'"),
    ("bad_source", sub(P, "data halfmoons", "data halfmoon"), "pcert", 3, 6, "invalid value 'halfmoon' for data.source"),
    ("dup_stmt", P + "seed 1\n", "pcert", 17, 1, "duplicate statement 'seed' (first given at line 16)"),
    ("dup_field", sub(P, "test: 1000,", "test: 1000, test: 5,"), "pcert", 3, 43, "duplicate field 'test'"),
    ("int_type", sub(P, "epochs: 5,", "epochs: 5.5,"), "pcert", 4, 21, "train.epochs must be an integer, got 5.5"),
    ("float_type", sub(P, "lr: 1.0,", 'lr: "fast",'), "pcert", 4, 41, "train.lr must be a number, got the string 'fast'"),
    ("duration_lr", sub(P, "lr: 1.0,", "lr: 10s,"), "pcert", 4, 41, "train.lr takes a plain number, not a duration"),
    ("missing_field", sub(P, " batch: 3000,", ""), "pcert", 4, 1, "missing field 'batch' in train"),
    ("missing_stmt", sub(P, 'model "models/moons_mlp.onnx"          # relative to this file\n', ""), "pcert", 1, 1, "missing statement 'model'"),
    ("missing_tag", sub(P, "data halfmoons {", "data {"), "pcert", 3, 1, "missing the source of data"),
    ("sweep_nested", sub(P, "[0, 1, 5, 10]", "[0, [1], 5]"), "pcert", 6, 21, "threat.features.n.1 must be an integer, got a list"),
    ("bool_type", sub(P, "seed 0", "seed true"), "pcert", 16, 6, "seed must be an integer, got true"),
    ("block_for_value", sub(P, "device auto", "device auto { x: 1 }"), "pcert", 12, 1, "device must be one of cpu, cuda, auto, got a block"),
    # ---- .pcert meaning
    ("neg_n", sub(P, "[0, 1, 5, 10]", "[0, -1, 5, 10]"), "pcert", 6, 21, "n (poisoned points) must be >= 0, got -1"),
    ("neg_eps", sub(P, "eps: 0.01", "eps: -0.01"), "pcert", 6, 37, "eps must be >= 0, got -0.01"),
    ("lr_zero", sub(P, "lr: 1.0,", "lr: 0,"), "pcert", 4, 41, "train.lr must be > 0, got 0.0"),
    ("epochs_zero", sub(P, "epochs: 5,", "epochs: 0,"), "pcert", 4, 21, "train.epochs must be >= 1, got 0"),
    ("frozen_neg", sub(P, "lr_decay: 0.6,", "lr_decay: 0.6, frozen: -1,"), "pcert", 4, 69, "train.frozen must be >= 0, got -1"),
    ("n_gt_batch", sub(P, "[0, 1, 5, 10]", "[0, 1, 5, 4000]"), "pcert", 6, 17, "n = 4000 exceeds the batch size 3000"),
    ("nm_gt_batch", sub(P, "m: 0,", "m: 2995,"), "pcert", 6, 17, "n + m = 3005 exceeds the batch size 3000"),
    ("unbounded_clip", sub(R, "threat bounded {\n  features { n: 2, eps: [0.0, 0.01], norm: 2 }\n  labels { m: [0, 3], nu: 0.5, norm: inf }\n  paired: true\n}", "threat unbounded { n: [1, 5] }").replace(" clip: 1.0", "").replace(" at eps = 0.01, m = 3", ""), "pcert", 5, 1, "an unbounded threat needs gradient clipping"),
    ("unbounded_batch", sub(R, "threat bounded {\n  features { n: 2, eps: [0.0, 0.01], norm: 2 }\n  labels { m: [0, 3], nu: 0.5, norm: inf }\n  paired: true\n}", "threat unbounded { n: [1, 100] }").replace(" at eps = 0.01, m = 3", ""), "pcert", 5, 23, "n = 100 must be smaller than the batch size 100"),
    ("backdoor_eps", sub(P, "objective targeted { on: test }", "objective backdoor { norm: inf }"), "pcert", 9, 1, "missing field 'eps' in objective"),
    ("multi_no_ens", P + "certify multi_sample { batch: 10 }\n", "pcert", 17, 1, "multi_sample certification needs an ensemble"),
    ("agt_no_ens", P + "member agt { n: [1] }\n", "pcert", 17, 1, "member agt needs an ensemble"),
    ("agt_no_n", sub(E, "member agt { n: [1, 2, 4] }", "member agt"), "pcert", 7, 1, "member agt needs budgets 'n'"),
    ("fa_spread", sub(E, "ensemble fa { members: 50, spread: 16 }", "ensemble fa { members: 50 }"), "pcert", 5, 1, "ensemble fa needs 'spread'"),
    ("dpa_star_seeds", sub(E, "ensemble fa { members: 50, spread: 16 }", "ensemble dpa_star { members: 50 }"), "pcert", 5, 1, "ensemble dpa_star needs 'seeds'"),
    ("scores_path", sub(E, "ensemble fa { members: 50, spread: 16 }", "ensemble scores"), "pcert", 5, 1, "ensemble scores needs 'path'"),
    ("bb_fa", sub(E, "solver: auto", "solver: branch_bound"), "pcert", 8, 61, "solver branch_bound searches sets of poisoned members"),
    ("general_no_ens", sub(P, "threat bounded {\n  features { n: [0, 1, 5, 10], eps: 0.01, norm: inf }   # a list is a sweep\n  labels   { m: 0, nu: 1, norm: 0 }                      # norm 0 = label flipping\n}", "threat general { K: [1, 5, 10] }").replace(" at n = 10", ""), "pcert", 5, 1, "a general threat (K poisoned partitions) needs an ensemble"),
    ("gate_metric", sub(P, "gate nominal_accuracy", "gate worst_case_mse <= 1\ngate nominal_accuracy"), "pcert", 14, 6, "this spec does not produce metric 'worst_case_mse'"),
    ("gate_metric_typo", sub(P, "gate certified_accuracy", "gate certifed_accuracy"), "pcert", 13, 6, "this spec does not produce metric 'certifed_accuracy'"),
    ("gate_budget", sub(P, "at n = 10", "at k = 10"), "pcert", 13, 40, "'k' is not a budget of threat bounded"),
    ("gate_sweep", sub(P, "at n = 10", "at n = 11"), "pcert", 13, 40, "gate at n = 11 is not a point of the sweep [0, 1, 5, 10]"),
    ("ce_norm_inf", sub(P, "norm: 0 }", "norm: inf }"), "pcert", 7, 33, "label norm inf (regression) does not fit loss cross_entropy"),
    ("mse_norm_0", sub(R, "norm: inf }", "norm: 0 }"), "pcert", 7, 38, "label norm 0 (label flipping) does not fit loss mse"),
    ("version", sub(P, "pcert 1", "pcert 2"), "pcert", 1, 7, "unknown pcert version 2"),
    ("missing_model_file", sub(P, "models/moons_mlp.onnx", "models/missing.onnx"), "pcert", 2, 7, "file 'models/missing.onnx' not found"),
    ("missing_data_file", sub(E, "data/test.csv", "data/tst.csv"), "pcert", 3, 59, "file 'data/tst.csv' not found"),
    ("time_limit_neg", sub(E, "time_limit: 10m", "time_limit: -5"), "pcert", 8, 48, "certify.time_limit must be > 0, got -5.0"),
    ("ensemble_bounded", sub(E, "threat general { K: [1, 5, 10] }", "threat bounded { features { n: 1 } }").replace(" at K = 5", ""), "pcert", 10, 1, "an ensemble is certified against threat general, not bounded"),
    ("scores_missing_file", sub(SC, "votes.npz", "vote.npz"), "pcert", 3, 25, "file 'vote.npz' not found"),
    ("generator_no_train", sub(P, "train: 3000, ", ""), "pcert", 3, 1, "data halfmoons needs 'train'"),
    # ---- YAML
    ("y_syntax", sub(Y, "  epochs: 5", " epochs: 5"), "yaml", 6, 2, "YAML:"),
    ("y_unknown_key", sub(Y, "model:", "modle:"), "yaml", 2, 1, "unknown key 'modle'"),
    ("y_version_key", sub(Y, "pcert: 1", "version: 1"), "yaml", 1, 1, "unknown key 'version'"),
    ("y_int_type", sub(Y, "epochs: 5", "epochs: five"), "yaml", 6, 11, "train.epochs must be an integer, got 'five'"),
    ("y_gate_string", sub(Y, '"certified_accuracy >= 0.85 at n = 10"', '"certified_accuracy >= at n = 10"'), "yaml", 20, 28, "unexpected 'at'; expected a number"),
    ("y_gate_op", sub(Y, 'op: ">="', 'op: "=>"'), "yaml", 21, 36, "invalid value '=>' for gates.1.op"),
    ("y_kind", sub(Y, "kind: bounded", "kind: bounde"), "yaml", 12, 9, "unknown threat kind 'bounde'"),
    ("y_missing_kind", sub(Y, "  kind: bounded\n", ""), "yaml", 11, 1, "missing the kind of threat"),
    ("y_dup_key", Y + "seed: 2\n", "yaml", 24, 1, "duplicate key 'seed' (first given at line 23)"),
    ("y_list_item", sub(Y, "n: [0, 1, 5, 10]", "n: [0, x, 5, 10]"), "yaml", 13, 21, "threat.features.n.1 must be an integer, got 'x'"),
    ("y_empty_sweep", sub(Y, "n: [0, 1, 5, 10]", "n: []"), "yaml", 13, 17, "a sweep needs at least one value"),
    ("y_root_list", "- pcert: 1\n", "yaml", 1, 1, "must be a mapping"),
    ("y_quoted_duration", sub(EY, "time_limit: 600s", 'time_limit: "600s"'), "yaml", 12, 55, "certify.time_limit must be a number, got the string '600s'"),
    ("y_pcert_version", sub(Y, "pcert: 1", "pcert: 3"), "yaml", 1, 8, "unknown pcert version 3"),
    ("y_missing_file", sub(EY, "path: data/train.csv", "path: data/nope.csv"), "yaml", 5, 9, "file 'data/nope.csv' not found"),
    ("y_unknown_field", sub(Y, "lr_decay: 0.6", "lr_deacy: 0.6"), "yaml", 9, 3, "unknown field 'lr_deacy' in train"),
    ("y_gate_budget", sub(RY, "m = 3", "m = 4"), "yaml", 11, 51, "gate at m = 4 is not a point of the sweep [0, 3]"),
    ("y_null", sub(Y, "model: models/moons_mlp.onnx   # relative to this file", "model:"), "yaml", 2, 7, "missing key 'model'"),
    ("y_nested_type", sub(Y, "labels: {m: 0, nu: 1, norm: 0}", "labels: [1, 2]"), "yaml", 14, 11, "threat.labels must be a mapping, got a list"),
    ("y_bad_tab", sub(Y, "seed: 0", "seed:\t\x07"), "yaml", 3, 70, "YAML:"),
]


def test_corpus_is_large_and_covers_both_syntaxes() -> None:
    assert len(CASES) >= 45
    assert sum(fmt == "yaml" for _, _, fmt, *_ in CASES) >= 15
    assert len({name for name, *_ in CASES}) == len(CASES)


@pytest.mark.parametrize("name,text,fmt,line,col,message", CASES, ids=[c[0] for c in CASES])
def test_malformed_spec(spec_dir: Path, name: str, text: str, fmt: str, line: int, col: int,
                        message: str) -> None:
    path = spec_dir / ("spec.pcert" if fmt == "pcert" else "spec.yaml")
    with pytest.raises(SpecError) as info:
        parse_spec(text, str(path), fmt)  # type: ignore[arg-type]
    err = info.value
    assert isinstance(err, UserError) and err.exit_code == 2
    found = [(d.line, d.col) for d in err.diagnostics if message in d.message]
    assert found == [(line, col)], [d.render() for d in err.diagnostics]
    for d in err.diagnostics:
        assert d.path == str(path)
        assert "pydantic" not in d.message and "validation error" not in d.message
        rendered = d.render().splitlines()
        assert rendered[0] == f"{path}:{d.line}:{d.col}: error: {d.message}"
        assert rendered[2].index("^") - 4 == d.col - 1
