"""AttentionPredictor (Yang et al., arXiv 2502.04077): learned prediction of the next decode
step's important key blocks, with cross-token prefetch.

- :mod:`.history`: :class:`BlockPredictor`, the per-head history ring of block-max-pooled
  attention rows (blocks of 16 keys, 64 steps) and the CNN over it, on a Vulkan device
  (``predictor-history-update`` and ``predictor-cnn`` shaders; incremental on decode steps) or
  in NumPy.
- :mod:`.policy`: :class:`PredictorPolicy`, the KV policy ``"predictor"`` (sinks + local window
  + predicted blocks), with hit-rate statistics; its ``predictor`` option picks the CNN, the
  repeat-last-row baseline, or (``"auto"``) the one with the higher held-out hit rate stored
  with the weights file.
- :mod:`.device`: :class:`DevicePredictorCache`, the policy's Vulkan twin (``policy.device_cache``):
  sinks + a ring of the newest blocks + the predicted blocks on the device, the context in host
  memory, history + CNN + top-k on the device, all in the model's one submission per step.
- :mod:`.prefetch`: :class:`HostKVPrefetcher`, the full K/V in host memory and only the kept
  blocks on the device, copied asynchronously one step ahead (``kv-block-scatter`` shader).
- :mod:`.train` / :mod:`.data`: NumPy training (hand-written backward, Adam, ListNet loss) on
  SmolLM2's attention over essays; :mod:`.weights`: the safetensors file shipped here.
"""
from .history import BlockPredictor
from .policy import PredictorPolicy
from .weights import load_weights

__all__ = ["BlockPredictor", "PredictorPolicy", "load_weights"]
