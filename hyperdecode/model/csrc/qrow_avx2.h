/* The AVX2 + FMA + F16C rows (x86-64-v3: AMD Zen 1-5, Intel Haswell and later client CPUs): eight lanes a vector.
   fp32 activations: a block's 32 values widened to four float vectors, multiplied into one fused chain per
   activation row. int8 activations: a block is one 32-byte vector; maddubs multiplies unsigned weight bytes by
   signed activation bytes into 16-bit pairs (Q8_0's signed weights: |w| times x with w's sign), madd sums the
   pairs into eight 32-bit lanes, and one fused multiply-add scales them into the row's float sum. */
#include <immintrin.h>
#define ISA "avx2+fma+f16c"
#define ALWAYS static inline __attribute__((always_inline))

ALWAYS float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* n fp16 values as floats */
static void widen(const half *h, float *f, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++)
        f[i] = (float)h[i];
}

/* sum over blocks of c * sum(x_block), eight blocks a vector */
static float bias_dot(const half *c, const float *sum, int64_t blocks) {
    __m256 acc = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 8 <= blocks; b += 8)
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(c + b))), _mm256_loadu_ps(sum + b),
                              acc);
    float total = hsum(acc);
    for (; b < blocks; b++)
        total += (float)c[b] * sum[b];
    return total;
}

static void quantize_blocks(const float *x, int8_t *q, float *scale, int64_t blocks) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* undoes the packs' lane interleave */
    for (int64_t b = 0; b < blocks; b++) {
        const float *xb = x + b * BLOCK;
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
        }
        __m128 top = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        top = _mm_max_ps(top, _mm_movehl_ps(top, top));
        top = _mm_max_ss(top, _mm_movehdup_ps(top));
        const float s = _mm_cvtss_f32(top) / 127.0f;
        const __m256 inverse = _mm256_set1_ps(s > 0.0f ? 1.0f / s : 0.0f);
        __m256i n[4];
        for (int i = 0; i < 4; i++)
            n[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inverse)); /* round half to even, as nearbyintf */
        const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
        _mm256_storeu_si256((__m256i *)(q + b * BLOCK), _mm256_permutevar8x32_epi32(bytes, order));
        scale[b] = s;
    }
}

/* a block's 32 values as four float vectors (values 0-7, 8-15, 16-23, 24-31) */
ALWAYS void unpack_f32(int kind, const uint8_t *q, __m256 v[4]) {
    if (kind == 4) {
        const __m256i low = _mm256_set1_epi32(15);
        const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)q));
        const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8)));
        v[0] = _mm256_cvtepi32_ps(_mm256_and_si256(a, low));
        v[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b, low));
        v[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4));
        v[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
    } else {
        for (int i = 0; i < 4; i++)
            v[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * i))));
    }
}

ALWAYS __m256 dot_f32(const __m256 v[4], const float *x) {
    __m256 s = _mm256_mul_ps(v[0], _mm256_loadu_ps(x));
    s = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(x + 8), s);
    s = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(x + 16), s);
    return _mm256_fmadd_ps(v[3], _mm256_loadu_ps(x + 24), s);
}

/* a block's 32 values as one vector of bytes in order (Q4: unsigned 0..15; Q8_0: signed) */
ALWAYS __m256i unpack_i8(int kind, const uint8_t *q) {
    if (kind == 4) {
        const __m128i b = _mm_loadu_si128((const __m128i *)q);
        return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(15));
    }
    return _mm256_loadu_si256((const __m256i *)q);
}

/* q . xq of one block as eight float partial sums (exact: integers below 2^24) */
ALWAYS __m256 dot_i8(int kind, __m256i w, const int8_t *xq) {
    const __m256i x = _mm256_loadu_si256((const __m256i *)xq);
    const __m256i pairs = kind == 4 ? _mm256_maddubs_epi16(w, x)
                                    : _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

ALWAYS void finish(const struct weights *w, const struct acts *a, int64_t m, int rows, __m256 *even, __m256 *odd,
                   float *y, int64_t N, int accumulate) {
    for (int r = 0; r < rows; r++) {
        const float bias = w->c ? bias_dot(w->c, a->sum + (m + r) * w->blocks, w->blocks) : 0.0f;
        const float sum = hsum(_mm256_add_ps(even[r], odd[r])) + bias;
        y[r * N] = accumulate ? y[r * N] + sum : sum;
    }
}

/* one weight row against `rows` activation rows; two accumulators per row (even and odd blocks) keep two chains
   of fused multiply-adds in flight */
ALWAYS void rows_f32(int kind, int rows, const struct weights *w, const struct acts *a, int64_t m, float *y,
                     int64_t N, int accumulate) {
    const int64_t blocks = w->blocks, block_bytes = kind == 4 ? 16 : 32;
    float d[blocks];
    widen(w->d, d, blocks);
    const float *x = a->x + m * a->K;
    __m256 even[ROWS], odd[ROWS], v[4];
    for (int r = 0; r < rows; r++)
        even[r] = odd[r] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        unpack_f32(kind, w->qs + b * block_bytes, v);
        for (int r = 0; r < rows; r++)
            even[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + b), dot_f32(v, x + r * a->K + b * BLOCK), even[r]);
        unpack_f32(kind, w->qs + (b + 1) * block_bytes, v);
        for (int r = 0; r < rows; r++)
            odd[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + b + 1), dot_f32(v, x + r * a->K + (b + 1) * BLOCK),
                                     odd[r]);
    }
    if (b < blocks) {
        unpack_f32(kind, w->qs + b * block_bytes, v);
        for (int r = 0; r < rows; r++)
            even[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + b), dot_f32(v, x + r * a->K + b * BLOCK), even[r]);
    }
    finish(w, a, m, rows, even, odd, y, N, accumulate);
}

/* two fp16 values as floats in lanes 0 and 1 */
ALWAYS __m128 two_halves(const half *h) {
    int32_t bits;
    memcpy(&bits, h, sizeof bits);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
}

ALWAYS void rows_i8(int kind, int rows, const struct weights *w, const struct acts *a, int64_t m, float *y,
                    int64_t N, int accumulate) {
    const int64_t blocks = w->blocks, block_bytes = kind == 4 ? 16 : 32;
    const int8_t *xq = a->q + m * a->K;
    const float *xs = a->scale + m * blocks;
    __m256 even[ROWS], odd[ROWS];
    for (int r = 0; r < rows; r++)
        even[r] = odd[r] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        const __m256i v = unpack_i8(kind, w->qs + b * block_bytes);
        const __m256i u = unpack_i8(kind, w->qs + (b + 1) * block_bytes);
        const __m128 d = two_halves(w->d + b);
        for (int r = 0; r < rows; r++) {
            const int8_t *xb = xq + r * a->K + b * BLOCK;
            const __m128 s = _mm_mul_ps(d, _mm_castpd_ps(_mm_load_sd((const double *)(xs + r * blocks + b))));
            even[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(s), dot_i8(kind, v, xb), even[r]);
            odd[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(s)), dot_i8(kind, u, xb + BLOCK), odd[r]);
        }
    }
    if (b < blocks) {
        const __m256i v = unpack_i8(kind, w->qs + b * block_bytes);
        for (int r = 0; r < rows; r++)
            even[r] = _mm256_fmadd_ps(_mm256_set1_ps((float)w->d[b] * xs[r * blocks + b]),
                                      dot_i8(kind, v, xq + r * a->K + b * BLOCK), even[r]);
    }
    finish(w, a, m, rows, even, odd, y, N, accumulate);
}
