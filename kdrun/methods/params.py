"""Every method's options, typed: the schemas behind `loss.*`, checked before any run (no torch here, so
`kdrun <verb> --help` and `--cfg job` stay instant). A method's code (kdrun/methods/<name>.py) registers
itself with its schema from here; `PARAMS` says which schema each `loss=<name>` takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdrun.core.errors import ConfigError


def _require(ok: bool, message: str) -> None:
    """A range an option's type cannot express: a one-line ConfigError naming the key and what is allowed."""
    if not ok:
        raise ConfigError(message)


def _non_negative(params: Any, keys: tuple[str, ...]) -> None:
    """Loss weights are >= 0 and unbounded (papers write CE 0.1 + KD 9); an unset one (None) is left alone."""
    for key in keys:
        value = getattr(params, key)
        _require(value is None or value >= 0, f"loss.{key} must be >= 0 (got {value})")


DEFAULT_ALPHA = 0.9
"""The classic form's KD weight when top-level alpha is unset: RepDistiller's and mdistiller's CE 0.1 + KD 0.9."""


@dataclass
class Params:
    """Every method's options start here; `name` picks the method."""

    name: str = MISSING


@dataclass
class LogitParams(Params):
    """Options every logit loss shares. logit_std: z-score student and teacher logits before the
    temperature softmax of the distillation term (Sun et al. 2024)."""

    logit_std: bool = False


@dataclass
class WeightedParams(LogitParams):
    """The KD-family losses (kd, ls, kd_pt, kd_sim) weigh CE and KD one of two ways: the classic top-level
    alpha (KD alpha, CE 1 - alpha; unset: DEFAULT_ALPHA), or explicit ce_weight and kd_weight as a paper writes
    them (logit standardization's CE 0.1 + KD 9), which alpha in [0, 1] cannot express. One form per run."""

    ce_weight: Optional[float] = None
    kd_weight: Optional[float] = None

    def __post_init__(self) -> None:
        _non_negative(self, ("ce_weight", "kd_weight"))
        _require((self.ce_weight is None) == (self.kd_weight is None), "loss.ce_weight and loss.kd_weight are set "
                 f"together (got {self.ce_weight} and {self.kd_weight}); e.g. loss.ce_weight=0.1 loss.kd_weight=9")

    def explicit(self) -> bool:
        return self.kd_weight is not None

    def weights(self, alpha: Optional[float]) -> tuple[float, float]:
        """(CE weight, KD weight) of this run; alpha and the explicit weights both set is refused."""
        if not self.explicit():
            kd = DEFAULT_ALPHA if alpha is None else alpha
            return 1 - kd, kd
        _require(alpha is None, f"alpha={alpha} and loss.ce_weight/loss.kd_weight both weight the loss; use one "
                 "form: drop alpha (alpha=null) or drop loss.ce_weight and loss.kd_weight")
        return self.ce_weight, self.kd_weight


def resolved_alpha(alpha: Optional[float], params: Params) -> Optional[float]:
    """The alpha a run used, for its summary: DEFAULT_ALPHA when unset; None when the loss gives explicit weights."""
    if isinstance(params, WeightedParams) and params.explicit():
        return None
    return DEFAULT_ALPHA if alpha is None else alpha


@dataclass
class FeatureParams(LogitParams):
    """ce_weight, kd_weight: CE and Hinton-KD (at top-level T) weights; beta: the feature term's weight.

    RepDistiller's defaults: CE 1, KD 0 (kd_weight=1 gives its "method + KD" rows); beta per method.
    """

    ce_weight: float = 1.0
    kd_weight: float = 0.0
    beta: float = 1.0

    def __post_init__(self) -> None:
        _non_negative(self, ("ce_weight", "kd_weight", "beta"))


@dataclass
class ATParams(FeatureParams):
    beta: float = 1000.0
    p: float = 2.0


@dataclass
class CRDParams(FeatureParams):
    beta: float = 0.8
    feat_dim: int = 128
    negatives: int = 16384
    nce_t: float = 0.07
    momentum: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.feat_dim >= 1 and self.negatives >= 1 and self.nce_t > 0 and 0 <= self.momentum < 1,
                 f"crd needs loss.feat_dim >= 1, loss.negatives >= 1, loss.nce_t > 0 and loss.momentum "
                 f"in [0, 1) (got {self.feat_dim}, {self.negatives}, {self.nce_t}, {self.momentum})")


@dataclass
class DISTParams(LogitParams):
    beta: float = 2.0
    gamma: float = 2.0


@dataclass
class FitNetParams(FeatureParams):
    """student_stage, teacher_stage: the hint stages; null picks each model's middle stage."""

    beta: float = 100.0
    student_stage: Optional[str] = None
    teacher_stage: Optional[str] = None


@dataclass
class LSParams(WeightedParams):
    """epsilon: the non-target mass; null matches the teacher's average at T on the training set."""

    epsilon: Optional[float] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.epsilon is None or 0 <= self.epsilon < 1,
                 f"loss.epsilon must be in [0, 1) or null to match the teacher (got {self.epsilon})")


@dataclass
class MLKDParams(LogitParams):
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    temperatures: list = field(default_factory=lambda: [2.0, 3.0, 5.0, 6.0])  # besides the top-level T

    def __post_init__(self) -> None:
        _non_negative(self, ("ce_weight", "kd_weight"))


@dataclass
class PKTParams(FeatureParams):
    beta: float = 30000.0


@dataclass
class ReviewKDParams(FeatureParams):
    warmup: int = 20
    max_mid_channels: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.warmup >= 0 and self.max_mid_channels >= 1, "loss.warmup must be >= 0 and "
                 f"loss.max_mid_channels >= 1 (got {self.warmup}, {self.max_mid_channels})")


@dataclass
class RKDParams(FeatureParams):
    distance_weight: float = 25.0
    angle_weight: float = 50.0

    def relation_bytes(self, batch: int) -> int:
        """Float32 memory of the relation matrices one step builds: the angle term's batch^3 angles for the
        student, its gradient and the teacher, with the loss's temporary; else batch^2 distances."""
        return 4 * 4 * (batch ** 3 if self.angle_weight > 0 else batch ** 2)


@dataclass
class DKDParams(LogitParams):
    """alpha, beta: the weights of TCKD and NCKD; warmup: epochs over which the KD term ramps up (0: none)."""

    alpha: float = 1.0
    beta: float = 8.0
    warmup: int = 0

    def __post_init__(self) -> None:
        _require(self.alpha >= 0, f"loss.alpha must be >= 0 (got {self.alpha}); DKD's TCKD weight, try loss.alpha=1")
        _require(self.beta >= 0, f"loss.beta must be >= 0 (got {self.beta}); DKD's NCKD weight, try loss.beta=8")
        _require(self.warmup >= 0, f"loss.warmup must be >= 0 epochs (got {self.warmup})")


@dataclass
class OFAParams(FeatureParams):
    """OFA-KD (Hao et al. 2023): ce_weight * CE + kd_weight * OFA(final logits) + beta * sum over student
    stages of OFA(projector(stage)); eps: the loss's target-class modulation (1: plain soft-target CE);
    temperature: its softmax temperature (OFA's own, 1; not the top-level T)."""

    kd_weight: float = 1.0
    eps: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.eps > 0 and self.temperature > 0,
                 f"loss.eps and loss.temperature must be > 0 (got {self.eps}, {self.temperature})")


@dataclass
class DeiTParams(Params):
    """DeiT's distillation token (Touvron et al. 2021): variant hard (the teacher's argmax) or soft (KL at the
    top-level T); kd_weight: DeiT's alpha on the distillation head's term, CE on the class head gets 1 - it."""

    variant: str = "hard"
    kd_weight: float = 0.5

    def __post_init__(self) -> None:
        _require(self.variant in ("hard", "soft"), f"loss.variant must be hard or soft (got {self.variant})")
        _require(0 <= self.kd_weight <= 1, f"loss.kd_weight must be in [0, 1] (got {self.kd_weight}); DeiT's is 0.5")


def parse_params(loss: Any, alpha: Optional[float] = None) -> Any:
    """The `loss` config node as the method's typed schema: unknown keys, wrong types and ranges fail here, and
    so does a KD-family loss given both weight forms (the run's top-level `alpha` and explicit weights)."""
    given = dict(loss) if isinstance(loss, dict) else OmegaConf.to_container(loss, resolve=True)
    name = given.get("name")
    if name not in PARAMS:
        raise ConfigError(f"unknown loss '{name}'; choose one of: {', '.join(sorted(PARAMS))}")
    known = {f.name for f in fields(PARAMS[name])}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"loss '{name}' has no option {', '.join(unknown)}; its options: "
                          f"{', '.join(sorted(known - {'name'}))}")
    try:
        params = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PARAMS[name]), given))
    except OmegaConfBaseException as error:
        text = str(error).splitlines()[0]
        raise ConfigError(f"invalid value for loss.{getattr(error, 'key', '') or ''}: {text}") from None
    if isinstance(params, WeightedParams):
        params.weights(alpha)
    return params


PARAMS: dict[str, type] = {
    "ce": Params, "kd": WeightedParams, "kd_pt": WeightedParams, "kd_sim": WeightedParams, "ls": LSParams, "dkd": DKDParams,
    "mlkd": MLKDParams, "dist": DISTParams, "fitnet": FitNetParams, "at": ATParams, "rkd": RKDParams,
    "pkt": PKTParams, "crd": CRDParams, "reviewkd": ReviewKDParams, "ofa": OFAParams, "deit": DeiTParams,
}
