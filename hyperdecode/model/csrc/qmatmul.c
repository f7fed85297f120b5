/* y[M, N] = x[M, K] @ W^T for weights kept in GGUF's 32-value blocks (hyperdecode/model/quant.py packs them).

   A block b of row n holds 32 weights w = d * q + c (d and c in fp16, as GGUF stores them):
     Q4_0, Q4_1: q in 0..15, two per byte (byte j: value j in the low nibble, value j + 16 in the high one),
                 c = -8 d (Q4_0) or the block's minimum m (Q4_1);
     Q8_0:       q in -128..127, one per byte, c = 0.
   So y[m, n] = sum over blocks of d * (q . x_block) + c * sum(x_block): the activations stay fp32, and the only
   rounding that differs from dequantize-then-matmul is the order of the sums. With AVX-512 a block is two
   16-lane vectors (unpacked, converted to float, multiplied into one accumulator per activation row); elsewhere
   the same loop in plain C. Rows of W are split over OpenMP threads (the runtime torch itself loads, so the two
   share one pool of threads). */
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define BLOCK 32
typedef _Float16 half; /* d and c are stored as GGUF stores them: IEEE fp16 */
#define ROWS 4 /* activation rows multiplied per pass over a weight row */
#define PARALLEL_WEIGHTS 65536 /* smaller matrices run on the calling thread: a parallel region costs more */

static float block_sum(const float *x) {
    float s = 0.0f;
    for (int j = 0; j < BLOCK; j++)
        s += x[j];
    return s;
}

#ifdef __AVX512F__
/* the 32 values of a block as two float vectors; `kind` is a constant where it is inlined */
static inline __attribute__((always_inline)) void unpack(int kind, const uint8_t *qs, __m512 *lo, __m512 *hi) {
    if (kind == 4) {
        const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
        *lo = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
        *hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
    } else {
        *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qs)));
        *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16))));
    }
}

static inline __attribute__((always_inline)) __m512 block_dot(int kind, const uint8_t *qs, const float *xb) {
    __m512 lo, hi;
    unpack(kind, qs, &lo, &hi);
    return _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xb)));
}

/* sum over blocks of c * sum(x_block), sixteen blocks a vector */
static float bias_dot(const half *c, const float *xsum, int64_t blocks) {
    __m512 sum = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 16 <= blocks; b += 16)
        sum = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(c + b))), _mm512_loadu_ps(xsum + b),
                              sum);
    const __mmask16 tail = (__mmask16)((1u << (blocks - b)) - 1);
    const __m512 last = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, c + b));
    sum = _mm512_fmadd_ps(last, _mm512_maskz_loadu_ps(tail, xsum + b), sum);
    return _mm512_reduce_add_ps(sum);
}

/* one weight row against up to ROWS activation rows; two accumulators per row (even and odd blocks) keep two
   chains of fused multiply-adds in flight */
static inline __attribute__((always_inline)) void row_of(int kind, const uint8_t *qs, const half *d,
                                                          const half *c, const float *x, const float *xsum,
                                                          float *y, int64_t rows, int64_t blocks, int64_t K,
                                                          int64_t N, int accumulate) {
    const int64_t block_bytes = kind == 4 ? 16 : 32;
    __m512 even[ROWS], odd[ROWS];
    for (int r = 0; r < ROWS; r++)
        even[r] = odd[r] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2)
        for (int64_t r = 0; r < rows; r++) {
            const float *xb = x + r * K + b * BLOCK;
            even[r] = _mm512_fmadd_ps(_mm512_set1_ps((float)d[b]), block_dot(kind, qs + b * block_bytes, xb), even[r]);
            const __m512 next = block_dot(kind, qs + (b + 1) * block_bytes, xb + BLOCK);
            odd[r] = _mm512_fmadd_ps(_mm512_set1_ps((float)d[b + 1]), next, odd[r]);
        }
    for (; b < blocks; b++)
        for (int64_t r = 0; r < rows; r++) {
            const __m512 last = block_dot(kind, qs + b * block_bytes, x + r * K + b * BLOCK);
            even[r] = _mm512_fmadd_ps(_mm512_set1_ps((float)d[b]), last, even[r]);
        }
    for (int64_t r = 0; r < rows; r++) {
        const float bias = c ? bias_dot(c, xsum + r * blocks, blocks) : 0.0f;
        const float sum = _mm512_reduce_add_ps(_mm512_add_ps(even[r], odd[r])) + bias;
        y[r * N] = accumulate ? y[r * N] + sum : sum;
    }
}

static void row(int kind, const uint8_t *qs, const half *d, const half *c, const float *x, const float *xsum,
                float *y, int64_t rows, int64_t blocks, int64_t K, int64_t N, int accumulate) {
    if (kind == 4)
        row_of(4, qs, d, c, x, xsum, y, rows, blocks, K, N, accumulate);
    else
        row_of(8, qs, d, c, x, xsum, y, rows, blocks, K, N, accumulate);
}
#else
static void row(int kind, const uint8_t *qs, const half *d, const half *c, const float *x, const float *xsum,
                float *y, int64_t rows, int64_t blocks, int64_t K, int64_t N, int accumulate) {
    const int64_t block_bytes = kind == 4 ? 16 : 32;
    float acc[ROWS] = {0};
    float w[BLOCK];
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *q = qs + b * block_bytes;
        for (int j = 0; j < 16; j++) {
            w[j] = kind == 4 ? (float)(q[j] & 15) : (float)(int8_t)q[j];
            w[j + 16] = kind == 4 ? (float)(q[j] >> 4) : (float)(int8_t)q[j + 16];
        }
        for (int64_t r = 0; r < rows; r++) {
            const float *xb = x + r * K + b * BLOCK;
            float dot = 0.0f;
            for (int j = 0; j < BLOCK; j++)
                dot += w[j] * xb[j];
            acc[r] += (float)d[b] * dot + (c ? (float)c[b] * xsum[r * blocks + b] : 0.0f);
        }
    }
    for (int64_t r = 0; r < rows; r++)
        y[r * N] = accumulate ? y[r * N] + acc[r] : acc[r];
}
#endif

/* xsum[M, K / 32] = each 32-value block's sum of x[M, K] (the c term's factor) */
void block_sums(const float *x, float *xsum, int64_t M, int64_t K) {
    for (int64_t i = 0; i < M * (K / BLOCK); i++)
        xsum[i] = block_sum(x + i * BLOCK);
}

/* y[:, n] (+)= x @ W[n] for weight row n of a packed W [N, K] and every activation row of x [M, K]; xsum as
   block_sums leaves it (unread for Q8_0). The decode step (decode_step.c) calls this inside its own threads. */
void qmatmul_row(int kind, const uint8_t *qs, const half *d, const half *c, const float *x, const float *xsum,
                 float *y, int64_t M, int64_t N, int64_t K, int64_t n, int accumulate) {
    const int64_t blocks = K / BLOCK;
    const int64_t row_bytes = kind == 4 ? K / 2 : K;
    for (int64_t m = 0; m < M; m += ROWS)
        row(kind, qs + n * row_bytes, d + n * blocks, c ? c + n * blocks : c, x + m * K, xsum + m * blocks,
            y + m * N + n, M - m < ROWS ? M - m : ROWS, blocks, K, N, accumulate);
}

/* kind: 4 (Q4_0 / Q4_1: c per block) or 8 (Q8_0: c is NULL). xsum: scratch of M * K / 32 floats. threads:
   torch's intra-op thread count (passed, since OpenMP's default is per calling thread, e.g. a server's engine). */
void qmatmul(int kind, const uint8_t *qs, const half *d, const half *c, const float *x, float *xsum, float *y,
             int64_t M, int64_t N, int64_t K, int threads) {
    if (c)
        block_sums(x, xsum, M, K);
#pragma omp parallel for schedule(static) num_threads(threads) if (N * K >= PARALLEL_WEIGHTS)
    for (int64_t n = 0; n < N; n++)
        qmatmul_row(kind, qs, d, c, x, xsum, y, M, N, K, n, 0);
}

/* The fp32 weights W[N, K] of a packed matrix (for many activation rows, where BLAS on them is faster). */
void dequantize(int kind, const uint8_t *qs, const half *d, const half *c, float *out, int64_t N, int64_t K,
                int threads) {
    const int64_t blocks = K / BLOCK;
    const int64_t block_bytes = kind == 4 ? 16 : 32;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < N * blocks; i++) {
        const uint8_t *q = qs + i * block_bytes;
        float *w = out + i * BLOCK;
        for (int j = 0; j < 16; j++) {
            w[j] = kind == 4 ? (float)(q[j] & 15) : (float)(int8_t)q[j];
            w[j + 16] = kind == 4 ? (float)(q[j] >> 4) : (float)(int8_t)q[j + 16];
        }
        for (int j = 0; j < BLOCK; j++)
            w[j] = (float)d[i] * w[j] + (c ? (float)c[i] : 0.0f);
    }
}
