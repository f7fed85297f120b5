/* Tests only: the AVX-512 intrinsics qrow_avx512.h uses, for a CPU without AVX-512 (tests/model/test_kernel_builds.py
   builds the kernel with -DHD_EMULATE_AVX512="avx512_emulation.h"). SIMDe (Debian's libsimde-dev) supplies most of
   them in portable C; the few that its 0.7.4 lacks, or aliases wrongly, are written out here from Intel's
   definitions, one lane at a time. */
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <math.h>
#include <string.h>
typedef simde__mmask16 __mmask16;
static inline simde__m512i hd_mm512_cvtps_epi32(simde__m512 a) {
    simde__m512_private v = simde__m512_to_private(a);
    simde__m512i_private r;
    for (int i = 0; i < 16; i++)
        r.i32[i] = (int32_t)nearbyintf(v.f32[i]);
    return simde__m512i_from_private(r);
}
static inline float hd_mm512_reduce_max_ps(simde__m512 a) {
    simde__m512_private v = simde__m512_to_private(a);
    float m = v.f32[0];
    for (int i = 1; i < 16; i++)
        m = v.f32[i] > m ? v.f32[i] : m;
    return m;
}
#define _mm512_cvtps_epi32 hd_mm512_cvtps_epi32
#define _mm512_reduce_max_ps hd_mm512_reduce_max_ps
static inline simde__m512 hd_mm512_cvtph_ps(simde__m256i a) {
    simde__m256i_private v = simde__m256i_to_private(a);
    simde__m512_private r;
    for (int i = 0; i < 16; i++) {
        const uint16_t bits = v.u16[i];
        _Float16 h;
        memcpy(&h, &bits, sizeof h);
        r.f32[i] = (float)h;
    }
    return simde__m512_from_private(r);
}
#define _mm512_cvtph_ps hd_mm512_cvtph_ps
static inline float hd_mm512_reduce_add_ps(simde__m512 a) { /* the hardware's order: halves added pairwise */
    simde__m512_private v = simde__m512_to_private(a);
    float s[16];
    for (int i = 0; i < 16; i++)
        s[i] = v.f32[i];
    for (int width = 8; width >= 1; width /= 2)
        for (int i = 0; i < width; i++)
            s[i] += s[i + width];
    return s[0];
}
static inline simde__m256i hd_mm256_maskz_loadu_epi16(uint16_t k, const void *p) {
    simde__m256i_private r;
    for (int i = 0; i < 16; i++)
        r.u16[i] = (k >> i) & 1 ? ((const uint16_t *)p)[i] : 0;
    return simde__m256i_from_private(r);
}
static inline simde__m512 hd_mm512_maskz_loadu_ps(uint16_t k, const void *p) {
    simde__m512_private r;
    for (int i = 0; i < 16; i++)
        r.f32[i] = (k >> i) & 1 ? ((const float *)p)[i] : 0.0f;
    return simde__m512_from_private(r);
}
#define _mm512_reduce_add_ps hd_mm512_reduce_add_ps
#define _mm256_maskz_loadu_epi16 hd_mm256_maskz_loadu_epi16
#define _mm512_maskz_loadu_ps hd_mm512_maskz_loadu_ps
static inline simde__m512i hd_mm512_madd_epi16(simde__m512i a, simde__m512i b) { /* SIMDe 0.7.4's alias is wrong */
    simde__m512i_private x = simde__m512i_to_private(a), y = simde__m512i_to_private(b), r;
    for (int i = 0; i < 16; i++)
        r.i32[i] = (int32_t)x.i16[2 * i] * y.i16[2 * i] + (int32_t)x.i16[2 * i + 1] * y.i16[2 * i + 1];
    return simde__m512i_from_private(r);
}
#undef _mm512_madd_epi16
#define _mm512_madd_epi16 hd_mm512_madd_epi16
static inline simde__m512 hd_mm512_cvtepi32_ps(simde__m512i a) {
    simde__m512i_private v = simde__m512i_to_private(a);
    simde__m512_private r;
    for (int i = 0; i < 16; i++)
        r.f32[i] = (float)v.i32[i];
    return simde__m512_from_private(r);
}
static inline simde__m512i hd_mm512_cvtepi8_epi32(simde__m128i a) {
    simde__m128i_private v = simde__m128i_to_private(a);
    simde__m512i_private r;
    for (int i = 0; i < 16; i++)
        r.i32[i] = v.i8[i];
    return simde__m512i_from_private(r);
}
static inline simde__m512i hd_mm512_cvtepu8_epi32(simde__m128i a) {
    simde__m128i_private v = simde__m128i_to_private(a);
    simde__m512i_private r;
    for (int i = 0; i < 16; i++)
        r.i32[i] = v.u8[i];
    return simde__m512i_from_private(r);
}
static inline simde__m512i hd_mm512_shuffle_i64x2(simde__m512i a, simde__m512i b, int imm) {
    simde__m512i_private x = simde__m512i_to_private(a), y = simde__m512i_to_private(b), r;
    for (int lane = 0; lane < 4; lane++) {
        const int from = (imm >> (2 * lane)) & 3;
        for (int i = 0; i < 2; i++)
            r.i64[2 * lane + i] = lane < 2 ? x.i64[2 * from + i] : y.i64[2 * from + i];
    }
    return simde__m512i_from_private(r);
}
#define _mm512_cvtepi32_ps hd_mm512_cvtepi32_ps
#define _mm512_cvtepi8_epi32 hd_mm512_cvtepi8_epi32
#define _mm512_cvtepu8_epi32 hd_mm512_cvtepu8_epi32
#define _mm512_shuffle_i64x2 hd_mm512_shuffle_i64x2
