"""Plain-data configuration and result types of the AGT engine (the contract with the compiler)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from pcert.errors import UserError


@dataclass(frozen=True)
class TrainConfig:
    """SGD recipe: lr_t = lr / (1 + lr_decay * t), t = step index; seeded shuffle per epoch."""

    epochs: int
    batch: int
    lr: float
    lr_decay: float = 0.0
    momentum: float = 0.0
    loss: Literal["mse", "cross_entropy", "binary_cross_entropy"] = "cross_entropy"
    clip: float | None = None
    clip_method: Literal["element", "norm"] = "element"
    frozen: int = 0
    order_seed: int = 0

    def validate(self, n_parametric: int) -> None:
        if self.epochs < 1 or self.batch < 1:
            raise UserError(f"training: epochs ({self.epochs}) and batch ({self.batch}) must be >= 1")
        if not self.lr > 0 or self.lr_decay < 0 or not 0 <= self.momentum < 1:
            raise UserError(f"training: need lr > 0, lr_decay >= 0, 0 <= momentum < 1 (got {self.lr}, {self.lr_decay}, {self.momentum})")
        if self.loss not in ("mse", "cross_entropy", "binary_cross_entropy"):
            raise UserError(f"training: unknown loss {self.loss!r}")
        if self.clip is not None and not self.clip > 0:
            raise UserError(f"training: clip must be > 0 (got {self.clip})")
        if self.clip_method not in ("element", "norm"):
            raise UserError(f"training: clip_method must be 'element' or 'norm' (got {self.clip_method!r})")
        if not 0 <= self.frozen < n_parametric:
            raise UserError(f"training: frozen = {self.frozen} must leave at least one of the {n_parametric} parametric layers trainable")


@dataclass(frozen=True)
class BudgetPoint:
    """One poisoning budget (a sweep point); at most n feature- and m label-poisoned points per batch."""

    kind: Literal["bounded", "unbounded"] = "bounded"
    n: int = 0
    eps: float = 0.0
    feature_norm: Literal["inf", "1", "2"] = "inf"
    m: int = 0
    nu: float = 0.0
    label_norm: Literal["0", "inf"] = "0"
    label_classes: tuple[int, ...] | None = None
    paired: bool = False

    def validate(self, cfg: TrainConfig) -> None:
        if self.kind not in ("bounded", "unbounded"):
            raise UserError(f"budget: unknown kind {self.kind!r}")
        if self.n < 0 or self.m < 0 or self.eps < 0 or self.nu < 0:
            raise UserError(f"budget: n, m, eps, nu must be >= 0 (got {self.n}, {self.m}, {self.eps}, {self.nu})")
        if self.feature_norm not in ("inf", "1", "2") or self.label_norm not in ("0", "inf"):
            raise UserError(f"budget: feature_norm must be inf/1/2 and label_norm 0/inf (got {self.feature_norm}, {self.label_norm})")
        if self.kind == "unbounded" and cfg.clip is None:
            raise UserError("budget: an unbounded adversary needs gradient clipping (train clip: kappa), see AGT Thm B.1")
        if self.kind == "bounded" and self.m > 0 and self.label_norm == "0" and cfg.loss == "mse":
            raise UserError("budget: label flipping (label_norm 0) needs a classification loss; use label_norm inf with nu for mse")

    def budget(self) -> int:
        """Points per batch the adversary may touch (before capping at the untrusted count)."""
        if self.kind == "unbounded":
            return self.n
        return max(self.n, self.m) if self.paired else self.n + self.m


@dataclass(frozen=True)
class Objective:
    kind: Literal["targeted", "untargeted", "backdoor"] = "targeted"
    metric: Literal["mse", "cross_entropy", "accuracy"] = "mse"
    eps: float = 0.0
    norm: Literal["inf", "1", "2"] = "inf"
    classes: tuple[int, ...] | None = None


@dataclass
class AGTResult:
    nominal: list[Tensor]
    lower: list[Tensor]
    upper: list[Tensor]
    points: tuple[BudgetPoint, ...]
    steps: list[dict]
    first_nonfinite_step: list[int | None]
    arithmetic: dict


@dataclass
class Certificates:
    lower: Tensor
    upper: Tensor
    nominal_output: Tensor
    prediction: Tensor
    certified: Tensor
    metrics: list[dict[str, float]]
