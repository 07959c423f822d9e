"""Policies by name. A policy module registers its class with ``@register("name")``; nothing else
(in particular no model code) changes when a policy is added."""
from __future__ import annotations

import importlib
import pkgutil

_POLICIES: dict[str, type] = {}
# Every module of this package is imported once to let its policies register themselves, so a
# new policy is one new module. A module that fails to import (e.g. a method whose device code
# is missing) is reported by make_policy, not at import time.
_NOT_POLICIES = {"base", "registry"}


def register(name: str):
    def deco(cls):
        _POLICIES[name] = cls
        return cls
    return deco


def _policy_modules() -> list[str]:
    package = importlib.import_module(__package__)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name not in _NOT_POLICIES)


def _load_all() -> dict[str, str]:
    errors = {}
    for mod in _policy_modules():
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ImportError as exc:
            errors[mod] = str(exc)
    return errors


def policy_names(variants: bool = False) -> list[str]:
    """Registered policy names; with ``variants`` also the ``"name:value"`` spellings of the
    policies that have one (a class's ``variant_option`` set to each of its ``variants``)."""
    _load_all()
    names = sorted(_POLICIES)
    if variants:
        names += [f"{n}:{v}" for n in sorted(_POLICIES) for v in getattr(_POLICIES[n], "variants", ())]
    return names


def split_variant(name: str, kwargs: dict) -> tuple[str, dict]:
    """``"predictor:last-row"`` -> ``("predictor", kwargs + {"predictor": "last-row"})``: the
    part after the colon sets the class's ``variant_option``.

    Raises:
        ValueError: the policy has no variants, the value is not one of them, or ``kwargs``
            also sets that option.
    """
    base, _, value = name.partition(":")
    cls = _POLICIES.get(base)
    if cls is None or not value:
        return name, kwargs
    option, allowed = getattr(cls, "variant_option", None), getattr(cls, "variants", ())
    if option is None or value not in allowed:
        raise ValueError(f"name: policy {base!r} has no variant {value!r}"
                         + (f" (its variants: {', '.join(allowed)})" if allowed else ""))
    if option in kwargs:
        raise ValueError(f"name: {name!r} sets {option}= and so do the keyword arguments")
    return base, {**kwargs, option: value}


def make_policy(name: str, budget: int | None = None, **kwargs):
    """A new policy instance.

    Args:
        name: a registered policy (:func:`policy_names`), or ``"name:value"`` for a policy with
            variants (``"predictor:last-row"`` = ``make_policy("predictor", predictor="last-row")``).
        budget: the policy's KV budget in tokens (its meaning per policy: ``grilly-kv generate
            --help``); None: the policy's default. ``dense`` takes no budget and raises
            ValueError when given one.
        kwargs: the policy class's other arguments.

    Raises:
        ValueError: unknown name or variant (the valid ones listed), or a budget the policy refuses.
    """
    errors = _load_all()
    name, kwargs = split_variant(name, kwargs)
    if name not in _POLICIES:
        why = f" ({name}: {errors[name]})" if name in errors else ""
        raise ValueError(f"policy must be one of {', '.join(sorted(_POLICIES))}, got {name!r}{why}")
    cls = _POLICIES[name]
    if budget is None:
        return cls(**kwargs)
    return cls(budget, **kwargs)
