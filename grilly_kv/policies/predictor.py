"""Registers the AttentionPredictor policy (:mod:`grilly_kv.predictor.policy`) as ``"predictor"``."""
from ..predictor.policy import PredictorPolicy
from .registry import register

register("predictor")(PredictorPolicy)

__all__ = ["PredictorPolicy"]
