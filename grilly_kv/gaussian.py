"""Gaussian-aware page selection for entmax decode (EntmaxKV), in NumPy on page statistics.

Entmax gives exact zeros: only logits above ``tau / (alpha - 1)`` get mass. This module guesses
``tau`` before any key is read, from per-page key statistics, by modelling the scores of each
page as Gaussian, and keeps the pages that can reach above it; so the number of pages kept
follows the score distribution (few when a few pages stand out, most when scores are flat).

Logits are ``x = q . k / sqrt(D)``; thresholds are in units of ``(alpha - 1) x`` as everywhere in
grilly_kv (see :mod:`grilly_kv.entmax`). Pages ``0 .. P-2`` are scored; the last page (the one
being filled) is always kept and is not scored, unless it is the only page.

Steps (EntmaxKV, ``attention_gaussian.py`` and its kernels; arXiv 2605.21649):
    1. page score moments: mu_p = sum_d (q_d/sqrt D) k_mean[p,d],
       var_p = sum_d (q_d/sqrt D)^2 k_std[p,d]^2 (dimensions taken as independent);
    2. global mu_g = mean_p mu_p, sigma_g = sqrt(mean_p var_p + var_p mu_p) (total variance);
    3. tau-hat, model "single": n E[((alpha-1) S - tau)_+^beta] = 1, S ~ N(mu_g, sigma_g^2),
       n scored tokens (:func:`grilly_kv.reference.gaussian_tau.gaussian_tau_ref`, correct third
       moment; EntmaxKV without ALiBi); model "mixture": sum_p page_size E[((alpha-1) S_p -
       tau)_+^beta] = 1, S_p ~ N(mu_p, sigma_p^2) over the scored pages (EntmaxKV uses it only
       with ALiBi; it follows keys whose page means drift, where one Gaussian does not);
    4. margins: sigma_bar = mean of sigma_g over (B, H_q); low = sigma_bar < 1.5;
       safety_margin_z = (0.01 if low else 0.05) sigma_bar, max_quantile = 0.99 if low else 0.995
       (used only where the caller passes None: EntmaxKV overrides caller values, a bug);
    5. page rule: z_page = Phi^-1(max_quantile^(1/page_size)),
       excess = max(tau_hat/(alpha-1) - mean_p (mu_p + 1.5 sigma_p), 0),
       margin = max(safety_margin_z sigma_g, excess_margin_fraction excess),
       tau_floor = tau_hat - (alpha-1) margin; keep page p iff (alpha-1)(mu_p + z_page sigma_p) > tau_floor;
    6. clamp: z_c = Phi^-1(clamp_quantile^(1/page_size)), cap_p = mu_p + z_c sigma_p / 3 over the
       kept scored pages, tau = min(tau_hat, max((alpha-1) max_p cap_p - 1e-4, tau_floor))
       (no clamp when only the last page is kept).
ALiBi position bonuses are not modelled here.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .ops.entmax_tau import check_alpha
from .reference.entmax_tau import entmax_tau_ref
from .reference.gaussian_tau import gaussian_beta, gaussian_mixture_tau_ref, gaussian_tau_ref
from .validation import check_array, check_choice, check_int, check_real

TAU_MODES = ("exact", "corrected", "fixed")
MODELS = ("single", "mixture")
SIGMA_FLOOR = 1e-6
CLAMP_EPS = 1e-4
UPPER_Z = 1.5               # page_score_upper = mean_p (mu_p + 1.5 sigma_p)
CLAMP_SIGMA_DIVISOR = 3.0   # cap_p = mu_p + z_c sigma_p / 3
HALLEY_DEN_EPS = 1e-12


@dataclass(frozen=True)
class GaussianSelection:
    """Pages chosen by :func:`select_pages_gaussian`, per ``(batch, query head)``.

    Attributes:
        pages: ``(B, H_q, P)`` int32: the kept page indices in ascending order (the last page,
            P - 1, always among them), then -1 padding.
        counts: ``(B, H_q)`` int32 number of kept pages.
        mask: ``(B, H_q, P)`` bool, True for kept pages.
        tau: ``(B, H_q)`` float64 threshold to decode with (tau-hat after the clamp), units of
            ``(alpha - 1) x``.
        tau_hat, tau_floor: ``(B, H_q)`` float64, before the clamp and the page-rule floor.
        mu_g, sigma_g: ``(B, H_q)`` float64 Gaussian model of the scored logits.
        n_scored: number of tokens in the scored pages (the n of the tau-hat equation).
        safety_margin_z, max_quantile: the values used (given or automatic).
    """
    pages: np.ndarray
    counts: np.ndarray
    mask: np.ndarray
    tau: np.ndarray
    tau_hat: np.ndarray
    tau_floor: np.ndarray
    mu_g: np.ndarray
    sigma_g: np.ndarray
    n_scored: int
    safety_margin_z: float
    max_quantile: float


def _check_inputs(q, k_mean, k_std, seq_len, page_size) -> tuple[int, int]:
    check_array("q", q, ndim=3, dtypes=(np.float16, np.float32, np.float64), shape_doc="(B, H_q, D)")
    for name, arr in (("k_mean", k_mean), ("k_std", k_std)):
        check_array(name, arr, ndim=4, dtypes=(np.float16, np.float32, np.float64),
                    shape_doc="(B, H_kv, P, D)")
    B, H_q, D = q.shape
    if k_mean.shape != k_std.shape:
        raise ValueError(f"k_std must have k_mean's shape {k_mean.shape}, got {k_std.shape}")
    Bk, H_kv, P_cap, Dk = k_mean.shape
    if Bk != B or Dk != D or H_q % H_kv:
        raise ValueError(f"k_mean (B, H_kv, P, D) = {k_mean.shape} does not fit q (B, H_q, D) = "
                         f"{q.shape}: B and D must match and H_q must be a multiple of H_kv")
    page_size = check_int("page_size", page_size, minimum=1)
    seq_len = check_int("seq_len", seq_len, minimum=1)
    P = -(-seq_len // page_size)
    if P > P_cap:
        raise ValueError(f"seq_len {seq_len} needs {P} pages of {page_size}, k_mean holds {P_cap}")
    if (np.asarray(k_std) < 0).any():
        raise ValueError("k_std must be >= 0")
    return P, page_size


def page_score_moments(q: np.ndarray, k_mean: np.ndarray, k_std: np.ndarray,
                       n_pages: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the logits ``q . k / sqrt(D)`` of each page, per query head.

    Args:
        q: ``(B, H_q, D)``; k_mean, k_std: ``(B, H_kv, P, D)`` with ``H_q % H_kv == 0`` (query
            head h reads KV head ``h // (H_q / H_kv)``); n_pages: the first pages to use.

    Returns:
        ``mu_p, var_p``: ``(B, H_q, n_pages)`` float64.
    """
    group = q.shape[1] // k_mean.shape[1]
    qs = np.asarray(q, np.float64) / np.sqrt(q.shape[-1])
    mean = np.repeat(np.asarray(k_mean[:, :, :n_pages], np.float64), group, axis=1)
    std = np.repeat(np.asarray(k_std[:, :, :n_pages], np.float64), group, axis=1)
    mu_p = np.einsum("bhd,bhpd->bhp", qs, mean)
    var_p = np.einsum("bhd,bhpd->bhp", qs * qs, std * std)
    return mu_p, var_p


def select_pages_gaussian(q: np.ndarray, k_mean: np.ndarray, k_std: np.ndarray, seq_len: int,
                          page_size: int = 16, alpha: float = 1.5, *,
                          safety_margin_z: float | None = None, max_quantile: float | None = None,
                          excess_margin_fraction: float = 0.2, clamp_tau: bool = True,
                          clamp_quantile: float = 0.5, model: str = "single") -> GaussianSelection:
    """Choose the pages whose tokens can have nonzero entmax probability (see the module doc).

    Args:
        q: ``(B, H_q, D)`` decode queries (unscaled; the 1/sqrt(D) is applied here).
        k_mean, k_std: ``(B, H_kv, P_cap, D)`` per-page key mean and population std
            (``P_cap >= ceil(seq_len / page_size)``; later pages are ignored).
        seq_len: tokens in the cache (>= 1).
        page_size: tokens per page.
        alpha: 2, 1.5 or 4/3.
        safety_margin_z, max_quantile: None for the automatic values (step 4).
        excess_margin_fraction: share of the threshold's excess over the typical page used as
            margin (EntmaxKV default 0.2).
        clamp_tau: apply step 6.
        clamp_quantile: the page-maximum quantile of the clamp (default 0.5).
        model: ``"single"`` (one Gaussian for all scored tokens) or ``"mixture"`` (one per page).

    Returns:
        :class:`GaussianSelection`.
    """
    P, page_size = _check_inputs(q, k_mean, k_std, seq_len, page_size)
    alpha = check_alpha(alpha, allow_softmax=False)
    gaussian_beta(alpha)
    check_choice("model", model, MODELS)
    excess_margin_fraction = check_real("excess_margin_fraction", excess_margin_fraction, minimum=0.0)
    if safety_margin_z is not None:
        safety_margin_z = check_real("safety_margin_z", safety_margin_z, minimum=0.0)
    for name, v in (("max_quantile", max_quantile), ("clamp_quantile", clamp_quantile)):
        if v is not None and not 0.0 < check_real(name, v) < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {v}")
    a = alpha - 1.0
    scored = P - 1 if P > 1 else 1
    n_scored = scored * page_size if P > 1 else seq_len
    mu_p, var_p = page_score_moments(q, k_mean, k_std, P)
    sigma_p = np.sqrt(var_p)
    mu_s, var_s, sig_s = mu_p[..., :scored], var_p[..., :scored], sigma_p[..., :scored]

    mu_g = mu_s.mean(axis=-1)
    sigma_g = np.maximum(np.sqrt(var_s.mean(axis=-1) + mu_s.var(axis=-1)), SIGMA_FLOOR)
    if model == "single":
        tau_hat = gaussian_tau_ref(mu_g, sigma_g, n_scored, alpha)
    else:
        tau_hat = gaussian_mixture_tau_ref(mu_s, sig_s, n_scored / scored, alpha)

    sigma_bar = float(sigma_g.mean())
    low = sigma_bar < 1.5
    if safety_margin_z is None:
        safety_margin_z = (0.01 if low else 0.05) * sigma_bar
    if max_quantile is None:
        max_quantile = 0.99 if low else 0.995

    z_page = NormalDist().inv_cdf(max_quantile ** (1.0 / page_size))
    upper = (mu_s + UPPER_Z * sig_s).mean(axis=-1)
    excess = np.maximum(tau_hat / a - upper, 0.0)
    margin = np.maximum(safety_margin_z * sigma_g, excess_margin_fraction * excess)
    tau_floor = tau_hat - a * margin
    mask = np.zeros(mu_p.shape, bool)
    if P > 1:
        mask[..., :scored] = a * (mu_s + z_page * sig_s) > tau_floor[..., None]
    mask[..., P - 1] = True

    tau = tau_hat
    if clamp_tau:
        z_c = NormalDist().inv_cdf(clamp_quantile ** (1.0 / page_size))
        cap = np.where(mask[..., :scored], mu_s + z_c * sig_s / CLAMP_SIGMA_DIVISOR, -np.inf).max(axis=-1)
        clamped = np.minimum(tau_hat, np.maximum(a * cap - CLAMP_EPS, tau_floor))
        tau = np.where(np.isfinite(cap), clamped, tau_hat)

    counts = mask.sum(axis=-1).astype(np.int32)
    order = np.argsort(~mask, axis=-1, kind="stable")          # kept pages first, ascending
    pages = np.where(np.arange(P) < counts[..., None], order, -1).astype(np.int32)
    return GaussianSelection(pages, counts, mask, tau, tau_hat, tau_floor, mu_g, sigma_g,
                             n_scored, float(safety_margin_z), float(max_quantile))


def resolve_tau(logits: np.ndarray, tau: np.ndarray, alpha: float, mode: str = "corrected", *,
                valid: np.ndarray | None = None, iters: int = 1) -> np.ndarray:
    """The threshold a decode uses on the selected tokens, by ``tau_mode``.

    Args:
        logits: ``(N, L)`` logits ``q . k / sqrt(D)`` of the selected tokens, one row per
            (batch, query head).
        tau: ``(N,)`` the selection's tau (:attr:`GaussianSelection.tau`).
        alpha: 2, 1.5 or 4/3.
        mode: ``"fixed"``: ``tau`` as given; ``"corrected"``: ``iters`` Halley steps of the
            exact equation on the selected tokens, unbounded (Newton where
            ``|2 f'^2 - f f''| <= 1e-12``, ``tau`` kept where a step is not finite, e.g. when no
            token is above it); ``"exact"``: the exact threshold of the selected tokens
            (:func:`grilly_kv.reference.entmax_tau.entmax_tau_ref`), ignoring ``tau``.
        valid: ``(N, L)`` bool, False for padding entries of ``logits`` (default: all valid).
        iters: Halley steps for ``"corrected"`` (EntmaxKV: 1 without ALiBi).

    Returns:
        ``(N,)`` float64 threshold in units of ``(alpha - 1) x``. Only ``"exact"`` makes the
        selected probabilities sum to 1; the others leave a small error that the decode can
        either keep (EntmaxKV) or remove by renormalising.
    """
    check_array("logits", logits, ndim=2, dtypes=(np.float16, np.float32, np.float64),
                shape_doc="(N, L)")
    check_choice("mode", mode, TAU_MODES)
    beta = gaussian_beta(check_alpha(alpha, allow_softmax=False))
    x = np.asarray(logits, np.float64)
    if valid is not None:
        check_array("valid", valid, ndim=2, dtypes=(np.bool_,), shape_doc="(N, L)")
    valid = np.ones(x.shape, bool) if valid is None else valid
    if valid.shape != x.shape or not valid.any(axis=-1).all():
        raise ValueError(f"valid must have logits' shape {x.shape} and a True in every row")
    check_array("tau", tau, ndim=1, dtypes=(np.float16, np.float32, np.float64), shape_doc="(N,)")
    tau = np.asarray(tau, np.float64)
    if tau.shape != (x.shape[0],):
        raise ValueError(f"tau must have shape ({x.shape[0]},), got {tau.shape}")
    if mode == "fixed":
        return tau.copy()
    if mode == "exact":
        return np.array([entmax_tau_ref(row[ok][None], alpha)[0] for row, ok in zip(x, valid)])
    z = (alpha - 1.0) * x
    tau = tau.copy()
    for _ in range(check_int("iters", iters, minimum=0)):
        d = np.where(valid, z - tau[:, None], 0.0)
        pos = d > 0
        dp = np.maximum(d, 0.0)
        acc0 = np.sum(dp ** beta, axis=-1)
        acc1 = np.sum(np.where(pos, dp ** (beta - 1), 0.0), axis=-1)
        acc2 = np.sum(np.where(pos, dp ** (beta - 2), 0.0), axis=-1) if beta >= 2 else 0.0
        f, f1, f2 = acc0 - 1.0, -beta * acc1, beta * (beta - 1) * acc2
        den = 2.0 * f1 * f1 - f * f2
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(np.abs(den) > HALLEY_DEN_EPS, 2.0 * f * f1 / den, f / f1)
        nxt = tau - step
        tau = np.where(np.isfinite(nxt), nxt, tau)
    return tau
