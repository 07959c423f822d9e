"""TAPPA on a real model: q-similarity calibration, layer-pruning orders (the KV policy is
:mod:`grilly_kv.policies.tappa`; budgets and head classes are in :mod:`grilly_kv.adaptive_kv`)."""
from .calibration import Calibration, block_influence, calibrate
from .pruning import minmax, perplexity, prune_order, tappa_scores, without_layers

__all__ = ["Calibration", "block_influence", "calibrate", "minmax", "perplexity", "prune_order",
           "tappa_scores", "without_layers"]
