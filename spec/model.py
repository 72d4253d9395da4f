"""The typed Spec: what a `.pcert` or YAML file means once parsed and validated.

Both front ends (Lark grammar and YAML) build the same AST and validate it into these
models. Extra fields are forbidden so a typo is an error, not a silently ignored key.
A list in any numeric budget field is a sweep: the runtime evaluates every point of the
cartesian product of the swept budgets in one vectorised run.

``Spec.positions`` maps dotted field paths (``"threat.features.n"``, ``"gates.0"``) to the
1-based (line, col) where the field was written, so later stages (the compiler's checks
against the model and data) can report ``file:line:col`` errors too. Positions, the file
path and the raw text are not part of the plan hash.
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

IntSweep = Union[int, list[int]]
FloatSweep = Union[float, list[float]]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(Strict):
    """Where the data come from and how they are split and scaled."""

    source: Literal["halfmoons", "regression", "digits", "breast_cancer", "diabetes", "csv", "npz", "idx"]
    path: str | None = None            # csv / npz file, relative to the spec file
    test_path: str | None = None       # optional separate test file (csv / npz)
    images: str | None = None          # idx: training images file
    labels: str | None = None          # idx: training labels file
    test_images: str | None = None     # idx: test images file
    test_labels: str | None = None     # idx: test labels file
    label: str | None = None           # csv: name of the label column (default: last column)
    train: int | None = None           # number of training samples (generators: required)
    test: int | None = None            # number of test samples
    noise: float | None = None         # halfmoons / regression noise
    features: int | None = None        # regression: number of input features
    standardize: bool = True           # z-score features with training statistics
    seed: int = 0                      # generator / split seed
    trusted: float | None = None       # fraction (0,1) or count (>= 1) of training data that is trusted


class TrainSpec(Strict):
    """The SGD recipe whose every poisoned run is bounded."""

    optimizer: Literal["sgd"] = "sgd"
    epochs: int = 1
    batch: int                          # batch size
    lr: float
    lr_decay: float = 0.0              # lr_n = lr / (1 + lr_decay * n), n = step index
    momentum: float = 0.0
    loss: Literal["mse", "cross_entropy", "binary_cross_entropy"]
    clip: float | None = None          # gradient clipping level kappa
    clip_method: Literal["element", "norm"] = "element"
    frozen: int = 0                    # number of leading parametric layers kept fixed
    order_seed: int = 0                # seed of the data order (shuffle per epoch)


class FeatureThreat(Strict):
    n: IntSweep = 0
    eps: FloatSweep = 0.0
    norm: Literal["inf", "1", "2"] = "inf"


class LabelThreat(Strict):
    m: IntSweep = 0
    nu: FloatSweep = 1.0               # regression: label perturbation radius
    norm: Literal["0", "inf"] = "0"    # 0 = label flipping (classification), inf = regression
    classes: list[int] | None = None   # flips only into these classes (tighter)


class BoundedThreat(Strict):
    kind: Literal["bounded"] = "bounded"
    features: FeatureThreat = Field(default_factory=FeatureThreat)
    labels: LabelThreat = Field(default_factory=LabelThreat)
    paired: bool = False               # the same points carry feature and label poison


class UnboundedThreat(Strict):
    kind: Literal["unbounded"] = "unbounded"
    n: IntSweep


class GeneralThreat(Strict):
    kind: Literal["general"] = "general"
    K: IntSweep


Threat = Union[BoundedThreat, UnboundedThreat, GeneralThreat]


class UntargetedObjective(Strict):
    kind: Literal["untargeted"] = "untargeted"
    metric: Literal["mse", "cross_entropy", "accuracy"] = "mse"
    on: Literal["test", "train"] = "test"


class TargetedObjective(Strict):
    kind: Literal["targeted"] = "targeted"
    on: Literal["test", "train"] = "test"
    classes: list[int] | None = None   # report per-class certified accuracy for these


class BackdoorObjective(Strict):
    kind: Literal["backdoor"] = "backdoor"
    eps: float
    norm: Literal["inf", "1", "2"] = "inf"
    on: Literal["test", "train"] = "test"


Objective = Union[UntargetedObjective, TargetedObjective, BackdoorObjective]


class EnsembleSpec(Strict):
    kind: Literal["dpa", "dpa_star", "fa", "scores"]
    members: int | None = None         # dpa / dpa_star / fa
    seeds: int | None = None           # dpa_star: trainings per partition (logits averaged)
    spread: int | None = None          # fa: d, partitions per member
    path: str | None = None            # scores: .npz with scores [N, M, C], labels [N] (+ spread map)


class MemberSpec(Strict):
    kind: Literal["plain", "agt"] = "plain"
    n: list[int] | None = None         # agt: poisoned-point budgets tried for R_j(x)


class CertifySpec(Strict):
    kind: Literal["per_sample", "multi_sample"] = "per_sample"
    batch: int | None = None           # multi_sample: test points per MILP
    time_limit: float | None = None    # seconds
    solver: Literal["auto", "milp", "enumerate", "branch_bound"] = "auto"


class ExecutorSpec(Strict):
    kind: Literal["local", "ray"] = "local"
    workers: int | None = None
    address: str | None = None


class Gate(Strict):
    metric: str
    op: Literal[">=", ">", "<=", "<", "=="]
    value: float
    at: dict[str, float] | None = None  # e.g. {"n": 10}


class Spec(Strict):
    """A validated pcert specification."""

    version: int = 1
    # model, data and train are required except for `ensemble scores` (votes computed elsewhere);
    # pcert.spec checks this, so every other spec that reaches the compiler has all three.
    model: str | None = None            # ONNX path, relative to the spec file
    data: DataSpec | None = None
    train: TrainSpec | None = None
    threat: Threat = Field(discriminator="kind")
    objective: Objective = Field(default_factory=TargetedObjective, discriminator="kind")
    bounds: Literal["ibp", "crown", "crown+ibp"] = "ibp"
    precision: Literal["float32", "float64"] = "float32"
    # which training runs the parameter bounds contain: "nominal" = every exact-arithmetic and float64
    # run plus the nominal run in `precision`; "all" = also every run in `precision` (wider margins)
    cover: Literal["nominal", "all"] = "nominal"
    device: Literal["cpu", "cuda", "auto"] = "auto"
    ensemble: EnsembleSpec | None = None
    vote: Literal["plurality", "roe"] = "plurality"
    member: MemberSpec = Field(default_factory=MemberSpec)
    certify: CertifySpec = Field(default_factory=CertifySpec)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    gates: list[Gate] = Field(default_factory=list)
    output: str = "pcert-runs"
    seed: int = 0

    # provenance, not part of the meaning (excluded from the plan hash)
    source_path: str = Field(default="<spec>", exclude=True)
    source_text: str = Field(default="", exclude=True)
    positions: dict[str, tuple[int, int]] = Field(default_factory=dict, exclude=True)

    def locate(self, field_path: str) -> tuple[int, int]:
        """Best known (line, col) for a dotted field path, falling back to its parents."""
        parts = field_path.split(".")
        while parts:
            key = ".".join(parts)
            if key in self.positions:
                return self.positions[key]
            parts.pop()
        return (1, 1)
