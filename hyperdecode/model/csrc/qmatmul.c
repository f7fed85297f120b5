/* y[M, N] = x[M, K] @ W^T for weights kept in GGUF's 32-value blocks (hyperdecode/model/quant.py packs them).

   A block b of row n holds 32 weights w = d * q + c (d and c in fp16, as GGUF stores them):
     Q4_0, Q4_1: q in 0..15, two per byte (byte j: value j in the low nibble, value j + 16 in the high one),
                 c = -8 d (Q4_0) or the block's minimum m (Q4_1);
     Q8_0:       q in -128..127, one per byte, c = 0.
   So y[m, n] = sum over blocks of d * (q . x_block) + c * sum(x_block). Two ways to take q . x_block:
     ACT_F32: the activations stay fp32; the only rounding that differs from dequantize-then-matmul is the order
              of the sums.
     ACT_I8:  each 32-value block of x is first rounded to int8 with a scale s = max|x| / 127 (llama.cpp's Q8_0
              activations): x_block ~ s * xq, q . x_block becomes s * (q . xq), summed in integers, and the c term
              takes the rounded block's sum s * sum(xq), so that y is W times the rounded x (up to fp32 rounding).
              Each x moves by at most s / 2, so |y - exact| <= sum over blocks of s / 2 * sum(|w|). (With the exact
              sum instead, the rounding errors would meet d * q, whose mean is -c, rather than the centred w:
              llama.cpp's consistent form agreed with the exact model's top token more often, 98 % vs 96 %.)
   The vector code comes from one header per ISA family, chosen at build time by the compiler's target macros
   (-march): qrow_avx512.h (AVX-512 F/BW, VNNI where present), qrow_avx2.h (AVX2 + FMA + F16C, x86-64-v3),
   qrow_neon.h (ARM64 NEON, dotprod where present), and qrow_plain.h, the plain-C last resort. Each defines the
   same row functions; kernel_isa() names the one built. Rows of W are split over OpenMP threads (the runtime
   torch itself loads, so the two share one pool of threads). */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 32
typedef _Float16 half; /* d and c are stored as GGUF stores them: IEEE fp16 */
#define ROWS 4         /* activation rows multiplied per pass over a weight row */
#define PARALLEL_WEIGHTS 65536 /* smaller matrices run on the calling thread: a parallel region costs more */
#define ACT_F32 0
#define ACT_I8 1

/* one matmul's activations, prepared once for every weight row: x [M, K]; sum [M, K / 32] (each block's fp32
   sum, for the c term); with ACT_I8 also q [M, K] and scale [M, K / 32] (x ~ scale * q per block) */
struct acts {
    const float *x;
    float *sum, *scale;
    int8_t *q;
    int64_t M, K;
    int mode;
};

/* x's block of 32 as int8 values and a scale, the same on every ISA: the vector versions compute these very
   values (max |x|, one division, one multiplication, round half to even) */
static inline void quantize_block(const float *x, int8_t *q, float *scale) {
    float amax = 0.0f;
    for (int j = 0; j < BLOCK; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    const float s = amax / 127.0f;
    const float inverse = s > 0.0f ? 1.0f / s : 0.0f;
    for (int j = 0; j < BLOCK; j++)
        q[j] = (int8_t)nearbyintf(x[j] * inverse);
    *scale = s;
}

/* one weight row: its blocks' values, d and c (c NULL for Q8_0) */
struct weights {
    int kind;
    const uint8_t *qs;
    const half *d, *c;
    int64_t blocks;
};

static float block_sum(const float *x) {
    float s = 0.0f;
    for (int j = 0; j < BLOCK; j++)
        s += x[j];
    return s;
}

#if defined(HD_EMULATE_AVX512) || (defined(__AVX512F__) && defined(__AVX512BW__))
#include "qrow_avx512.h"
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include "qrow_avx2.h"
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include "qrow_neon.h"
#else
#include "qrow_plain.h"
#endif

/* which vector path this build runs, e.g. "avx2+fma+f16c" */
const char *kernel_isa(void) { return ISA; }

/* floats of scratch a matmul of M activation rows of K values needs (acts_prepare's `scratch`) */
int64_t acts_scratch_floats(int64_t M, int64_t K) { return M * (2 * (K / BLOCK) + K / 4) + 1; }

/* the activations of x [M, K] in `mode`, with `scratch` of acts_scratch_floats(M, K) floats behind them */
struct acts acts_prepare(const float *x, float *scratch, int64_t M, int64_t K, int mode) {
    const int64_t blocks = M * (K / BLOCK);
    struct acts a = {x, scratch, scratch + blocks, (int8_t *)(scratch + 2 * blocks), M, K, mode};
    if (mode == ACT_I8) {
        quantize_blocks(x, a.q, a.scale, blocks);
        for (int64_t i = 0; i < blocks; i++) { /* the rounded block's sum: y is then exactly W times rounded x */
            int32_t total = 0;
            for (int j = 0; j < BLOCK; j++)
                total += a.q[i * BLOCK + j];
            a.sum[i] = a.scale[i] * (float)total;
        }
    } else {
        for (int64_t i = 0; i < blocks; i++)
            a.sum[i] = block_sum(x + i * BLOCK);
    }
    return a;
}

/* weight rows n0..n1-1 against activation rows m..m+rows-1, every argument that shapes the loop a constant where
   it is inlined (span_of's callers name each combination), so each compiles into a loop of its own */
static inline __attribute__((always_inline)) void span_of(int kind, int rows, int mode, const uint8_t *qs,
                                                          const half *d, const half *c, const struct acts *a,
                                                          int64_t m, float *y, int64_t N, int64_t n0, int64_t n1,
                                                          int accumulate) {
    const int64_t blocks = a->K / BLOCK, row_bytes = kind == 4 ? a->K / 2 : a->K;
    for (int64_t n = n0; n < n1; n++) {
        const struct weights w = {kind, qs + n * row_bytes, d + n * blocks, c ? c + n * blocks : c, blocks};
        if (mode == ACT_I8)
            rows_i8(kind, rows, &w, a, m, y + m * N + n, N, accumulate);
        else
            rows_f32(kind, rows, &w, a, m, y + m * N + n, N, accumulate);
    }
}

#define SPAN(kind, rows, mode) \
    static void span_##kind##_##rows##_##mode(const uint8_t *qs, const half *d, const half *c, const struct acts *a, \
                                              int64_t m, float *y, int64_t N, int64_t n0, int64_t n1, int acc) { \
        span_of(kind, rows, mode, qs, d, c, a, m, y, N, n0, n1, acc); \
    }
#define SPANS(kind, mode) SPAN(kind, 1, mode) SPAN(kind, 2, mode) SPAN(kind, 3, mode) SPAN(kind, 4, mode)
SPANS(4, 0) SPANS(4, 1) SPANS(8, 0) SPANS(8, 1)
typedef void (*span_fn)(const uint8_t *, const half *, const half *, const struct acts *, int64_t, float *, int64_t,
                        int64_t, int64_t, int);
static const span_fn SPAN_TABLE[2][2][ROWS] = { /* [Q4, Q8_0][ACT_F32, ACT_I8][rows - 1] */
    {{span_4_1_0, span_4_2_0, span_4_3_0, span_4_4_0}, {span_4_1_1, span_4_2_1, span_4_3_1, span_4_4_1}},
    {{span_8_1_0, span_8_2_0, span_8_3_0, span_8_4_0}, {span_8_1_1, span_8_2_1, span_8_3_1, span_8_4_1}},
};

/* y[:, n0:n1] (+)= x @ W[n0:n1]^T for weight rows n0..n1-1 of a packed W [N, K] and every activation row of `a`.
   The decode step (decode_step.c) calls this inside its own threads, each on its share of the rows. */
void qmatmul_rows(int kind, const uint8_t *qs, const half *d, const half *c, const struct acts *a, float *y,
                  int64_t N, int64_t n0, int64_t n1, int accumulate) {
    for (int64_t m = 0; m < a->M; m += ROWS) {
        const int64_t rows = a->M - m < ROWS ? a->M - m : ROWS;
        SPAN_TABLE[kind == 4 ? 0 : 1][a->mode][rows - 1](qs, d, c, a, m, y, N, n0, n1, accumulate);
    }
}

/* kind: 4 (Q4_0 / Q4_1: c per block) or 8 (Q8_0: c is NULL). scratch: acts_scratch_floats(M, K) floats. mode:
   ACT_F32 or ACT_I8. threads: torch's intra-op thread count (passed, since OpenMP's default is per calling
   thread, e.g. a server's engine). */
void qmatmul(int kind, const uint8_t *qs, const half *d, const half *c, const float *x, float *scratch, float *y,
             int64_t M, int64_t N, int64_t K, int mode, int threads) {
    const struct acts a = acts_prepare(x, scratch, M, K, mode);
#pragma omp parallel num_threads(threads) if (N * K >= PARALLEL_WEIGHTS)
    {
        const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
        qmatmul_rows(kind, qs, d, c, &a, y, N, N * t / T, N * (t + 1) / T, 0);
    }
}

/* x [M, K] rounded as ACT_I8 rounds it (q [M, K], scale [M, K / 32]): for tests and the Python oracle */
void quantize_activations(const float *x, int8_t *q, float *scale, int64_t M, int64_t K) {
    quantize_blocks(x, q, scale, M * (K / BLOCK));
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
