/* The ARM64 NEON rows (Apple Silicon, Graviton, Ampere, Raspberry Pi 4/5): four lanes a vector. fp32
   activations: a block's 32 values widened (8 -> 16 -> 32 bits) into eight float vectors, multiplied into one
   fused chain per activation row. int8 activations: a block is two 16-byte vectors; with the dotprod extension
   (ARMv8.2+, -march=native finds it) sdot sums four byte products into each 32-bit lane, without it smull /
   smlal multiply into 16-bit lanes (two products each: at most 2 * 128 * 127, no overflow) and sadalp pairs
   them into 32 bits. One fused multiply-add scales each block's sums into the row's float sum. */
#include <arm_neon.h>
#ifdef __ARM_FEATURE_DOTPROD
#define ISA "neon+dotprod"
#else
#define ISA "neon"
#endif
#define ALWAYS static inline __attribute__((always_inline))

static void quantize_blocks(const float *x, int8_t *q, float *scale, int64_t blocks) {
    for (int64_t b = 0; b < blocks; b++) {
        const float *xb = x + b * BLOCK;
        float32x4_t v[8], amax = vdupq_n_f32(0.0f);
        for (int i = 0; i < 8; i++) {
            v[i] = vld1q_f32(xb + 4 * i);
            amax = vmaxq_f32(amax, vabsq_f32(v[i]));
        }
        const float s = vmaxvq_f32(amax) / 127.0f;
        const float inverse = s > 0.0f ? 1.0f / s : 0.0f;
        int16x4_t n[8];
        for (int i = 0; i < 8; i++) /* fcvtns: round half to even, as nearbyintf */
            n[i] = vmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(v[i], inverse)));
        for (int i = 0; i < 2; i++) {
            const int16x8_t low = vcombine_s16(n[4 * i], n[4 * i + 1]), high = vcombine_s16(n[4 * i + 2], n[4 * i + 3]);
            vst1q_s8(q + b * BLOCK + 16 * i, vcombine_s8(vmovn_s16(low), vmovn_s16(high)));
        }
        scale[b] = s;
    }
}

/* sum over blocks of c * sum(x_block), four blocks a vector */
static float bias_dot(const half *c, const float *sum, int64_t blocks) {
    float32x4_t acc = vdupq_n_f32(0.0f);
    int64_t b = 0;
    for (; b + 4 <= blocks; b += 4)
        acc = vfmaq_f32(acc, vcvt_f32_f16(vld1_f16((const __fp16 *)(c + b))), vld1q_f32(sum + b));
    float total = vaddvq_f32(acc);
    for (; b < blocks; b++)
        total += (float)c[b] * sum[b];
    return total;
}

/* a block's 32 values as two vectors of bytes in order (values 0-15, 16-31; Q4 unsigned 0..15, Q8_0 signed) */
ALWAYS void unpack_bytes(int kind, const uint8_t *q, int8x16_t v[2]) {
    if (kind == 4) {
        const uint8x16_t b = vld1q_u8(q);
        v[0] = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(15)));
        v[1] = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
    } else {
        v[0] = vld1q_s8((const int8_t *)q);
        v[1] = vld1q_s8((const int8_t *)q + 16);
    }
}

/* the 32 values widened into eight float vectors (exact: Q4 values are small, Q8_0's signed bytes too) */
ALWAYS void unpack_f32(int kind, const uint8_t *q, float32x4_t v[8]) {
    int8x16_t bytes[2];
    unpack_bytes(kind, q, bytes);
    for (int i = 0; i < 2; i++) {
        const int16x8_t low = vmovl_s8(vget_low_s8(bytes[i])), high = vmovl_high_s8(bytes[i]);
        v[4 * i] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(low)));
        v[4 * i + 1] = vcvtq_f32_s32(vmovl_high_s16(low));
        v[4 * i + 2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(high)));
        v[4 * i + 3] = vcvtq_f32_s32(vmovl_high_s16(high));
    }
}

ALWAYS float32x4_t dot_f32(const float32x4_t v[8], const float *x) {
    float32x4_t s = vmulq_f32(v[0], vld1q_f32(x));
    for (int i = 1; i < 8; i++)
        s = vfmaq_f32(s, v[i], vld1q_f32(x + 4 * i));
    return s;
}

/* q . xq of one block as four float partial sums (exact: integers below 2^24) */
ALWAYS float32x4_t dot_i8(const int8x16_t w[2], const int8_t *xq) {
    const int8x16_t x0 = vld1q_s8(xq), x1 = vld1q_s8(xq + 16);
#ifdef __ARM_FEATURE_DOTPROD
    const int32x4_t sums = vdotq_s32(vdotq_s32(vdupq_n_s32(0), w[0], x0), w[1], x1);
#else
    const int16x8_t a = vmlal_s8(vmull_s8(vget_low_s8(w[0]), vget_low_s8(x0)), vget_low_s8(w[1]), vget_low_s8(x1));
    const int16x8_t b = vmlal_high_s8(vmull_high_s8(w[0], x0), w[1], x1);
    const int32x4_t sums = vpadalq_s16(vpaddlq_s16(a), b);
#endif
    return vcvtq_f32_s32(sums);
}

/* a half's d or c values as floats */
static void widen(const half *h, float *f, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(f + i, vcvt_f32_f16(vld1_f16((const __fp16 *)(h + i))));
    for (; i < n; i++)
        f[i] = (float)h[i];
}

ALWAYS void finish(const struct weights *w, const struct acts *a, int64_t m, int rows, float32x4_t *even,
                   float32x4_t *odd, float *y, int64_t N, int accumulate) {
    for (int r = 0; r < rows; r++) {
        const float bias = w->c ? bias_dot(w->c, a->sum + (m + r) * w->blocks, w->blocks) : 0.0f;
        const float sum = vaddvq_f32(vaddq_f32(even[r], odd[r])) + bias;
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
    float32x4_t even[ROWS], odd[ROWS], v[8];
    for (int r = 0; r < rows; r++)
        even[r] = odd[r] = vdupq_n_f32(0.0f);
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        unpack_f32(kind, w->qs + b * block_bytes, v);
        for (int r = 0; r < rows; r++)
            even[r] = vfmaq_n_f32(even[r], dot_f32(v, x + r * a->K + b * BLOCK), d[b]);
        unpack_f32(kind, w->qs + (b + 1) * block_bytes, v);
        for (int r = 0; r < rows; r++)
            odd[r] = vfmaq_n_f32(odd[r], dot_f32(v, x + r * a->K + (b + 1) * BLOCK), d[b + 1]);
    }
    if (b < blocks) {
        unpack_f32(kind, w->qs + b * block_bytes, v);
        for (int r = 0; r < rows; r++)
            even[r] = vfmaq_n_f32(even[r], dot_f32(v, x + r * a->K + b * BLOCK), d[b]);
    }
    finish(w, a, m, rows, even, odd, y, N, accumulate);
}

ALWAYS void rows_i8(int kind, int rows, const struct weights *w, const struct acts *a, int64_t m, float *y,
                    int64_t N, int accumulate) {
    const int64_t blocks = w->blocks, block_bytes = kind == 4 ? 16 : 32;
    float d[blocks];
    widen(w->d, d, blocks);
    const int8_t *xq = a->q + m * a->K;
    const float *xs = a->scale + m * blocks;
    float32x4_t even[ROWS], odd[ROWS];
    int8x16_t v[2], u[2];
    for (int r = 0; r < rows; r++)
        even[r] = odd[r] = vdupq_n_f32(0.0f);
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        unpack_bytes(kind, w->qs + b * block_bytes, v);
        unpack_bytes(kind, w->qs + (b + 1) * block_bytes, u);
        for (int r = 0; r < rows; r++) {
            const int8_t *xb = xq + r * a->K + b * BLOCK;
            even[r] = vfmaq_n_f32(even[r], dot_i8(v, xb), d[b] * xs[r * blocks + b]);
            odd[r] = vfmaq_n_f32(odd[r], dot_i8(u, xb + BLOCK), d[b + 1] * xs[r * blocks + b + 1]);
        }
    }
    if (b < blocks) {
        unpack_bytes(kind, w->qs + b * block_bytes, v);
        for (int r = 0; r < rows; r++)
            even[r] = vfmaq_n_f32(even[r], dot_i8(v, xq + r * a->K + b * BLOCK), d[b] * xs[r * blocks + b]);
    }
    finish(w, a, m, rows, even, odd, y, N, accumulate);
}
