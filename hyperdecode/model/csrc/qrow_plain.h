/* The plain-C rows (qmatmul.c): the last resort, for a CPU with none of the vector paths (quant.py warns when it
   runs). The same arithmetic as the vector headers, one value at a time. */
#define ISA "plain-c"

static void quantize_blocks(const float *x, int8_t *q, float *scale, int64_t blocks) {
    for (int64_t b = 0; b < blocks; b++)
        quantize_block(x + b * BLOCK, q + b * BLOCK, scale + b);
}

/* value j of a block as an integer */
static inline int value(int kind, const uint8_t *q, int j) {
    if (kind == 8)
        return (int8_t)q[j];
    return j < 16 ? q[j] & 15 : q[j - 16] >> 4;
}

static inline void rows_f32(int kind, int rows, const struct weights *w, const struct acts *a, int64_t m, float *y,
                            int64_t N, int accumulate) {
    const int64_t block_bytes = kind == 4 ? 16 : 32;
    float acc[ROWS] = {0};
    float v[BLOCK];
    for (int64_t b = 0; b < w->blocks; b++) {
        for (int j = 0; j < BLOCK; j++)
            v[j] = (float)value(kind, w->qs + b * block_bytes, j);
        for (int r = 0; r < rows; r++) {
            const float *xb = a->x + (m + r) * a->K + b * BLOCK;
            float dot = 0.0f;
            for (int j = 0; j < BLOCK; j++)
                dot += v[j] * xb[j];
            const float bias = w->c ? (float)w->c[b] * a->sum[(m + r) * w->blocks + b] : 0.0f;
            acc[r] += (float)w->d[b] * dot + bias;
        }
    }
    for (int r = 0; r < rows; r++)
        y[r * N] = accumulate ? y[r * N] + acc[r] : acc[r];
}

static inline void rows_i8(int kind, int rows, const struct weights *w, const struct acts *a, int64_t m, float *y,
                           int64_t N, int accumulate) {
    const int64_t block_bytes = kind == 4 ? 16 : 32;
    float acc[ROWS] = {0};
    int v[BLOCK];
    for (int64_t b = 0; b < w->blocks; b++) {
        for (int j = 0; j < BLOCK; j++)
            v[j] = value(kind, w->qs + b * block_bytes, j);
        for (int r = 0; r < rows; r++) {
            const int64_t at = (m + r) * w->blocks + b;
            const int8_t *xq = a->q + at * BLOCK;
            int32_t dot = 0;
            for (int j = 0; j < BLOCK; j++)
                dot += v[j] * xq[j];
            const float bias = w->c ? (float)w->c[b] * a->sum[at] : 0.0f;
            acc[r] += (float)w->d[b] * a->scale[at] * (float)dot + bias;
        }
    }
    for (int r = 0; r < rows; r++)
        y[r * N] = accumulate ? y[r * N] + acc[r] : acc[r];
}
