/* Runs the quantized matmul of one build (any -march, any ISA header, ARM64 under qemu-user) on a case written by
   tests/model/test_kernel_builds.py, and writes what it computed back for the test to check against its oracles.

   usage: kernel_driver IN OUT
   IN:  int32 kind, mode, M, N, K, has_c, threads; then qs (N * K / 2 or N * K bytes), d (N * K / 32 fp16), c (the
        same, when has_c), x (M * K float32)
   OUT: y (M * N float32), then the int8 activations (M * K int8) and their scales (M * K / 32 float32)
   stdout: the build's kernel_isa() */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef _Float16 half;
const char *kernel_isa(void);
int64_t acts_scratch_floats(int64_t M, int64_t K);
void qmatmul(int kind, const uint8_t *qs, const half *d, const half *c, const float *x, float *scratch, float *y,
             int64_t M, int64_t N, int64_t K, int mode, int threads);
void quantize_activations(const float *x, int8_t *q, float *scale, int64_t M, int64_t K);

static void *read_all(FILE *f, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "kernel_driver: short input (%zu bytes expected)\n", bytes);
        exit(2);
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: kernel_driver IN OUT\n");
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) {
        perror(argv[1]);
        return 2;
    }
    int32_t *head = read_all(in, 7 * sizeof(int32_t));
    const int kind = head[0], mode = head[1], has_c = head[5], threads = head[6];
    const int64_t M = head[2], N = head[3], K = head[4], blocks = N * (K / 32);
    const uint8_t *qs = read_all(in, kind == 4 ? N * K / 2 : N * K);
    const half *d = read_all(in, blocks * sizeof(half));
    const half *c = has_c ? read_all(in, blocks * sizeof(half)) : NULL;
    const float *x = read_all(in, M * K * sizeof(float));
    fclose(in);
    float *y = malloc(M * N * sizeof(float)), *scratch = malloc(acts_scratch_floats(M, K) * sizeof(float));
    int8_t *q = malloc(M * K);
    float *scale = malloc(M * (K / 32) * sizeof(float));
    qmatmul(kind, qs, d, c, x, scratch, y, M, N, K, mode, threads);
    quantize_activations(x, q, scale, M, K);
    FILE *out = fopen(argv[2], "wb");
    if (!out) {
        perror(argv[2]);
        return 2;
    }
    fwrite(y, sizeof(float), M * N, out);
    fwrite(q, 1, M * K, out);
    fwrite(scale, sizeof(float), M * (K / 32), out);
    fclose(out);
    printf("%s\n", kernel_isa());
    return 0;
}
