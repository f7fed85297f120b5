/* One decode step of a Llama-family model (Llama, SmolLM2, Qwen3) on the CPU: every row feeds one token, and the
   whole step — embedding, every layer, the final norm and the LM head — runs in one OpenMP parallel region, so
   the step pays no Python and no dispatch per op, only a barrier between the stages that depend on each other
   (the megakernel's idea, on the CPU's threads). hyperdecode/engine/native.py fills `struct model` with pointers
   into the reference model's own tensors (its weights, packed or fp32, and its KV cache), so the two share one
   cache and the reference forward is this step's oracle.

   Per layer, as the reference computes it (model/llama.py):
     h = rmsnorm(x) * input_norm;  qkv = h @ Wqkv (+ bias)
     per kv head: k = rope(k_norm(k)), k and v written at (slot, pos) of the cache
     per q head:  q = rope(q_norm(q)); att = softmax(q . K[0..pos] / sqrt(head_dim)) @ V[0..pos]
     x += att @ Wo;  h = rmsnorm(x) * post_norm;  x += (silu(h @ Wgate) * (h @ Wup)) @ Wdown
   then logits = (rmsnorm(x) * norm) @ head. RoPE rotates pairs (i, i + head_dim / 2) (rotate-half). */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef _Float16 half;

#define BLOCK 32
#define MAX_ROWS 8   /* rows a step may hold (native.py hands larger batches to the reference's BLAS) */
#define COLUMNS 64   /* output columns per work item of an fp32 matmul */

struct acts { /* qmatmul.c's prepared activations */
    const float *x;
    float *sum, *scale;
    int8_t *q;
    int64_t M, K;
    int mode;
};
int64_t acts_scratch_floats(int64_t M, int64_t K);
struct acts acts_prepare(const float *x, float *scratch, int64_t M, int64_t K, int mode);
void qmatmul_rows(int kind, const uint8_t *qs, const half *d, const half *c, const struct acts *a, float *y,
                  int64_t N, int64_t n0, int64_t n1, int accumulate);

struct matrix {         /* y = x @ W (+ bias) for x [M, k] and y [M, n] */
    int64_t kind;       /* 4, 8: W [n, k] in 32-value blocks as quant.py packs it (qs, d, c); 32: fp32 W [k, n] */
    const void *w;      /* the packed values, or the fp32 weight */
    const half *d, *c;  /* per-block scale and offset (c NULL for Q8_0); unused for fp32 */
    const float *bias;  /* [n] or NULL */
    int64_t n, k;
    int64_t act;        /* packed W: how x meets the blocks, qmatmul.c's ACT_F32 or ACT_I8 */
};

struct layer {
    const float *input_norm, *post_norm;
    const float *q_norm, *k_norm; /* [head_dim] per-head norms (Qwen3), or NULL */
    struct matrix qkv, o, gate_up, down;
    float *k_cache, *v_cache;     /* [cache rows, max_seq, n_kv, head_dim] */
};

struct model {
    int64_t hidden, inter, n_head, n_kv, head_dim, vocab, layers, max_seq;
    float eps;
    const float *embed;    /* [vocab, hidden] */
    const float *inv_freq; /* [head_dim / 2], scaling applied */
    const float *norm;
    struct matrix head;
    const struct layer *layer;
};

/* out = rmsnorm(x) * w over n values (out may be x) */
static void rmsnorm(const float *x, const float *w, float *out, int64_t n, float eps) {
    double squares = 0.0;
    for (int64_t i = 0; i < n; i++)
        squares += (double)x[i] * x[i];
    const float scale = 1.0f / sqrtf((float)(squares / n) + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = w[i] * (x[i] * scale);
}

/* out[r] = rmsnorm(x[r]) * w for M rows of n; one row per thread at a time */
static void rmsnorm_rows(const float *x, const float *w, float *out, int64_t M, int64_t n, float eps) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < M; r++)
        rmsnorm(x + r * n, w, out + r * n, n, eps);
}

static void rope_head(float *v, const float *inv_freq, int64_t pos, int64_t head_dim) {
    const int64_t half_dim = head_dim / 2;
    for (int64_t i = 0; i < half_dim; i++) {
        const float angle = (float)pos * inv_freq[i];
        const float cos_a = cosf(angle), sin_a = sinf(angle);
        const float a = v[i], b = v[i + half_dim];
        v[i] = a * cos_a - b * sin_a;
        v[i + half_dim] = b * cos_a + a * sin_a;
    }
}

/* y (+)= x @ W (+ bias) over the enclosing region's threads; scratch: this thread's acts_scratch_floats(M, k) */
static void matmul(const struct matrix *w, const float *x, float *scratch, float *y, int64_t M, int accumulate) {
    const int64_t N = w->n, K = w->k;
    if (w->kind != 32) {
        /* every thread its own copy of the block sums (and int8 activations): cheaper than a barrier */
        const struct acts a = acts_prepare(x, scratch, M, K, (int)w->act);
        const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
        qmatmul_rows((int)w->kind, w->w, w->d, w->c, &a, y, N, N * t / T, N * (t + 1) / T, accumulate);
#pragma omp barrier
    } else {
        const float *W = w->w;
#pragma omp for schedule(static)
        for (int64_t n0 = 0; n0 < N; n0 += COLUMNS) {
            const int64_t width = N - n0 < COLUMNS ? N - n0 : COLUMNS;
            float acc[MAX_ROWS][COLUMNS] = {{0}};
            for (int64_t k = 0; k < K; k++) {
                const float *wk = W + k * N + n0;
                for (int64_t m = 0; m < M; m++) {
                    const float xv = x[m * K + k];
                    for (int64_t j = 0; j < width; j++)
                        acc[m][j] += xv * wk[j];
                }
            }
            for (int64_t m = 0; m < M; m++)
                for (int64_t j = 0; j < width; j++)
                    y[m * N + n0 + j] = accumulate ? y[m * N + n0 + j] + acc[m][j] : acc[m][j];
        }
    }
    if (w->bias) {
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++)
                y[m * N + n] += w->bias[n];
    }
}

/* k and v of kv head g of row r into the cache at (slot, pos), k normed (Qwen3) and roped */
static void append_kv(const struct model *m, const struct layer *L, const float *qkv, int64_t slot, int64_t pos,
                      int64_t g) {
    const int64_t hd = m->head_dim;
    const int64_t at = ((slot * m->max_seq + pos) * m->n_kv + g) * hd;
    float *k = L->k_cache + at;
    memcpy(k, qkv + (m->n_head + g) * hd, hd * sizeof(float));
    if (L->k_norm)
        rmsnorm(k, L->k_norm, k, hd, m->eps);
    rope_head(k, m->inv_freq, pos, hd);
    memcpy(L->v_cache + at, qkv + (m->n_head + m->n_kv + g) * hd, hd * sizeof(float));
}

/* out[head] = softmax(q . K / sqrt(head_dim)) @ V over the row's positions 0..pos; scores: pos + 1 floats. Sums in
   double (float sums took the logits to the edge of the 1e-4 bound), over the vector lanes (omp simd). */
static void attend(const struct model *m, const struct layer *L, const float *qkv, int64_t slot, int64_t pos,
                   int64_t head, float *scores, float *out) {
    const int64_t hd = m->head_dim;
    const int64_t g = head / (m->n_head / m->n_kv);
    const int64_t stride = m->n_kv * hd;
    const float *keys = L->k_cache + (slot * m->max_seq * m->n_kv + g) * hd;
    const float *values = L->v_cache + (slot * m->max_seq * m->n_kv + g) * hd;
    float q[hd];
    memcpy(q, qkv + head * hd, hd * sizeof(float));
    if (L->q_norm)
        rmsnorm(q, L->q_norm, q, hd, m->eps);
    rope_head(q, m->inv_freq, pos, hd);
    const float scale = 1.0f / sqrtf((float)hd);
    float best = -INFINITY;
    for (int64_t t = 0; t <= pos; t++) {
        const float *key = keys + t * stride;
        double dot = 0.0;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < hd; i++)
            dot += (double)q[i] * key[i];
        scores[t] = (float)dot * scale;
        best = scores[t] > best ? scores[t] : best;
    }
    double total = 0.0;
    for (int64_t t = 0; t <= pos; t++) {
        scores[t] = expf(scores[t] - best);
        total += scores[t];
    }
    double acc[hd];
    for (int64_t i = 0; i < hd; i++)
        acc[i] = 0.0;
    for (int64_t t = 0; t <= pos; t++) {
        const double p = scores[t] / total;
        const float *value = values + t * stride;
#pragma omp simd
        for (int64_t i = 0; i < hd; i++)
            acc[i] += p * value[i];
    }
    for (int64_t i = 0; i < hd; i++)
        out[i] = (float)acc[i];
}

static int64_t widest_input(const struct model *m) {
    int64_t k = m->hidden > m->inter ? m->hidden : m->inter;
    return k > m->n_head * m->head_dim ? k : m->n_head * m->head_dim;
}

/* tokens, pos, slots [M]: each row's token, its position and its cache row; hidden [M, hidden]: the final-norm
   hidden states; logits [M, vocab]. Returns 0, -1 when scratch memory could not be allocated, -2 when M is out of
   1..MAX_ROWS. */
int decode_step(const struct model *m, const int64_t *tokens, const int64_t *pos, const int64_t *slots, int64_t M,
                float *hidden, float *logits, int threads) {
    if (M < 1 || M > MAX_ROWS)
        return -2;
    const int64_t H = m->hidden, I = m->inter, hd = m->head_dim;
    const int64_t qkv_width = (m->n_head + 2 * m->n_kv) * hd, att_width = m->n_head * hd;
    int64_t longest = 0;
    for (int64_t r = 0; r < M; r++)
        longest = pos[r] + 1 > longest ? pos[r] + 1 : longest;
    const int64_t sums = acts_scratch_floats(M, widest_input(m));
    const size_t floats = M * (2 * H + qkv_width + att_width + 3 * I) + M * m->n_head * longest + threads * sums;
    float *memory = malloc(floats * sizeof(float));
    if (!memory)
        return -1;
    float *x = memory, *h = x + M * H, *qkv = h + M * H, *att = qkv + M * qkv_width, *mlp = att + M * att_width;
    float *act = mlp + M * 2 * I, *scores = act + M * I, *scratches = scores + M * m->n_head * longest;
#pragma omp parallel num_threads(threads)
    {
        float *scratch = scratches + omp_get_thread_num() * sums;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M; r++)
            memcpy(x + r * H, m->embed + tokens[r] * H, H * sizeof(float));
        for (int64_t l = 0; l < m->layers; l++) {
            const struct layer *L = m->layer + l;
            rmsnorm_rows(x, L->input_norm, h, M, H, m->eps);
            matmul(&L->qkv, h, scratch, qkv, M, 0);
#pragma omp for collapse(2) schedule(static)
            for (int64_t r = 0; r < M; r++)
                for (int64_t g = 0; g < m->n_kv; g++)
                    append_kv(m, L, qkv + r * qkv_width, slots[r], pos[r], g);
#pragma omp for collapse(2) schedule(static)
            for (int64_t r = 0; r < M; r++)
                for (int64_t head = 0; head < m->n_head; head++)
                    attend(m, L, qkv + r * qkv_width, slots[r], pos[r], head,
                           scores + (r * m->n_head + head) * longest, att + r * att_width + head * hd);
            matmul(&L->o, att, scratch, x, M, 1);
            rmsnorm_rows(x, L->post_norm, h, M, H, m->eps);
            matmul(&L->gate_up, h, scratch, mlp, M, 0);
#pragma omp for schedule(static)
            for (int64_t i = 0; i < M * I; i++) {
                const float gate = mlp[(i / I) * 2 * I + i % I], up = mlp[(i / I) * 2 * I + I + i % I];
                act[i] = gate / (1.0f + expf(-gate)) * up;
            }
            matmul(&L->down, act, scratch, x, M, 1);
        }
        rmsnorm_rows(x, m->norm, hidden, M, H, m->eps);
        matmul(&m->head, hidden, scratch, logits, M, 0);
    }
    free(memory);
    return 0;
}
