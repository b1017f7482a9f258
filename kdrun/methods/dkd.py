"""`dkd`: decoupled KD (Zhao et al. 2022); the formula is on `kdrun.methods.losses.DKDLoss`. Top-level T; alpha unused."""

from dataclasses import dataclass

from kdrun.core.errors import ConfigError
from kdrun.methods.base import LogitLoss, LogitParams, MethodContext, register_method
from kdrun.methods.losses import DKDLoss


@dataclass
class DKDParams(LogitParams):
    """alpha, beta: the weights of TCKD and NCKD; warmup: epochs over which the KD term ramps up (0: none)."""

    alpha: float = 1.0
    beta: float = 8.0
    warmup: int = 0

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ConfigError(f"loss.alpha must be >= 0 (got {self.alpha}); DKD's TCKD weight, try loss.alpha=1")
        if self.beta < 0:
            raise ConfigError(f"loss.beta must be >= 0 (got {self.beta}); DKD's NCKD weight, try loss.beta=8")
        if self.warmup < 0:
            raise ConfigError(f"loss.warmup must be >= 0 epochs (got {self.warmup})")


@register_method("dkd", DKDParams)
def build(params: DKDParams, ctx: MethodContext) -> LogitLoss:
    return LogitLoss(DKDLoss(ctx.T, params.alpha, params.beta, params.warmup, params.logit_std))
