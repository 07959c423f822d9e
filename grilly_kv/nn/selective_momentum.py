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
convex energies, ``damping=alpha``). With y_0 = 0 the first momentum block equals a plain block,
and each block costs one attention call, as the paper requires. The plain (classical) block is

    (0)  x_{k+1} = x_k + tau F(x_k).

Head selection (this module's own idea, from the issue, not from the paper): the attention
output is a sum over heads, F = sum_h F_h + b_o with F_h = W_o[:, h] o_h. Heads whose
q-similarity (TAPPA, :func:`grilly_kv.ops.attention_q_similarity.q_similarity`, clipped to
[0, 1]) is below ``threshold`` are "selected": their forces F_sel = sum_{h selected} F_h +
b_o * n_sel / H drive (1)-(2); the others' F_plain = F - F_sel take step (0):

    y_{k+1} = alpha_k y_k + sqrt(tau) F_sel(x_k)
    x_{k+1} = x_k + sqrt(tau) y_{k+1} + tau F_plain(x_k)

So threshold 0 (nothing selected, y stays 0) is exactly block (0), and with every head selected
it is exactly (1)-(2).

Which heads: by default they are recomputed on every call from the block's own input queries,
per batch row ``(B, H)`` (the selection follows the tokens as they move; it costs one
q-similarity dispatch per call). :meth:`SelectiveMomentumAttention.calibrate` fixes one
selection ``(H,)`` from calibration tokens (mean q-similarity over the batch) and skips that
dispatch; use it in a stack that should apply the same dynamics at every depth.
"""
from __future__ import annotations

import numpy as np

from ..ops.attention_q_similarity import q_similarity
from ..validation import check_array, check_int
from .multihead_attention import MultiheadAttention

DAMPING_NESTEROV = "nesterov"


def momentum_coefficient(damping, step: int) -> float:
    """alpha_k of step (1): ``k / (k + 3)`` for ``"nesterov"``, else the constant ``damping``."""
    if damping == DAMPING_NESTEROV:
        return step / (step + 3.0)
    return float(damping)


class SelectiveMomentumAttention:
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
        if (embed_dim, num_heads) != (attention.embed_dim, attention.num_heads):
            raise ValueError(f"embed_dim, num_heads = ({embed_dim}, {num_heads}) do not match the "
                             f"attention module's ({attention.embed_dim}, {attention.num_heads})")
        if not (isinstance(threshold, (int, float)) and np.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
        if not (isinstance(step_size, (int, float)) and np.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")
        if damping != DAMPING_NESTEROV and not (isinstance(damping, (int, float))
                                                and 0.0 <= damping < 1.0):
            raise ValueError(f"damping must be 'nesterov' or a number in [0, 1), got {damping!r}")
        self.attention = attention
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.threshold = float(threshold)
        self.step_size = float(step_size)
        self.damping = damping
        self.qsim_mode, self.qsim_window = qsim_mode, qsim_window
        self.fixed_selection: np.ndarray | None = None

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
    def split_force(self, heads: np.ndarray, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(F_sel, F_plain), each ``(B, S, E)``, from the heads' outputs ``(B, S, E)``."""
        B = heads.shape[0]
        mha = self.attention
        if not selected.any():
            return np.zeros_like(heads), mha.output_projection(heads)
        if selected.all():
            return mha.output_projection(heads), np.zeros_like(heads)
        cols = np.repeat(selected, mha.head_dim, axis=1)[:, None, :]          # (B, 1, E)
        both = np.concatenate([heads * cols, heads * ~cols], axis=0)           # (2B, S, E)
        proj = mha.output_projection(both, bias=False)
        f_sel, f_plain = proj[:B], proj[B:]
        if mha.out_proj_bias is not None:
            frac = selected.mean(axis=1, dtype=np.float32)[:, None, None]      # n_sel / H
            f_sel = f_sel + frac * mha.out_proj_bias
            f_plain = f_plain + (1.0 - frac) * mha.out_proj_bias
        return f_sel, f_plain

    def forward(self, x: np.ndarray, y: np.ndarray | None = None, *, step: int = 0,
                attn_mask=None, key_padding_mask=None, is_causal: bool = False):
        """One block: the momentum step on the selected heads, the plain step on the others.

        Args:
            x: token positions ``(B, S, E)`` float32 or float16.
            y: token momenta ``(B, S, E)``, or None for zeros (the start of a stack).
            step: k, the block's index in the stack (sets alpha_k under Nesterov damping).
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
        step = check_int("step", step, minimum=0)
        selected = self.selection(x)
        heads, _ = self.attention.attend(x, x, x, attn_mask=attn_mask,
                                         key_padding_mask=key_padding_mask, is_causal=is_causal)
        f_sel, f_plain = self.split_force(heads, selected)
        tau = self.step_size
        h = np.float32(np.sqrt(tau))
        y_next = np.float32(momentum_coefficient(self.damping, step)) * y.astype(np.float32) + h * f_sel
        x_next = x.astype(np.float32) + h * y_next + np.float32(tau) * f_plain
        return x_next, y_next

    __call__ = forward

    def __repr__(self) -> str:
        return (f"SelectiveMomentumAttention({self.attention!r}, threshold={self.threshold}, "
                f"step_size={self.step_size}, damping={self.damping!r})")
