"""Device functions of the megakernel for the opcodes every family uses (and the Llama attention and its split merge).
Each is a `@triton.jit` function the persistent kernel calls inline; operands are as in `isa.ARGS`, arenas are
passed as pointers. Weights may be any float dtype (float8 with block scales) and are widened to fp32 in
registers; activations and the cache are fp32.

Imported only when the kernel is first built (Triton must see TRITON_INTERPRET before any function is decorated).
"""
import triton
import triton.language as tl

from .constants import BEST_EMPTY, FLAG_ACCUMULATE, FLAG_NORM_INPUT, FLAG_SWIGLU_INPUT, FP8_BLOCK, ROW_ALIGN


@triton.jit
def embed(W, A, tok, w, out, n, best, B: tl.constexpr, BLOCK: tl.constexpr):
    """Each row's token embedding into A[out]; every row's ARGMAX result A[best] starts below every candidate."""
    packed = (A + best).to(tl.pointer_type(tl.int64), bitcast=True)
    for b in range(B):
        row = tl.load(tok + b).to(tl.int64)
        tl.store(packed + b, BEST_EMPTY)
        for k0 in range(0, n, BLOCK):
            o = k0 + tl.arange(0, BLOCK)
            m = o < n
            tl.store(A + out + b * n + o, tl.load(W + w + row * n + o, mask=m).to(tl.float32), mask=m)


@triton.jit
def norm_rows(W, A, x, x_stride, w, bias, out, n, eps, B: tl.constexpr, BLOCK: tl.constexpr):
    """RMSNorm of rows x_stride apart, or LayerNorm (mean removed, plus bias) when bias >= 0. In place is fine."""
    layer_norm = bias >= 0
    for b in range(B):
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
    """Asks L2 for rows c0:c1 of the matrix at Wp + w (width k, rows row_stride(k) apart), one request per 128-byte
    line of LINE elements. GPU only (inline PTX): a worker issues it for its next GEMV tile as it starts this one,
    since weights never depend on activations, so that tile's first chunks are in L2 when it starts."""
    ld = (k + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    rows = c0 + tl.arange(0, TILE)
    rows = tl.where(rows < c1, rows, c0)
    for k0 in range(0, ld, 32 * LINE):
        ks = k0 + tl.arange(0, 32) * LINE
        ks = tl.where(ks < ld, ks, k0)
        tl.inline_asm_elementwise("prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0;", "=r,l",
                                  [Wp + w + rows[:, None] * ld + ks[None, :]], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_l1(ptr):
    """Asks L1 for the line holding ptr (inline PTX: GPU only)."""
    tl.inline_asm_elementwise("prefetch.global.L1 [$1]; mov.u32 $0, 0;", "=r,l", [ptr], dtype=tl.int32, is_pure=False,
                              pack=1)


@triton.jit
def row_rms(A, x, k, eps, ROWS: tl.constexpr, B: tl.constexpr, K_BLOCK: tl.constexpr):
    """1 / rms of each of the B rows (width k) at A[x], as a [ROWS] vector (ROWS >= B)."""
    rows = tl.arange(0, ROWS)
    ss = tl.zeros((ROWS,), dtype=tl.float32)
    for k0 in range(0, k, K_BLOCK):
        ks = k0 + tl.arange(0, K_BLOCK)
        v = tl.load(A + x + rows[:, None] * k + ks[None, :], mask=(rows < B)[:, None] & (ks < k)[None, :], other=0.0)
        ss += tl.sum(v * v, axis=1)
    return 1.0 / tl.sqrt(ss / k + eps)


@triton.jit
def gemv_input(A, W, x, k, ld, x_stride, rows, ks, inv, norm, flags, B: tl.constexpr):
    """A chunk [rows, ks] of the GEMV's input f(A[x]) (see `gemv`), zero outside the B rows and the width k; batch
    rows x_stride apart (0: the input's own width). The norm weight is read up to ld (the arena's zero padding), so
    that it too is read 16 bytes at a time."""
    swiglu_in = (flags & FLAG_SWIGLU_INPUT) != 0
    km = ks < k
    xm = (rows < B)[:, None] & km[None, :]
    width = tl.where(x_stride > 0, x_stride, tl.where(swiglu_in, 2 * k, k))
    xv = tl.load(A + x + rows[:, None] * width + ks[None, :], mask=xm, other=0.0)
    if swiglu_in:
        up = tl.load(A + x + rows[:, None] * width + k + ks[None, :], mask=xm, other=0.0)
        xv = xv / (1.0 + tl.exp(-xv)) * up
    if (flags & FLAG_NORM_INPUT) != 0:
        g = tl.load(W + norm // ROW_ALIGN * ROW_ALIGN + ks, mask=ks < ld, other=0.0).to(tl.float32)
        xv = xv * inv[:, None] * g[None, :]
    return xv


@triton.jit
def weight_rows(Wp, W32, w, ld, wrows, k0, scale, K: tl.constexpr):
    """Rows `wrows` x columns k0:k0+K of the matrix at Wp + w (rows ld apart, ld a multiple of ROW_ALIGN, so the
    loads are 16 bytes wide), widened to fp32, and each row's FP8 block scale for this chunk (1 unless Wp holds
    float8 weights; a chunk never crosses a 128-column block)."""
    ks = k0 + tl.arange(0, K)
    base = Wp + w // ROW_ALIGN * ROW_ALIGN  # == w; written so that the compiler knows the alignment
    wv = tl.load(base + wrows[:, None] * ld + ks[None, :], mask=(ks < ld)[None, :], other=0.0).to(tl.float32)
    if Wp.dtype.element_ty == tl.float8e4nv:
        blocks = (ld + FP8_BLOCK - 1) // FP8_BLOCK
        s = tl.load(W32 + scale + (wrows // FP8_BLOCK) * blocks + k0 // FP8_BLOCK)
    else:
        s = tl.full(wrows.shape, 1.0, tl.float32)
    return wv, s


@triton.jit
def gemv(Wp, W, W32, A, x, k, w, out, n, c0, c1, flags, norm, scale, eps, x_stride, out_stride, B: tl.constexpr,
         ROWS: tl.constexpr, K_BLOCK: tl.constexpr, TILE: tl.constexpr, STAGES: tl.constexpr):
    """Output rows c0:c1 of f(A[x]) @ W.T (W stored [n, k] at Wp + w, rows row_stride(k) apart) for all B batch
    rows at once, f per `flags` (see isa): each weight tile is read once per step whatever B is, in K_BLOCK chunks
    pipelined STAGES deep. Small batches (ROWS <= 4, the batch rounded up to a power of two) multiply and
    accumulate elementwise and reduce once at the end (no padding, no dot), as do fp32 weights (the small router and
    indexer projections) at any batch; larger batches of bf16 / FP8 weights pad to ROWS >= 16 for a bf16
    tensor-core tl.dot (fp32 accumulate). Accumulation into A[out] is
    atomic, so several accumulating instructions may share a stage (relaxed: the instruction's release signal
    orders it). x_stride / out_stride: how far apart batch rows of the input / output are (0: k / n); MLA's
    absorbed products use them to run one head of a [batch, heads, width] buffer."""
    ld = (k + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    cols = c0 + tl.arange(0, TILE)
    cm = cols < c1
    wrows = tl.where(cm, cols, c0)  # rows past c1 re-read row c0 (never stored): no row mask on the weight loads
    rows = tl.arange(0, ROWS)
    inv = tl.full((ROWS,), 1.0, tl.float32)
    if (flags & FLAG_NORM_INPUT) != 0:
        inv = row_rms(A, x, k, eps, ROWS, B, K_BLOCK)
    if (ROWS <= 4) | (Wp.dtype.element_ty == tl.float32):
        acc3 = tl.zeros((ROWS, TILE, K_BLOCK), dtype=tl.float32)
        for k0 in tl.range(0, ld, K_BLOCK, num_stages=STAGES):
            wv, s = weight_rows(Wp, W32, w, ld, wrows, k0, scale, K_BLOCK)
            xv = gemv_input(A, W, x, k, ld, x_stride, rows, k0 + tl.arange(0, K_BLOCK), inv, norm, flags, B)
            acc3 += (wv * s[:, None])[None, :, :] * xv[:, None, :]
        acc = tl.sum(acc3, axis=2)
    else:
        acc = tl.zeros((ROWS, TILE), dtype=tl.float32)
        for k0 in tl.range(0, ld, K_BLOCK, num_stages=STAGES):
            wv, s = weight_rows(Wp, W32, w, ld, wrows, k0, scale, K_BLOCK)
            xv = gemv_input(A, W, x, k, ld, x_stride, rows, k0 + tl.arange(0, K_BLOCK), inv, norm, flags, B)
            acc += tl.dot(xv.to(tl.bfloat16), tl.trans(wv.to(tl.bfloat16))) * s[None, :]
    dst = A + out + rows[:, None] * tl.where(out_stride > 0, out_stride, n) + cols[None, :]
    mask = (rows < B)[:, None] & cm[None, :]
    if (flags & FLAG_ACCUMULATE) != 0:
        tl.atomic_add(dst, acc, mask=mask, sem="relaxed")
    else:
        tl.store(dst, acc, mask=mask)


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
def rope_head(ptr, norm, W, c, s, eps, HD: tl.constexpr):
    """A head's two halves at ptr, RMSNormed by W[norm] first when norm >= 0, rotated by (c, s): in registers."""
    half = tl.arange(0, HD // 2)
    x1 = tl.load(ptr + half)
    x2 = tl.load(ptr + HD // 2 + half)
    if norm >= 0:
        inv = 1.0 / tl.sqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / HD + eps)
        x1 = x1 * inv * tl.load(W + norm + half).to(tl.float32)
        x2 = x2 * inv * tl.load(W + norm + HD // 2 + half).to(tl.float32)
    return x1 * c - x2 * s, x2 * c + x1 * s


@triton.jit
def attn(W, W32, A, C, pos, inv_freq, eps, qkv, out, row, kv_head, c_k, c_v, q_norm, k_norm, split, part,
         NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr, MAX_SEQ: tl.constexpr, KV_SPLIT: tl.constexpr,
         SPLITS: tl.constexpr, BLOCK: tl.constexpr, QUERIES: tl.constexpr):
    """One (cache row, kv head, split), for each of the row's QUERIES tokens in order (activation row
    row * QUERIES + t): its query heads and key RMSNormed (when q_norm / k_norm >= 0) and roped in registers (A[qkv]
    is only read: every split of the head reads it); the split that holds the token's position appends k and v to
    the cache ([rows, max_seq, kv_heads, head_dim]); then online-softmax attention of the query heads over the
    split's positions <= pos, into A[out] (part < 0) or as a partial (acc, max, sum) into A[part]. Token t's append
    comes before token t + 1's attention, so a verified draft is causal inside itself."""
    for t in range(QUERIES):  # a loop, not unrolled: unrolled, the whole kernel spills (aot: 128 B at 4 tokens)
        attn_query(W, W32, A, C, pos, inv_freq, eps, qkv, out, row, row * QUERIES + t, kv_head, c_k, c_v, q_norm,
                   k_norm, split, part, NH, NKV, HD, MAX_SEQ, KV_SPLIT, SPLITS, BLOCK)


@triton.jit
def attn_query(W, W32, A, C, pos, inv_freq, eps, qkv, out, crow, row, kv_head, c_k, c_v, q_norm, k_norm, split, part,
               NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr, MAX_SEQ: tl.constexpr, KV_SPLIT: tl.constexpr,
               SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    """`attn` for one token: activation row `row` of cache row `crow`."""
    d = tl.arange(0, HD)
    half = tl.arange(0, HD // 2)
    p = tl.load(pos + row)
    ang = p.to(tl.float32) * tl.load(W32 + inv_freq + half)
    c = tl.cos(ang)
    s = tl.sin(ang)
    base = A + qkv + row * (NH + 2 * NKV) * HD
    kbase = C + c_k + crow * MAX_SEQ * NKV * HD + kv_head * HD  # position p at kbase + p * NKV * HD
    vbase = C + c_v + crow * MAX_SEQ * NKV * HD + kv_head * HD
    lo = split * KV_SPLIT
    hi = tl.minimum(lo + KV_SPLIT, p + 1)
    if (lo <= p) & (p < lo + KV_SPLIT):
        k1, k2 = rope_head(base + (NH + kv_head) * HD, k_norm, W, c, s, eps, HD)
        tl.store(kbase + p * NKV * HD + half, k1)
        tl.store(kbase + p * NKV * HD + HD // 2 + half, k2)
        tl.store(vbase + p * NKV * HD + d, tl.load(base + (NH + NKV + kv_head) * HD + d))
    tl.debug_barrier()  # the new key and value are read below (and by the row's next token) by other threads
    GROUP: tl.constexpr = NH // NKV
    for j in tl.static_range(GROUP):
        h = kv_head * GROUP + j
        q1, q2 = rope_head(base + h * HD, q_norm, W, c, s, eps, HD)
        q1 = q1 / tl.sqrt(HD * 1.0)
        q2 = q2 / tl.sqrt(HD * 1.0)
        m_i = float("-inf")
        l_i = 0.0
        acc = tl.zeros((HD,), dtype=tl.float32)
        for p0 in range(lo, hi, BLOCK):
            ps = p0 + tl.arange(0, BLOCK)
            pm = ps < hi
            krow = kbase + ps[:, None] * NKV * HD
            k1 = tl.load(krow + half[None, :], mask=pm[:, None], other=0.0)
            k2 = tl.load(krow + HD // 2 + half[None, :], mask=pm[:, None], other=0.0)
            sc = tl.where(pm, tl.sum(k1 * q1[None, :], axis=1) + tl.sum(k2 * q2[None, :], axis=1), float("-inf"))
            v = tl.load(vbase + ps[:, None] * NKV * HD + d[None, :], mask=pm[:, None], other=0.0)
            m_i, l_i, acc = softmax_update(m_i, l_i, acc, sc, v)
        if part < 0:
            tl.store(A + out + row * NH * HD + h * HD + d, acc / l_i)
        else:
            dst = A + part + ((row * SPLITS + split) * NH + h) * (HD + 2)
            tl.store(dst + d, acc)
            tl.store(dst + HD, m_i)
            tl.store(dst + HD + 1, l_i)


@triton.jit
def attn_merge(A, part, out, row, NH: tl.constexpr, HD: tl.constexpr, SPLITS: tl.constexpr,
               SPLITS_P: tl.constexpr):
    """One row: every head's output from its KV splits' partials, each weighed by exp(its max - the overall max)
    (an empty split has max -inf and weighs 0)."""
    sp = tl.arange(0, SPLITS_P)
    d = tl.arange(0, HD)
    sm = sp < SPLITS
    for h in range(NH):
        src = A + part + ((row * SPLITS + sp) * NH + h) * (HD + 2)
        m = tl.load(src + HD, mask=sm, other=float("-inf"))
        l_s = tl.load(src + HD + 1, mask=sm, other=0.0)
        top = tl.max(m, axis=0)
        wgt = tl.where(m == float("-inf"), 0.0, tl.exp(m - top))
        acc = tl.load(src[:, None] + d[None, :], mask=sm[:, None], other=0.0)
        o = tl.sum(wgt[:, None] * acc, axis=0) / tl.sum(wgt * l_s, axis=0)
        tl.store(A + out + (row * NH + h) * HD + d, o)


@triton.jit
def order_key(v):
    """An int64 that orders like the float v (-0.0 counts as 0.0)."""
    bits = tl.where(v == 0.0, 0.0, v).to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)


@triton.jit
def argmax(A, x, best, n, row, c0, c1, BLOCK: tl.constexpr):
    """One vocabulary slice of one row: its largest logit (lowest index among equals), packed as isa.pack_best and
    folded into A[best][row] with an atomic max (relaxed: the release signal orders it)."""
    top = float("-inf")
    idx = c0
    for k0 in range(c0, c1, BLOCK):
        o = k0 + tl.arange(0, BLOCK)
        v = tl.load(A + x + row * n + o, mask=o < c1, other=float("-inf"))
        bm = tl.max(v, axis=0)
        if bm > top:
            top = bm
            idx = k0 + tl.argmax(v, axis=0)
    packed = (order_key(top) << 32) | (0xFFFFFFFF - idx.to(tl.int64))
    tl.atomic_max((A + best).to(tl.pointer_type(tl.int64), bitcast=True) + row, packed, sem="relaxed")
