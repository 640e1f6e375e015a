"""Triton kernels of the token-selected text-softmax capture (flash-style, no (N, T) tensor).

The op (see ``l2s.ops``), per batch ``b`` and head ``h``::

    out[n, :] = softmax_t(scale * q[n] · k[t]) @ selector        q (N, D), k (T, D), selector (T, G)

Forward: one program per (query tile, b·h) streams the T text keys in tiles with an online
softmax (running max ``m``, running denominator ``l``, running ``P @ selector``), so only
``BLOCK_N × BLOCK_T`` logits live at a time, in registers.

Backward (the FlashAttention-2 identity with dP = dO·selectorᵀ):
    dS = P ∘ (dP − Δ),  Δ_n = Σ_t P_nt dP_nt = rowsum(dO ∘ O)_n,
    dQ = scale · dS·K,  dK = scale · dSᵀ·Q.
* ``_backward_dq_kernel`` (per query tile): pass 1 over T recomputes the row log-sum-exp and Δ
  online (Δ without needing O), pass 2 recomputes P tile by tile and accumulates dQ. It writes
  the per-row LSE and Δ (O(N) floats) for
* ``_backward_dk_kernel`` (per key tile): streams the query tiles and accumulates dK, so no
  atomics and no (N, T) buffer are needed.

Logits are kept in base 2 (``exp2`` with ``scale·log2 e`` folded into the logits), as flash
kernels do; every accumulation is float32 whatever the input dtype (float16, bfloat16, float32).

The PyTorch reference of both passes is at the top of this file: :func:`selected_softmax_ref`
(its autograd is the backward's reference) and :func:`selected_softmax_lse_ref`.

With ``TRITON_INTERPRET=1`` set before this module is imported, Triton's interpreter runs these
kernels on CPU tensors (that is how the tests check them on machines without a GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from l2s.ops.reference import selected_text_softmax_reference

LOG2E = 1.4426950408889634

# Limits of the register tiles below (a (BLOCK, D) q/k tile and a (BLOCK, G) selector tile).
MAX_HEAD_DIM = 256
MAX_GROUPS = 128
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ------------------------------------------------------------------------------------------------
# PyTorch reference
# ------------------------------------------------------------------------------------------------


# What :func:`selected_softmax_forward` computes, ``softmax_t(q kᵀ · scale) @ selector``: the op's own
# reference (materialises the (B, H, N, T) probabilities in the inputs' dtype; pass float64).
selected_softmax_ref = selected_text_softmax_reference


def selected_softmax_lse_ref(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The ``return_lse`` output: per-row natural log-sum-exp of the text logits, ``(B, H, N)``."""
    return torch.logsumexp(q @ k.transpose(-1, -2) * scale, dim=-1)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------


@triton.jit
def _forward_kernel(
    Q, K, Sel, Out, Lse,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    H, N, T, D, G, qk_scale,
    STORE_LSE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_g = tl.arange(0, BLOCK_G)
    n_mask = offs_n < N
    d_mask = offs_d < D
    g_mask = offs_g < G

    q = tl.load(q_base + offs_n[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    m_i = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_G], dtype=tl.float32)

    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_mask = offs_t < T
        k_t = tl.load(k_base + offs_t[None, :] * stride_kt + offs_d[:, None] * stride_kd,
                      mask=d_mask[:, None] & t_mask[None, :], other=0.0)            # (D, BLOCK_T)
        s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale              # base-2 logits
        s = tl.where(t_mask[None, :], s, float("-inf"))
        # While every key so far is masked (-inf) m_new is -inf: m_ref keeps exp2 off -inf - -inf (NaN).
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        sel = tl.load(Sel + offs_t[:, None] * G + offs_g[None, :],
                      mask=t_mask[:, None] & g_mask[None, :], other=0.0)             # (BLOCK_T, G)
        acc = acc * alpha[:, None] + tl.dot(p.to(sel.dtype), sel, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    out_base = Out + pid_bh.to(tl.int64) * N * G
    tl.store(out_base + offs_n[:, None] * G + offs_g[None, :], out.to(Out.dtype.element_ty),
             mask=n_mask[:, None] & g_mask[None, :])
    if STORE_LSE:
        tl.store(Lse + pid_bh.to(tl.int64) * N + offs_n, m_i + tl.log2(l_i), mask=n_mask)


@triton.jit
def _lse_and_delta(
    q, do, k_base, Sel, stride_kt, stride_kd, offs_d, offs_g, d_mask, g_mask, T, G, qk_scale,
    BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Pass 1 of the dq kernel: base-2 row log-sum-exp and Δ = Σ_t P_t dP_t of one query tile.

    Both online over T (u is Σ exp(s - m) dP, rescaled like l), so Δ needs no O.
    """
    m_i = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    u_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_mask = offs_t < T
        k_t = tl.load(k_base + offs_t[None, :] * stride_kt + offs_d[:, None] * stride_kd,
                      mask=d_mask[:, None] & t_mask[None, :], other=0.0)
        s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(t_mask[None, :], s, float("-inf"))
        sel_t = tl.load(Sel + offs_t[None, :] * G + offs_g[:, None],
                        mask=g_mask[:, None] & t_mask[None, :], other=0.0)           # (G, BLOCK_T)
        dp = tl.dot(do, sel_t, input_precision=DOT_PRECISION)                        # (BLOCK_N, BLOCK_T)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)     # as in the forward: masked keys so far
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        u_i = u_i * alpha + tl.sum(p * dp, 1)
        m_i = m_new
    return m_i + tl.log2(l_i), u_i / l_i


@triton.jit
def _backward_dq_kernel(
    Q, K, Sel, DO, DQ, Lse, Delta,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_ob, stride_oh, stride_on, stride_og,
    H, N, T, D, G, qk_scale, scale,
    BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh
    do_base = DO + off_b * stride_ob + off_h * stride_oh

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_g = tl.arange(0, BLOCK_G)
    n_mask = offs_n < N
    d_mask = offs_d < D
    g_mask = offs_g < G

    q = tl.load(q_base + offs_n[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    do = tl.load(do_base + offs_n[:, None] * stride_on + offs_g[None, :] * stride_og,
                 mask=n_mask[:, None] & g_mask[None, :], other=0.0)                  # (BLOCK_N, G)

    lse, delta = _lse_and_delta(q, do, k_base, Sel, stride_kt, stride_kd, offs_d, offs_g, d_mask, g_mask,
                                T, G, qk_scale, BLOCK_N, BLOCK_T, DOT_PRECISION)
    tl.store(Lse + pid_bh.to(tl.int64) * N + offs_n, lse, mask=n_mask)
    tl.store(Delta + pid_bh.to(tl.int64) * N + offs_n, delta, mask=n_mask)

    # Pass 2: dS = P ∘ (dP − Δ) tile by tile, dQ += dS · K.
    dq = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_mask = offs_t < T
        k = tl.load(k_base + offs_t[:, None] * stride_kt + offs_d[None, :] * stride_kd,
                    mask=t_mask[:, None] & d_mask[None, :], other=0.0)               # (BLOCK_T, D)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(t_mask[None, :], s, float("-inf"))
        sel_t = tl.load(Sel + offs_t[None, :] * G + offs_g[:, None],
                        mask=g_mask[:, None] & t_mask[None, :], other=0.0)
        dp = tl.dot(do, sel_t, input_precision=DOT_PRECISION)
        p = tl.exp2(s - lse[:, None])
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    dq_base = DQ + pid_bh.to(tl.int64) * N * D
    tl.store(dq_base + offs_n[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=n_mask[:, None] & d_mask[None, :])


@triton.jit
def _backward_dk_kernel(
    Q, K, Sel, DO, DK, Lse, Delta,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_ob, stride_oh, stride_on, stride_og,
    H, N, T, D, G, qk_scale, scale,
    BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh
    do_base = DO + off_b * stride_ob + off_h * stride_oh
    row_base = pid_bh.to(tl.int64) * N

    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    offs_g = tl.arange(0, BLOCK_G)
    t_mask = offs_t < T
    d_mask = offs_d < D
    g_mask = offs_g < G

    k = tl.load(k_base + offs_t[:, None] * stride_kt + offs_d[None, :] * stride_kd,
                mask=t_mask[:, None] & d_mask[None, :], other=0.0)                   # (BLOCK_T, D)
    sel = tl.load(Sel + offs_t[:, None] * G + offs_g[None, :],
                  mask=t_mask[:, None] & g_mask[None, :], other=0.0)                 # (BLOCK_T, G)
    dk = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)

    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        q = tl.load(q_base + offs_n[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)               # (BLOCK_N, D)
        do_t = tl.load(do_base + offs_n[None, :] * stride_on + offs_g[:, None] * stride_og,
                       mask=g_mask[:, None] & n_mask[None, :], other=0.0)            # (G, BLOCK_N)
        lse = tl.load(Lse + row_base + offs_n, mask=n_mask, other=0.0)
        delta = tl.load(Delta + row_base + offs_n, mask=n_mask, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale      # (BLOCK_T, BLOCK_N)
        p_t = tl.exp2(s_t - lse[None, :])
        dp_t = tl.dot(sel, do_t, input_precision=DOT_PRECISION)
        ds_t = tl.where(n_mask[None, :], p_t * (dp_t - delta[None, :]), 0.0)
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)

    dk_base = DK + pid_bh.to(tl.int64) * T * D
    tl.store(dk_base + offs_t[:, None] * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=t_mask[:, None] & d_mask[None, :])


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------


def _check(q: torch.Tensor, k: torch.Tensor, selector: torch.Tensor) -> tuple[int, ...]:
    if q.dim() != 4 or k.dim() != 4 or selector.dim() != 2:
        raise ValueError("expected q (B, H, N, D), k (B, H, T, D) and selector (T, G)")
    B, H, N, D = q.shape
    T, G = selector.shape
    if k.shape != (B, H, T, D):
        raise ValueError(f"k has shape {tuple(k.shape)}, expected {(B, H, T, D)} to match q and selector")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype:
        raise TypeError(f"Triton kernels take float16/bfloat16/float32 q and k of one dtype, got {q.dtype}, {k.dtype}")
    if D > MAX_HEAD_DIM or G > MAX_GROUPS:
        raise ValueError(f"Triton kernels support head dim <= {MAX_HEAD_DIM} and <= {MAX_GROUPS} groups, got {D}, {G}")
    if T == 0:
        raise ValueError("no text keys (T = 0): the softmax is undefined")
    return B, H, N, T, D, G


def _tile_meta(q: torch.Tensor, D: int, G: int) -> dict:
    # tl.dot needs every tile dimension >= 16. float32 dots run in IEEE precision: TF32 would
    # silently change the maps by ~1e-3 compared with the CPU and reference paths.
    return {
        "BLOCK_D": max(16, triton.next_power_of_2(D)),
        "BLOCK_G": max(16, triton.next_power_of_2(G)),
        "DOT_PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
    }


def _launch_config(dtype: torch.dtype, block_n: int | None, block_t: int | None,
                   num_warps: int | None) -> tuple[int, int, int]:
    """Tile sizes and warps; explicit arguments win.

    At head dim 128 on sm_90, 16-bit inputs fit 64×64 tiles on 4 warps without register spills;
    float32's IEEE dots are FMA loops that spill at that size, so 32×32 on 8 warps.
    """
    default_n, default_t, default_warps = (32, 32, 8) if dtype == torch.float32 else (64, 64, 4)
    return block_n or default_n, block_t or default_t, num_warps or default_warps


def _strides(tensor: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(tensor.stride())  # type: ignore[return-value]


def selected_softmax_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    selector: torch.Tensor,
    scale: float,
    *,
    return_lse: bool = False,
    block_n: int | None = None,
    block_t: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``softmax_t(q kᵀ scale) @ selector`` as ``(B, H, N, G)`` in q's dtype (any q/k strides).

    With ``return_lse`` also returns the per-row log-sum-exp of the text logits, float32
    ``(B, H, N)``, in natural log (the kernel works in base 2).
    """
    B, H, N, T, D, G = _check(q, k, selector)
    block_n, block_t, num_warps = _launch_config(q.dtype, block_n, block_t, num_warps)
    sel = selector.to(dtype=q.dtype).contiguous()
    out = torch.empty((B, H, N, G), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    if out.numel() > 0:
        grid = (triton.cdiv(N, block_n), B * H)
        _forward_kernel[grid](
            q, k, sel, out, lse, *_strides(q), *_strides(k),
            H, N, T, D, G, float(scale) * LOG2E,
            STORE_LSE=return_lse, BLOCK_N=block_n, BLOCK_T=block_t, **_tile_meta(q, D, G),
            num_warps=num_warps, num_stages=num_stages,
        )
    if return_lse:
        return out, lse / LOG2E
    return out


def selected_softmax_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    selector: torch.Tensor,
    scale: float,
    *,
    block_n: int | None = None,
    block_t: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_q, grad_k)`` of :func:`selected_softmax_forward` (selector treated as constant)."""
    B, H, N, T, D, G = _check(q, k, selector)
    if grad_out.shape != (B, H, N, G):
        raise ValueError(f"grad_out has shape {tuple(grad_out.shape)}, expected {(B, H, N, G)}")
    if B * H * N == 0:  # no queries: every gradient is zero
        return q.new_zeros((B, H, N, D)), q.new_zeros((B, H, T, D))
    block_n, block_t, num_warps = _launch_config(q.dtype, block_n, block_t, num_warps)
    sel = selector.to(dtype=q.dtype).contiguous()
    grad_out = grad_out.to(dtype=q.dtype)
    grad_q = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)  # fully written by the kernels
    grad_k = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    delta = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    meta = _tile_meta(q, D, G)
    common = (*_strides(q), *_strides(k), *_strides(grad_out), H, N, T, D, G,
              float(scale) * LOG2E, float(scale))
    _backward_dq_kernel[(triton.cdiv(N, block_n), B * H)](
        q, k, sel, grad_out, grad_q, lse, delta, *common,
        BLOCK_N=block_n, BLOCK_T=block_t, **meta, num_warps=num_warps, num_stages=num_stages,
    )
    # Same stream: the dK kernel reads the LSE and Δ the dQ kernel wrote.
    _backward_dk_kernel[(triton.cdiv(T, block_t), B * H)](
        q, k, sel, grad_out, grad_k, lse, delta, *common,
        BLOCK_N=block_n, BLOCK_T=block_t, **meta, num_warps=num_warps, num_stages=num_stages,
    )
    return grad_q, grad_k
