"""Device functions of the megakernel for the opcodes every family uses (and the Llama attention pair). Each is a
`@triton.jit` function the persistent kernel calls inline; operands are as in `isa.ARGS`, arenas are passed as
pointers. Weights may be any float dtype and are widened to fp32; activations and the cache are fp32.

Imported only when the kernel is first built (Triton must see TRITON_INTERPRET before any function is decorated).
"""
import triton
import triton.language as tl

from .constants import FLAG_ACCUMULATE, FLAG_NORM_INPUT, FLAG_SWIGLU_INPUT


@triton.jit
def embed(W, A, tok, w, out, n, B: tl.constexpr, BLOCK: tl.constexpr):
    for b in tl.static_range(B):
        row = tl.load(tok + b).to(tl.int64)
        for k0 in range(0, n, BLOCK):
            o = k0 + tl.arange(0, BLOCK)
            m = o < n
            tl.store(A + out + b * n + o, tl.load(W + w + row * n + o, mask=m).to(tl.float32), mask=m)


@triton.jit
def norm_rows(W, A, x, x_stride, w, bias, out, n, eps, B: tl.constexpr, BLOCK: tl.constexpr):
    """RMSNorm of rows x_stride apart, or LayerNorm (mean removed, plus bias) when bias >= 0. In place is fine."""
    layer_norm = bias >= 0
    for b in tl.static_range(B):
        src = A + x + b * x_stride
        total = 0.0
        for k0 in range(0, n, BLOCK):
            o = k0 + tl.arange(0, BLOCK)
            total += tl.sum(tl.load(src + o, mask=o < n, other=0.0), axis=0)
        mean = tl.where(layer_norm, total / n, 0.0)
        ss = 0.0
        for k0 in range(0, n, BLOCK):
            o = k0 + tl.arange(0, BLOCK)
            v = tl.load(src + o, mask=o < n, other=0.0) - mean
            ss += tl.sum(tl.where(o < n, v * v, 0.0), axis=0)
        inv = 1.0 / tl.sqrt(ss / n + eps)
        for k0 in range(0, n, BLOCK):
            o = k0 + tl.arange(0, BLOCK)
            m = o < n
            v = tl.load(src + o, mask=m, other=0.0)
            g = tl.load(W + w + o, mask=m, other=0.0).to(tl.float32)
            beta = tl.load(W + bias + o, mask=m & layer_norm, other=0.0).to(tl.float32)
            tl.store(A + out + b * n + o, (v - mean) * inv * g + beta, mask=m)


@triton.jit
def prefetch_rows(Wp, w, k, c0, c1, TILE: tl.constexpr, LINE: tl.constexpr):
    """Asks L2 for rows c0:c1 (width k) of the weights at Wp + w, one request per 128-byte line of LINE elements.
    GPU only (inline PTX): a worker issues it for its next GEMV tile before waiting, since weights never depend on
    the stage it waits for."""
    rows = c0 + tl.arange(0, TILE)
    rows = tl.where(rows < c1, rows, c0)
    for k0 in range(0, k, 32 * LINE):
        ks = k0 + tl.arange(0, 32) * LINE
        ks = tl.where(ks < k, ks, k0)
        tl.inline_asm_elementwise("prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0;", "=r,l",
                                  [Wp + w + rows[:, None] * k + ks[None, :]], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def row_rms(A, x, k, eps, B: tl.constexpr, B_P: tl.constexpr, K_BLOCK: tl.constexpr):
    """1 / rms of each of the B rows (width k) at A[x], as a [B_P] vector."""
    rows = tl.arange(0, B_P)
    ss = tl.zeros((B_P,), dtype=tl.float32)
    for k0 in range(0, k, K_BLOCK):
        ks = k0 + tl.arange(0, K_BLOCK)
        v = tl.load(A + x + rows[:, None] * k + ks[None, :], mask=(rows < B)[:, None] & (ks < k)[None, :], other=0.0)
        ss += tl.sum(v * v, axis=1)
    return 1.0 / tl.sqrt(ss / k + eps)


@triton.jit
def gemv(Wp, W, A, x, k, w, out, n, c0, c1, flags, norm, eps, B: tl.constexpr, B_P: tl.constexpr,
         K_BLOCK: tl.constexpr, TILE: tl.constexpr):
    """Output rows c0:c1 of f(A[x]) @ W.T (W stored [n, k]) for all B batch rows at once, f per `flags` (see isa):
    each weight tile is read contiguously along k, once per step whatever B is (batch rows padded to B_P >= 16 for
    tl.dot; fp32 "ieee" products, so bf16 weights are widened, not the activations narrowed). Accumulation into
    A[out] is atomic, so several accumulating instructions may share a stage."""
    cols = c0 + tl.arange(0, TILE)
    cm = cols < c1
    rows = tl.arange(0, B_P)
    rm = rows < B
    swiglu_in = (flags & FLAG_SWIGLU_INPUT) != 0
    norm_in = (flags & FLAG_NORM_INPUT) != 0
    inv = tl.full((B_P,), 1.0, tl.float32)
    if norm_in:
        inv = row_rms(A, x, k, eps, B, B_P, K_BLOCK)
    width = tl.where(swiglu_in, 2 * k, k)
    acc = tl.zeros((B_P, TILE), dtype=tl.float32)
    for k0 in range(0, k, K_BLOCK):
        ks = k0 + tl.arange(0, K_BLOCK)
        km = ks < k
        xm = rm[:, None] & km[None, :]
        xv = tl.load(A + x + rows[:, None] * width + ks[None, :], mask=xm, other=0.0)
        if swiglu_in:
            up = tl.load(A + x + rows[:, None] * width + k + ks[None, :], mask=xm, other=0.0)
            xv = xv / (1.0 + tl.exp(-xv)) * up
        if norm_in:
            xv = xv * inv[:, None] * tl.load(W + norm + ks, mask=km, other=0.0).to(tl.float32)[None, :]
        wv = tl.load(Wp + w + cols[:, None] * k + ks[None, :], mask=cm[:, None] & km[None, :], other=0.0)
        acc += tl.dot(xv, tl.trans(wv.to(tl.float32)), input_precision="ieee")
    dst = A + out + rows[:, None] * n + cols[None, :]
    if (flags & FLAG_ACCUMULATE) != 0:
        tl.atomic_add(dst, acc, mask=rm[:, None] & cm[None, :])
    else:
        tl.store(dst, acc, mask=rm[:, None] & cm[None, :])


@triton.jit
def softmax_update(m_i, l_i, acc, s, v):
    """One block of online softmax: scores s [N] (-inf where skipped) and values v [N, D] folded into the running
    max m_i, normaliser l_i and weighted sum acc [D]. A block with nothing kept changes nothing."""
    m_new = tl.maximum(m_i, tl.max(s, axis=0))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_use)
    e = tl.exp(s - m_use)
    return m_new, l_i * alpha + tl.sum(e, axis=0), acc * alpha + tl.sum(e[:, None] * v, axis=0)


@triton.jit
def attn(W, W32, A, C, pos, inv_freq, eps, qkv, out, row, kv_head, c_k, c_v, q_norm, k_norm, NH: tl.constexpr,
         NKV: tl.constexpr, HD: tl.constexpr, MAX_SEQ: tl.constexpr, BLOCK: tl.constexpr):
    """One (row, kv head): RMSNorm (when q_norm / k_norm >= 0) and rope its query heads and its key at the row's
    position, append k and v to the cache ([batch, max_seq, kv_heads, head_dim]), then online-softmax attention
    of its query heads over positions <= pos."""
    d = tl.arange(0, HD)
    half = tl.arange(0, HD // 2)
    p = tl.load(pos + row)
    ang = p.to(tl.float32) * tl.load(W32 + inv_freq + half)
    c = tl.cos(ang)
    s = tl.sin(ang)
    base = A + qkv + row * (NH + 2 * NKV) * HD
    GROUP: tl.constexpr = NH // NKV
    for j in tl.static_range(GROUP + 1):  # the group's query heads, then its key head
        h = tl.where(j < GROUP, kv_head * GROUP + j, NH + kv_head)
        norm = tl.where(j < GROUP, q_norm, k_norm)
        if norm >= 0:
            x = tl.load(base + h * HD + d)
            inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / HD + eps)
            g = tl.load(W + norm + d).to(tl.float32)
            tl.debug_barrier()
            tl.store(base + h * HD + d, x * inv * g)
            tl.debug_barrier()
        x1 = tl.load(base + h * HD + half)
        x2 = tl.load(base + h * HD + HD // 2 + half)
        tl.debug_barrier()
        tl.store(base + h * HD + half, x1 * c - x2 * s)
        tl.store(base + h * HD + HD // 2 + half, x2 * c + x1 * s)
    tl.debug_barrier()
    kbase = C + c_k + row * MAX_SEQ * NKV * HD + kv_head * HD  # position p at kbase + p * NKV * HD
    vbase = C + c_v + row * MAX_SEQ * NKV * HD + kv_head * HD
    tl.store(kbase + p * NKV * HD + d, tl.load(base + (NH + kv_head) * HD + d))
    tl.store(vbase + p * NKV * HD + d, tl.load(base + (NH + NKV + kv_head) * HD + d))
    tl.debug_barrier()
    n = p + 1
    for j in tl.static_range(GROUP):
        h = kv_head * GROUP + j
        q = tl.load(base + h * HD + d) / tl.sqrt(HD * 1.0)
        m_i = float("-inf")
        l_i = 0.0
        acc = tl.zeros((HD,), dtype=tl.float32)
        for p0 in range(0, n, BLOCK):
            ps = p0 + tl.arange(0, BLOCK)
            pm = ps < n
            k = tl.load(kbase + ps[:, None] * NKV * HD + d[None, :], mask=pm[:, None], other=0.0)
            sc = tl.where(pm, tl.sum(k * q[None, :], axis=1), float("-inf"))
            v = tl.load(vbase + ps[:, None] * NKV * HD + d[None, :], mask=pm[:, None], other=0.0)
            m_i, l_i, acc = softmax_update(m_i, l_i, acc, sc, v)
        tl.store(A + out + row * NH * HD + h * HD + d, acc / l_i)


@triton.jit
def argmax(A, x, out, n, B: tl.constexpr, BLOCK: tl.constexpr):
    for b in tl.static_range(B):
        best = float("-inf")
        idx = 0
        for k0 in range(0, n, BLOCK):
            o = k0 + tl.arange(0, BLOCK)
            v = tl.load(A + x + b * n + o, mask=o < n, other=float("-inf"))
            bm = tl.max(v, axis=0)
            if bm > best:
                best = bm
                idx = (k0 + tl.argmax(v, axis=0)).to(tl.int32)
        tl.store(A + out + b, idx.to(tl.float32))
