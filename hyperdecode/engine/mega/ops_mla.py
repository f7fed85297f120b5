"""Device functions of the megakernel for the GLM-5 / DeepSeek-V3.2 family: RoPE of the decoupled key, the DSA
indexer (key append, scores, exact top-k), absorbed MLA over the latent cache (its W_UK / W_UV products are GEMV
tiles: see megakernel.py's MLA_UK / MLA_UV), MoE routing and routed experts.
Operands are as in `isa.ARGS`; sizes that are the same for the whole program are constexprs.
"""
import triton
import triton.language as tl

from .constants import FP8_BLOCK, ROW_ALIGN
from .ops import order_key, softmax_update, weight_rows


@triton.jit
def rope_halves(ptr, p, W32, inv_freq, factor, R: tl.constexpr, INTERLEAVED: tl.constexpr):
    """Rotates R values at ptr by position p; interleaved pairs (x0, x1), (x2, x3)... or halves; returns the two
    output halves (both styles come out as halves, as in the reference)."""
    j = tl.arange(0, R // 2)
    if INTERLEAVED:
        x1 = tl.load(ptr + 2 * j)
        x2 = tl.load(ptr + 2 * j + 1)
    else:
        x1 = tl.load(ptr + j)
        x2 = tl.load(ptr + R // 2 + j)
    ang = p.to(tl.float32) * tl.load(W32 + inv_freq + j)
    c = tl.cos(ang) * factor
    s = tl.sin(ang) * factor
    return x1 * c - x2 * s, x2 * c + x1 * s


@triton.jit
def rope_in_place(ptr, p, W32, inv_freq, factor, R: tl.constexpr, INTERLEAVED: tl.constexpr):
    j = tl.arange(0, R // 2)
    y1, y2 = rope_halves(ptr, p, W32, inv_freq, factor, R, INTERLEAVED)
    tl.debug_barrier()  # every thread has read before any writes (interleaved pairs move)
    tl.store(ptr + j, y1)
    tl.store(ptr + R // 2 + j, y2)
    tl.debug_barrier()


@triton.jit
def rope_mla(W32, A, C, pos, inv_freq, factor, q, kva, lat, row, c_lat, c_pe, NH: tl.constexpr, NOPE: tl.constexpr,
             R: tl.constexpr, L: tl.constexpr, MAX_SEQ: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK: tl.constexpr,
             QUERIES: tl.constexpr):
    p = tl.load(pos + row)
    for h in range(NH):
        rope_in_place(A + q + (row * NH + h) * (NOPE + R) + NOPE, p, W32, inv_freq, factor, R, INTERLEAVED)
    y1, y2 = rope_halves(A + kva + row * (L + R) + L, p, W32, inv_freq, factor, R, INTERLEAVED)
    j = tl.arange(0, R // 2)
    dst = C + c_pe + (row // QUERIES * MAX_SEQ + p) * R
    tl.store(dst + j, y1)
    tl.store(dst + R // 2 + j, y2)
    for k0 in range(0, L, BLOCK):
        o = k0 + tl.arange(0, BLOCK)
        m = o < L
        tl.store(C + c_lat + (row // QUERIES * MAX_SEQ + p) * L + o, tl.load(A + lat + row * L + o, mask=m), mask=m)


@triton.jit
def index_key(W32, A, C, pos, inv_freq, factor, ik, row, c_ik, D: tl.constexpr, R: tl.constexpr,
              MAX_SEQ: tl.constexpr, INTERLEAVED: tl.constexpr, QUERIES: tl.constexpr):
    p = tl.load(pos + row)
    src = A + ik + row * D
    dst = C + c_ik + (row // QUERIES * MAX_SEQ + p) * D
    y1, y2 = rope_halves(src, p, W32, inv_freq, factor, R, INTERLEAVED)
    j = tl.arange(0, R // 2)
    tl.store(dst + j, y1)
    tl.store(dst + R // 2 + j, y2)
    d = tl.arange(0, D)
    tl.store(dst + d, tl.load(src + d, mask=d >= R), mask=d >= R)


@triton.jit
def index_topk(W32, A, C, pos, inv_freq, factor, iq, iw, sel, row, c_ik, HI: tl.constexpr, HI_P: tl.constexpr,
               D: tl.constexpr, R: tl.constexpr, TOPK: tl.constexpr, MAX_SEQ: tl.constexpr,
               INTERLEAVED: tl.constexpr, PB: tl.constexpr, BLOCK: tl.constexpr, QUERIES: tl.constexpr):
    """A[sel][row] = 1 at the TOPK highest indexer scores (exact: a threshold found by bisection on the scores'
    order keys, ties at the threshold taken in position order), else 0. The scores are staged in A[sel] itself."""
    p = tl.load(pos + row)
    n = p + 1
    out = A + sel + row * MAX_SEQ
    if n <= TOPK:
        for p0 in range(0, MAX_SEQ, BLOCK):
            ps = p0 + tl.arange(0, BLOCK)
            tl.store(out + ps, tl.where(ps < n, 1.0, 0.0), mask=ps < MAX_SEQ)
    else:
        qb = A + iq + row * HI * D
        for h in range(HI):
            rope_in_place(qb + h * D, p, W32, inv_freq, factor, R, INTERLEAVED)
        hs = tl.arange(0, HI_P)
        d = tl.arange(0, D)
        q = tl.load(qb + hs[:, None] * D + d[None, :], mask=hs[:, None] < HI, other=0.0)
        w = tl.load(A + iw + row * HI + hs, mask=hs < HI, other=0.0) / tl.sqrt(HI * 1.0)
        keys = C + c_ik + row // QUERIES * MAX_SEQ * D
        for p0 in range(0, n, PB):
            ps = p0 + tl.arange(0, PB)
            k = tl.load(keys + ps[:, None] * D + d[None, :], mask=(ps < n)[:, None], other=0.0)
            s = tl.maximum(tl.dot(q, tl.trans(k), input_precision="ieee") / tl.sqrt(D * 1.0), 0.0)
            tl.store(out + ps, tl.sum(w[:, None] * s, axis=0), mask=ps < n)
        tl.debug_barrier()
        lo = tl.full((), -(2 ** 31), tl.int64)
        hi = tl.full((), 2 ** 31 - 1, tl.int64)
        for _ in range(32):  # the largest t with at least TOPK keys >= t: the TOPK-th largest key
            mid = lo + (hi - lo + 1) // 2
            count = 0
            for p0 in range(0, n, BLOCK):
                ps = p0 + tl.arange(0, BLOCK)
                key = order_key(tl.load(out + ps, mask=ps < n, other=0.0))
                count += tl.sum(((key >= mid) & (ps < n)).to(tl.int32), axis=0)
            lo = tl.where(count >= TOPK, mid, lo)
            hi = tl.where(count >= TOPK, hi, mid - 1)
        above = 0
        for p0 in range(0, n, BLOCK):
            ps = p0 + tl.arange(0, BLOCK)
            key = order_key(tl.load(out + ps, mask=ps < n, other=0.0))
            above += tl.sum(((key > lo) & (ps < n)).to(tl.int32), axis=0)
        ties_left = TOPK - above
        seen = 0
        for p0 in range(0, MAX_SEQ, BLOCK):
            ps = p0 + tl.arange(0, BLOCK)
            key = order_key(tl.load(out + ps, mask=ps < n, other=0.0))
            tie = (key == lo) & (ps < n)
            rank = seen + tl.cumsum(tie.to(tl.int32), axis=0)
            take = (ps < n) & ((key > lo) | (tie & (rank <= ties_left)))
            seen += tl.sum(tie.to(tl.int32), axis=0)
            tl.debug_barrier()
            tl.store(out + ps, tl.where(take, 1.0, 0.0), mask=ps < MAX_SEQ)


@triton.jit
def mla_attn(A, C, pos, scale, q, qlat, olat, sel, row, head, c_lat, c_pe, NH: tl.constexpr, NOPE: tl.constexpr,
             R: tl.constexpr, L: tl.constexpr, MAX_SEQ: tl.constexpr, LB: tl.constexpr, QUERIES: tl.constexpr):
    """Absorbed MLA of one (row, head) (the latents of cache row row // QUERIES): its q_lat (W_UK's product, from
    MLA_UK) against the latents plus q_pe against the roped keys, online softmax over the positions <= its own that
    A[sel] keeps (all when sel < 0) -> the latent mix A[olat] (MLA_UV applies W_UV). A token at the spare position
    (padding, or a row not in the step) attends position 0 only, unmasked: its output is never used."""
    p = tl.load(pos + row)
    spare = p == MAX_SEQ - 1
    n = tl.where(spare, 1, p + 1)
    crow = row // QUERIES
    lidx = tl.arange(0, L)
    rr = tl.arange(0, R)
    q_lat = tl.load(A + qlat + (row * NH + head) * L + lidx)
    q_pe = tl.load(A + q + (row * NH + head) * (NOPE + R) + NOPE + rr)
    m_i = float("-inf")
    l_i = 0.0
    acc = tl.zeros((L,), dtype=tl.float32)
    for p0 in range(0, n, LB):
        ps = p0 + tl.arange(0, LB)
        pm = ps < n
        keep = (tl.load(A + sel + row * MAX_SEQ + ps, mask=pm & (sel >= 0), other=1.0) != 0.0) | spare
        lat = tl.load(C + c_lat + (crow * MAX_SEQ + ps[:, None]) * L + lidx[None, :], mask=pm[:, None], other=0.0)
        pe = tl.load(C + c_pe + (crow * MAX_SEQ + ps[:, None]) * R + rr[None, :], mask=pm[:, None], other=0.0)
        s = (tl.sum(lat * q_lat[None, :], axis=1) + tl.sum(pe * q_pe[None, :], axis=1)) * scale
        s = tl.where(pm & keep, s, float("-inf"))
        m_i, l_i, acc = softmax_update(m_i, l_i, acc, s, lat)
    tl.store(A + olat + (row * NH + head) * L + lidx, acc / l_i)


@triton.jit
def route(W32, A, rlog, out, row, bias, scale, E: tl.constexpr, E_P: tl.constexpr, K: tl.constexpr,
          K_P: tl.constexpr, N_GROUP: tl.constexpr, N_GROUP_P: tl.constexpr, TOPK_GROUP: tl.constexpr,
          NORM: tl.constexpr):
    """Sigmoid scores; selection on score + bias within the TOPK_GROUP best groups (a group's score: its two best);
    weights are the chosen scores, normalised when NORM, times `scale`. Ties go to the lower index."""
    es = tl.arange(0, E_P)
    me = es < E
    score = 1.0 / (1.0 + tl.exp(-tl.load(A + rlog + row * E + es, mask=me, other=0.0)))
    choice = tl.where(me, score + tl.load(W32 + bias + es, mask=me, other=0.0), float("-inf"))
    if N_GROUP > 1:
        PER: tl.constexpr = E // N_GROUP
        gs = tl.arange(0, N_GROUP_P)
        group_score = tl.full((N_GROUP_P,), float("-inf"), tl.float32)
        for g in tl.static_range(N_GROUP):
            c_g = tl.where(es // PER == g, choice, float("-inf"))
            best = tl.max(c_g, axis=0)
            if PER > 1:
                best += tl.max(tl.where(es == tl.argmax(c_g, axis=0), float("-inf"), c_g), axis=0)
            group_score = tl.where(gs == g, best, group_score)
        kept = es < 0
        for _ in tl.static_range(TOPK_GROUP):
            g = tl.argmax(group_score, axis=0)
            kept = kept | (es // PER == g)
            group_score = tl.where(gs == g, float("-inf"), group_score)
        choice = tl.where(kept, choice, float("-inf"))
    ks = tl.arange(0, K_P)
    ids = tl.zeros((K_P,), dtype=tl.float32)
    weights = tl.zeros((K_P,), dtype=tl.float32)
    for j in tl.static_range(K):
        e = tl.argmax(choice, axis=0)
        ids = tl.where(ks == j, e.to(tl.float32), ids)
        weights = tl.where(ks == j, tl.sum(tl.where(es == e, score, 0.0), axis=0), weights)
        choice = tl.where(es == e, float("-inf"), choice)
    if NORM:
        weights = weights / (tl.sum(weights, axis=0) + 1e-20)
    tl.store(A + out + row * 2 * K + ks, ids, mask=ks < K)
    tl.store(A + out + row * 2 * K + K + ks, weights * scale, mask=ks < K)


@triton.jit
def expert_up(Wp, W, W32, A, x, route, act, row, slot, w13, c0, c1, norm, scale, eps, H: tl.constexpr,
              I: tl.constexpr, K: tl.constexpr, K_BLOCK: tl.constexpr, TILE: tl.constexpr, STAGES: tl.constexpr):
    """Rows c0:c1 of one routed expert's gate and up projections of h = rmsnorm(A[x][row]) * W[norm] (the expert
    id is read here, so only the chosen experts' weights are ever read) -> A[act][row, slot, c0:c1]. Wp holds the
    [E, 2I, H] stack (FP8 with block scales at W32[scale] when Wp is float8)."""
    e = tl.load(A + route + row * 2 * K + slot).to(tl.int64)
    LD: tl.constexpr = (H + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    BLOCKS: tl.constexpr = ((2 * I + FP8_BLOCK - 1) // FP8_BLOCK) * ((LD + FP8_BLOCK - 1) // FP8_BLOCK)
    w = w13 + e * (2 * I * LD)
    s_e = scale + e * BLOCKS
    ss = 0.0
    for k0 in range(0, H, K_BLOCK):
        ks = k0 + tl.arange(0, K_BLOCK)
        v = tl.load(A + x + row * H + ks, mask=ks < H, other=0.0)
        ss += tl.sum(v * v, axis=0)
    inv = 1.0 / tl.sqrt(ss / H + eps)
    rows = c0 + tl.arange(0, TILE)
    rm = rows < c1
    wrows = tl.where(rm, rows, c0)
    g = tl.zeros((TILE, K_BLOCK), dtype=tl.float32)
    u = tl.zeros((TILE, K_BLOCK), dtype=tl.float32)
    for k0 in tl.range(0, LD, K_BLOCK, num_stages=STAGES):
        ks = k0 + tl.arange(0, K_BLOCK)
        h = tl.load(A + x + row * H + ks, mask=ks < H, other=0.0) * inv \
            * tl.load(W + norm // ROW_ALIGN * ROW_ALIGN + ks, mask=ks < H, other=0.0).to(tl.float32)
        wg, sg = weight_rows(Wp, W32, w, LD, wrows, k0, s_e, K_BLOCK)
        wu, su = weight_rows(Wp, W32, w, LD, I + wrows, k0, s_e, K_BLOCK)
        g += wg * sg[:, None] * h[None, :]
        u += wu * su[:, None] * h[None, :]
    gate = tl.sum(g, axis=1)
    up = tl.sum(u, axis=1)
    tl.store(A + act + (row * K + slot) * I + rows, gate / (1.0 + tl.exp(-gate)) * up, mask=rm)


@triton.jit
def expert_down(Wp, W32, A, route, act, x, row, slot, w2, c0, c1, scale, H: tl.constexpr, I: tl.constexpr,
                K: tl.constexpr, K_BLOCK: tl.constexpr, TILE: tl.constexpr, STAGES: tl.constexpr):
    """Rows c0:c1 of one routed expert's down projection ([E, H, I] stack at Wp), scaled by its routing weight and
    added to A[x] with relaxed atomics (the row's other experts add to the same values at the same time)."""
    e = tl.load(A + route + row * 2 * K + slot).to(tl.int64)
    weight = tl.load(A + route + row * 2 * K + K + slot)
    LD: tl.constexpr = (I + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    BLOCKS: tl.constexpr = ((H + FP8_BLOCK - 1) // FP8_BLOCK) * ((LD + FP8_BLOCK - 1) // FP8_BLOCK)
    w = w2 + e * (H * LD)
    rows = c0 + tl.arange(0, TILE)
    rm = rows < c1
    wrows = tl.where(rm, rows, c0)
    acc = tl.zeros((TILE, K_BLOCK), dtype=tl.float32)
    for k0 in tl.range(0, LD, K_BLOCK, num_stages=STAGES):
        ks = k0 + tl.arange(0, K_BLOCK)
        a = tl.load(A + act + (row * K + slot) * I + ks, mask=ks < I, other=0.0)
        wv, sv = weight_rows(Wp, W32, w, LD, wrows, k0, scale + e * BLOCKS, K_BLOCK)
        acc += wv * sv[:, None] * a[None, :]
    tl.atomic_add(A + x + row * H + rows, weight * tl.sum(acc, axis=1), mask=rm, sem="relaxed")
