/* The AVX-512 rows (AVX-512 F + BW: Intel Skylake-SP and later servers, Ice Lake / Tiger Lake clients, AMD Zen 4
   and 5), sixteen lanes a vector. fp32 activations: a block's 32 values widened into two float vectors, one
   fused chain per activation row. int8 activations: two blocks fill one 64-byte vector; with VNNI (Cascade Lake,
   Ice Lake, Zen 4) vpdpbusd sums four byte products into each 32-bit lane, without it maddubs + madd do the same
   in two steps. Lanes 0-7 then hold the first block's sums and 8-15 the second's, scaled by one fused
   multiply-add. A last odd block takes the AVX2 form (every AVX-512 CPU has AVX2). */
#ifdef HD_EMULATE_AVX512
#include HD_EMULATE_AVX512 /* tests only: the same code over a portable emulation of these intrinsics */
#else
#include <immintrin.h>
#endif
#if defined(__AVX512VNNI__) || defined(HD_EMULATE_AVX512VNNI)
#define ISA "avx512+vnni"
#define VNNI 1
#else
#define ISA "avx512"
#define VNNI 0
#endif
#define ALWAYS static inline __attribute__((always_inline))

static void quantize_blocks(const float *x, int8_t *q, float *scale, int64_t blocks) {
    for (int64_t b = 0; b < blocks; b++) {
        const __m512 low = _mm512_loadu_ps(x + b * BLOCK), high = _mm512_loadu_ps(x + b * BLOCK + 16);
        const float s = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high))) / 127.0f;
        const __m512 inverse = _mm512_set1_ps(s > 0.0f ? 1.0f / s : 0.0f);
        /* round half to even (as nearbyintf), then narrow: every value already lies in -127..127 */
        _mm_storeu_si128((__m128i *)(q + b * BLOCK),
                         _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(low, inverse))));
        _mm_storeu_si128((__m128i *)(q + b * BLOCK + 16),
                         _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(high, inverse))));
        scale[b] = s;
    }
}

/* n fp16 values as floats */
static void widen(const half *h, float *f, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(f + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    for (; i < n; i++)
        f[i] = (float)h[i];
}

/* sum over blocks of c * sum(x_block), sixteen blocks a vector */
static float bias_dot(const half *c, const float *sum, int64_t blocks) {
    __m512 acc = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 16 <= blocks; b += 16)
        acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(c + b))), _mm512_loadu_ps(sum + b),
                              acc);
    const __mmask16 tail = (__mmask16)((1u << (blocks - b)) - 1);
    const __m512 last = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, c + b));
    acc = _mm512_fmadd_ps(last, _mm512_maskz_loadu_ps(tail, sum + b), acc);
    return _mm512_reduce_add_ps(acc);
}

/* a block's 32 values as two float vectors (values 0-15, 16-31) */
ALWAYS void unpack_f32(int kind, const uint8_t *q, __m512 v[2]) {
    if (kind == 4) {
        const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)q));
        v[0] = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
        v[1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
    } else {
        v[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
        v[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16))));
    }
}

ALWAYS __m512 dot_f32(const __m512 v[2], const float *x) {
    return _mm512_fmadd_ps(v[1], _mm512_loadu_ps(x + 16), _mm512_mul_ps(v[0], _mm512_loadu_ps(x)));
}

/* two blocks' 64 values as one vector of bytes in order (Q4: unsigned 0..15; Q8_0: signed) */
ALWAYS __m512i unpack_pair(int kind, const uint8_t *q) {
    if (kind == 8)
        return _mm512_loadu_si512((const void *)q);
    const __m256i raw = _mm256_loadu_si256((const __m256i *)q); /* [block b | block b + 1], 16 bytes each */
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1);
    /* 128-bit lanes [b low, b+1 low, b high, b+1 high] -> [b low, b high, b+1 low, b+1 high] */
    return _mm512_and_si512(_mm512_shuffle_i64x2(both, both, _MM_SHUFFLE(3, 1, 2, 0)), _mm512_set1_epi8(15));
}

/* q . xq of two blocks as sixteen float partial sums (lanes 0-7 the first block, 8-15 the second) */
ALWAYS __m512 dot_pair(int kind, __m512i w, const int8_t *xq) {
    __m512i x = _mm512_loadu_si512((const void *)xq);
    if (kind == 8) { /* unsigned |w| times x with w's sign */
        x = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
        w = _mm512_abs_epi8(w);
    }
#if VNNI
    return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x));
#else
    return _mm512_cvtepi32_ps(_mm512_madd_epi16(_mm512_maddubs_epi16(w, x), _mm512_set1_epi16(1)));
#endif
}

/* the AVX2 form of one block (a row's last, when it has an odd number): eight partial sums */
ALWAYS __m256 dot_one(int kind, const uint8_t *q, const int8_t *xq) {
    __m256i w;
    if (kind == 4) {
        const __m128i b = _mm_loadu_si128((const __m128i *)q);
        w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(15));
    } else {
        w = _mm256_loadu_si256((const __m256i *)q);
    }
    const __m256i x = _mm256_loadu_si256((const __m256i *)xq);
    const __m256i pairs = kind == 4 ? _mm256_maddubs_epi16(w, x)
                                    : _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

ALWAYS void finish(const struct weights *w, const struct acts *a, int64_t m, int rows, const __m512 *even,
                   const __m512 *odd, const float *extra, float *y, int64_t N, int accumulate) {
    for (int r = 0; r < rows; r++) {
        const float bias = w->c ? bias_dot(w->c, a->sum + (m + r) * w->blocks, w->blocks) : 0.0f;
        const float sum = _mm512_reduce_add_ps(_mm512_add_ps(even[r], odd[r])) + extra[r] + bias;
        y[r * N] = accumulate ? y[r * N] + sum : sum;
    }
}

/* one weight row against `rows` activation rows; even and odd blocks in two accumulators per row */
ALWAYS void rows_f32(int kind, int rows, const struct weights *w, const struct acts *a, int64_t m, float *y,
                     int64_t N, int accumulate) {
    const int64_t blocks = w->blocks, block_bytes = kind == 4 ? 16 : 32;
    float d[blocks];
    widen(w->d, d, blocks);
    const float *x = a->x + m * a->K;
    __m512 even[ROWS], odd[ROWS], v[2];
    float extra[ROWS] = {0};
    for (int r = 0; r < rows; r++)
        even[r] = odd[r] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        unpack_f32(kind, w->qs + b * block_bytes, v);
        for (int r = 0; r < rows; r++)
            even[r] = _mm512_fmadd_ps(_mm512_set1_ps(d[b]), dot_f32(v, x + r * a->K + b * BLOCK), even[r]);
        unpack_f32(kind, w->qs + (b + 1) * block_bytes, v);
        for (int r = 0; r < rows; r++)
            odd[r] = _mm512_fmadd_ps(_mm512_set1_ps(d[b + 1]), dot_f32(v, x + r * a->K + (b + 1) * BLOCK), odd[r]);
    }
    if (b < blocks) {
        unpack_f32(kind, w->qs + b * block_bytes, v);
        for (int r = 0; r < rows; r++)
            even[r] = _mm512_fmadd_ps(_mm512_set1_ps(d[b]), dot_f32(v, x + r * a->K + b * BLOCK), even[r]);
    }
    finish(w, a, m, rows, even, odd, extra, y, N, accumulate);
}

/* [s[0] x 8, s[1] x 8]: two blocks' scales spread over their lanes */
ALWAYS __m512 pair_scale(const float *s) {
    const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd((const double *)s))));
}

ALWAYS void rows_i8(int kind, int rows, const struct weights *w, const struct acts *a, int64_t m, float *y,
                    int64_t N, int accumulate) {
    const int64_t blocks = w->blocks, block_bytes = kind == 4 ? 16 : 32;
    float d[blocks], s[ROWS][blocks]; /* s: the weight's d times the activations' scale, per block */
    widen(w->d, d, blocks);
    for (int r = 0; r < rows; r++) {
        const float *xs = a->scale + (m + r) * blocks;
        int64_t b = 0;
        for (; b + 16 <= blocks; b += 16)
            _mm512_storeu_ps(s[r] + b, _mm512_mul_ps(_mm512_loadu_ps(d + b), _mm512_loadu_ps(xs + b)));
        for (; b < blocks; b++)
            s[r][b] = d[b] * xs[b];
    }
    const int8_t *xq = a->q + m * a->K;
    __m512 even[ROWS], odd[ROWS];
    float extra[ROWS] = {0};
    for (int r = 0; r < rows; r++)
        even[r] = odd[r] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= blocks; b += 4) {
        const __m512i v = unpack_pair(kind, w->qs + b * block_bytes);
        const __m512i u = unpack_pair(kind, w->qs + (b + 2) * block_bytes);
        for (int r = 0; r < rows; r++) {
            const int8_t *xb = xq + r * a->K + b * BLOCK;
            even[r] = _mm512_fmadd_ps(pair_scale(s[r] + b), dot_pair(kind, v, xb), even[r]);
            odd[r] = _mm512_fmadd_ps(pair_scale(s[r] + b + 2), dot_pair(kind, u, xb + 2 * BLOCK), odd[r]);
        }
    }
    if (b + 2 <= blocks) {
        const __m512i v = unpack_pair(kind, w->qs + b * block_bytes);
        for (int r = 0; r < rows; r++)
            even[r] = _mm512_fmadd_ps(pair_scale(s[r] + b), dot_pair(kind, v, xq + r * a->K + b * BLOCK), even[r]);
        b += 2;
    }
    if (b < blocks) {
        for (int r = 0; r < rows; r++) {
            const __m256 dot = dot_one(kind, w->qs + b * block_bytes, xq + r * a->K + b * BLOCK);
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(dot), _mm256_extractf128_ps(dot, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            extra[r] = s[r][b] * _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
        }
    }
    finish(w, a, m, rows, even, odd, extra, y, N, accumulate);
}
