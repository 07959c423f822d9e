"""SympFormer's momentum attention step, applied only to the heads whose queries are unpredictable.

Source and what was implemented
-------------------------------
SympFormer (V. Stein, W. Li, G. Steidl, "SympFormer: Accelerated attention blocks via Inertial
Dynamics on Density Manifolds", arXiv 2603.16535v1, 2026). What could be read here (abstract,
introduction, keywords, third-party summaries; the body with its numbered equations could not be
retrieved offline): a classical attention block is the explicit-Euler step of a particle system
(tokens = particles) whose mean-field limit is a Wasserstein-2 gradient flow of an interaction
energy; the accelerated block comes from inertial Nesterov-type dynamics on that density space,
"tokens carry both spatial (feature) and velocity variables", and a symplectic time
discretisation gives "Hamiltonian momentum attention blocks" with the same number of attention
("oracle") calls per block. Its co-author's accelerated information gradient flow (Wang & Li,
arXiv 1909.02102, Wasserstein-2 case) gives the particle form of such dynamics:

    dx/dt = y,    dy/dt = -gamma(t) y + F(x),    gamma(t) = 3 / t  (Nesterov damping),

where F(x) = -grad (dE/drho) is the force that one attention block applies to each token, i.e.
the attention output. ASSUMED (not read in the paper): the discretisation is symplectic Euler
with time step sqrt(tau) (tau = the plain block's step size), velocity first, then position:

    (1)  y_{k+1} = alpha_k y_k + sqrt(tau) F(x_k)          alpha_k = 1 - gamma_k sqrt(tau)
    (2)  x_{k+1} = x_k + sqrt(tau) y_{k+1}

with Nesterov damping gamma_k sqrt(tau) = 3 / (k + 3), i.e. alpha_k = k / (k + 3) for block k = 0,
1, ... (``damping="nesterov"``), or a constant alpha in [0, 1) (heavy-ball damping for strongly
convex energies, ``damping=alpha``). :class:`~grilly_kv.nn.MomentumStack` can restart the
damping counter per batch row (speed restart, ``restart=True``), an addition of ours: Nesterov
damping without it is slower than plain blocks on strongly convex energies (see
benchmarks/results/momentum_convergence.md). With y_0 = 0 the first momentum block equals a plain block,
and each block costs one attention call, as the paper requires. The plain (classical) block is

    (0)  x_{k+1} = x_k + tau F(x_k).

Head selection (this module's own construction, from the issue, not from the paper): the
attention output is F = W_o [o_1; ...; o_H] + b_o, head h writing into the column space of its
block W_o[:, h]. Heads whose q-similarity (TAPPA, :func:`grilly_kv.ops.attention_q_similarity.
q_similarity`, clipped to [0, 1]) is below ``threshold`` are "selected"; P is the orthogonal
projector onto the span of the selected heads' blocks of W_o. The part of the force in that
subspace takes the momentum step, the rest the plain step:

    (3)  y_{k+1} = alpha_k y_k + sqrt(tau) P F(x_k)
    (4)  x_{k+1} = x_k + sqrt(tau) y_{k+1} + tau (I - P) F(x_k)

The selected heads' own forces lie wholly in range(P); an unselected head's force gets momentum
only where it overlaps that span. Because P and I - P split F, the fixed points are exactly
those of plain attention (F = 0, y = 0). (A first version split F by heads, F_sel = sum over
selected heads of W_o[:, h] o_h: its fixed points satisfy F_sel / (1 - alpha) + F_plain = 0,
not F = 0, and in the convergence study it never converged.) Nothing selected: P = 0 and the
block is exactly (0); every head selected: P = I by definition (no projection is computed),
exactly (1)-(2).

Which heads: by default they are recomputed on every call from the block's own input queries,
per batch row ``(B, H)`` (the selection follows the tokens as they move; it costs one
q-similarity dispatch per call). :meth:`SelectiveMomentumAttention.calibrate` fixes one
selection ``(H,)`` from calibration tokens (mean q-similarity over the batch) and skips that
dispatch; use it in a stack that should apply the same dynamics at every depth.
"""
from __future__ import annotations

import numpy as np

from ..backend import DeviceObject
from ..ops.attention_q_similarity import q_similarity
from ..ops.nn_linear import linear
from ..validation import check_array, check_choice, check_index_array, check_int, check_real
from .multihead_attention import MultiheadAttention

DAMPING_NESTEROV = "nesterov"


def momentum_coefficient(damping, step):
    """alpha_k of step (1) for k = ``step`` (an int or an array of them): ``k / (k + 3)`` for
    ``"nesterov"``, else the constant ``damping``."""
    damping = _check_damping(damping)
    if np.ndim(step) == 0 and not isinstance(step, np.ndarray):
        steps = np.int64(check_int("step", step, minimum=0))
    else:
        steps = check_index_array("step", step, shape_doc="(B,)")
        if (steps < 0).any():
            raise ValueError(f"step must be >= 0, got {steps.min()}")
    if damping == DAMPING_NESTEROV:
        return np.asarray(steps, np.float32) / (np.asarray(steps, np.float32) + 3.0)
    return np.full(np.shape(steps), damping, np.float32)


def _check_damping(damping):
    """``"nesterov"`` or a real number in [0, 1) (as a float)."""
    if isinstance(damping, str):
        check_choice("damping", damping, (DAMPING_NESTEROV,))
        return damping
    damping = check_real("damping", damping, minimum=0.0)
    if damping >= 1.0:
        raise ValueError(f"damping must be 'nesterov' or a number in [0, 1), got {damping!r}")
    return damping


class SelectiveMomentumAttention(DeviceObject):
    """A self-attention block over tokens with position x ``(B, S, E)`` and momentum y ``(B, S, E)``.

    Args:
        attention: the :class:`MultiheadAttention` that gives the force F(x) = attention(x, x, x).
        embed_dim: E (must match ``attention``).
        num_heads: H_q (must match ``attention``).
        threshold: heads with q-similarity (clipped to [0, 1]) below it take the momentum step;
            0 selects none (plain block), anything above 1 selects all.
        step_size: tau > 0 of the plain step; the momentum step uses sqrt(tau).
        damping: ``"nesterov"`` (alpha_k = k / (k + 3)) or a constant alpha in [0, 1).
        qsim_mode, qsim_window: passed to :func:`~grilly_kv.ops.attention_q_similarity.q_similarity`.
    """

    def __init__(self, attention: MultiheadAttention, embed_dim: int, num_heads: int,
                 threshold: float = 0.5, *, step_size: float = 1.0, damping=DAMPING_NESTEROV,
                 qsim_mode: str = "consecutive", qsim_window: int | None = None):
        if not isinstance(attention, MultiheadAttention):
            raise TypeError(f"attention must be a grilly_kv.nn.MultiheadAttention, got "
                            f"{type(attention).__name__}")
        check_int("embed_dim", embed_dim, minimum=1)
        check_int("num_heads", num_heads, minimum=1)
        if (embed_dim, num_heads) != (attention.embed_dim, attention.num_heads):
            raise ValueError(f"embed_dim, num_heads = ({embed_dim}, {num_heads}) do not match the "
                             f"attention module's ({attention.embed_dim}, {attention.num_heads})")
        threshold = check_real("threshold", threshold, minimum=0.0)
        step_size = check_real("step_size", step_size, minimum=0.0)
        if step_size == 0.0:
            raise ValueError("step_size must be a finite number > 0, got 0.0")
        damping = _check_damping(damping)
        check_choice("qsim_mode", qsim_mode, ("consecutive", "pairwise"))
        if qsim_window is not None:
            qsim_window = check_int("qsim_window", qsim_window, minimum=1)
        self.attention = attention
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.threshold = float(threshold)
        self.step_size = float(step_size)
        self.damping = damping
        self.qsim_mode, self.qsim_window = qsim_mode, qsim_window
        self.fixed_selection: np.ndarray | None = None
        self._projectors: dict[bytes, np.ndarray] = {}
        self._projector_weight = None

    # ---- head selection ----------------------------------------------------------------------
    def head_similarity(self, x: np.ndarray) -> np.ndarray:
        """q-similarity of each head's queries of tokens ``x`` ``(B, S, E)``: ``(B, H_q)`` float32."""
        q = self.attention.project_queries(x)
        return q_similarity(q, mode=self.qsim_mode, window=self.qsim_window,
                            device=self.attention.device)

    def _select(self, qsim: np.ndarray) -> np.ndarray:
        return np.clip(qsim, 0.0, 1.0) < self.threshold

    def calibrate(self, x: np.ndarray) -> np.ndarray:
        """Fix the selected heads from calibration tokens ``(B, S, E)``: returns ``(H_q,)`` bool."""
        self.fixed_selection = self._select(self.head_similarity(x).mean(axis=0))
        return self.fixed_selection.copy()

    def selection(self, x: np.ndarray) -> np.ndarray:
        """Heads that take the momentum step for tokens ``x``: ``(B, H_q)`` bool."""
        if self.fixed_selection is not None:
            return np.broadcast_to(self.fixed_selection, (x.shape[0], self.num_heads)).copy()
        if self.threshold == 0.0:   # nothing can be selected: skip the q-similarity dispatch
            return np.zeros((x.shape[0], self.num_heads), bool)
        return self._select(self.head_similarity(x))

    # ---- the step ----------------------------------------------------------------------------
    def _projector(self, row: np.ndarray) -> np.ndarray:
        """P ``(E, E)`` float32 for one selection ``(H,)``: onto the span of W_o's selected blocks."""
        w = self.attention.out_proj_weight
        if self._projector_weight is not w:   # parameters replaced: forget cached projectors
            self._projectors, self._projector_weight = {}, w
        key = row.tobytes()
        if key not in self._projectors:
            cols = np.repeat(row, self.attention.head_dim)
            u, sv, _ = np.linalg.svd(w[:, cols].astype(np.float64), full_matrices=False)
            u = u[:, sv > sv[0] * w.shape[0] * np.finfo(np.float32).eps]
            self._projectors[key] = (u @ u.T).astype(np.float32)
        return self._projectors[key]

    def force_split(self, x: np.ndarray, selected: np.ndarray, **mask_kwargs):
        """(P F(x), (I - P) F(x)), each ``(B, S, E)``, for tokens x and a selection ``(B, H)``.

        When every batch row selects the same heads (always after :meth:`calibrate`), P F is
        computed in the attention's own submission; otherwise once per distinct selection.
        """
        patterns = np.unique(selected, axis=0)
        if len(patterns) == 1 and patterns[0].any() and not patterns[0].all():
            force, _, f_sel = self.attention.forward_projected(
                x, x, x, projector=self._projector(patterns[0]), **mask_kwargs)
            return f_sel, force - f_sel
        force, _ = self.attention(x, x, x, **mask_kwargs)
        if not selected.any():
            return np.zeros_like(force), force
        if selected.all():
            return force, np.zeros_like(force)
        f_sel = np.zeros_like(force)
        for row in patterns:
            rows = np.flatnonzero((selected == row).all(axis=1))
            if row.all():
                f_sel[rows] = force[rows]
            elif row.any():   # P is symmetric: F P^T = F P
                f_sel[rows] = linear(force[rows], self._projector(row), device=self.attention.device)
        return f_sel, force - f_sel

    def forward(self, x: np.ndarray, y: np.ndarray | None = None, *, step=0,
                attn_mask=None, key_padding_mask=None, is_causal: bool = False):
        """One block: the momentum step on the selected heads, the plain step on the others.

        Args:
            x: token positions ``(B, S, E)`` float32 or float16.
            y: token momenta ``(B, S, E)``, or None for zeros (the start of a stack).
            step: k, the block's index in the stack (sets alpha_k under Nesterov damping): an
                int, or ``(B,)`` ints, one per batch row (a stack that restarts rows separately).
            attn_mask, key_padding_mask, is_causal: as :meth:`MultiheadAttention.forward`.

        Returns:
            ``(x_next, y_next)``, each ``(B, S, E)`` float32; the inputs are not modified.
        """
        x = self.attention._check_tokens("x", x)
        if y is None:
            y = np.zeros(x.shape, np.float32)
        else:
            check_array("y", y, ndim=3, dtypes=(np.float32, np.float16), shape_doc="(B, S, E)")
            if y.shape != x.shape:
                raise ValueError(f"y must have the shape of x {x.shape}, got {y.shape}")
        if np.ndim(step) == 0 and not isinstance(step, np.ndarray):
            step = check_int("step", step, minimum=0)
        else:
            step = check_index_array("step", step, shape_doc="(B,)")
            if step.shape != (x.shape[0],) or (step < 0).any():
                raise ValueError(f"step must be an int >= 0 or (B,) = ({x.shape[0]},) of them, "
                                 f"got {step!r}")
        selected = self.selection(x)
        f_sel, f_plain = self.force_split(x, selected, attn_mask=attn_mask,
                                          key_padding_mask=key_padding_mask, is_causal=is_causal)
        tau = self.step_size
        h = np.float32(np.sqrt(tau))
        alpha = np.broadcast_to(momentum_coefficient(self.damping, step), (x.shape[0],))
        y_next = alpha[:, None, None] * y.astype(np.float32) + h * f_sel
        x_next = x.astype(np.float32) + h * y_next + np.float32(tau) * f_plain
        return x_next, y_next

    __call__ = forward

    def __repr__(self) -> str:
        return (f"SelectiveMomentumAttention({self.attention!r}, threshold={self.threshold}, "
                f"step_size={self.step_size}, damping={self.damping!r})")
