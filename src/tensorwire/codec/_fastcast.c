/* float32 <-> bfloat16 / float16 casts for wire tensors, loaded with ctypes (no Python API).
 *
 * Why not torch (codec/_native.py has the measurements): torch's OpenMP workers keep
 * spinning after a parallel cast and take CPUs from the transfer that follows; this kernel
 * runs on the caller's thread, or on threads that exit when done. And a large cast is bound
 * by memory traffic: cached stores first read each output line (read-for-ownership), so
 * narrowing moves 200 MB for 150 MB of data and widening 250 MB for 150 MB. Non-temporal
 * (streaming) stores skip that: 100 MB casts 1.2-1.3x faster than torch's on the test VM.
 *
 * Rounding is round-to-nearest-even everywhere, subnormals included. bfloat16 is rounded in
 * integer arithmetic, not with AVX512-BF16's vcvtne2ps2bf16, which treats subnormal inputs
 * as zero; float16 uses the F16C / AVX-512 conversions, which are IEEE-exact, and plain C
 * (the same results) where those are missing. NaN stays NaN (quiet, sign kept).
 *
 * Callers (codec/_native.py) check contiguity, sizes and dtypes; this file trusts them.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TW_X86 1
#endif

#define TW_ABI 2
#define TW_EXPORT __attribute__((visibility("default")))
#define TW_MAX_THREADS 16
#define TW_ALIGN 64 /* streaming stores want 64-byte aligned destinations */

/* kinds: narrowing ones read float32 and write 16-bit values, widening ones the reverse */
enum { TW_NARROW_BF16 = 0, TW_WIDEN_BF16 = 1, TW_NARROW_F16 = 2, TW_WIDEN_F16 = 3, TW_KINDS };
enum { TW_ISA_SCALAR = 0, TW_ISA_AVX2 = 1, TW_ISA_AVX512 = 2, TW_ISAS };

typedef void (*cast_fn)(const void *src, void *dst, size_t n, int stream);

TW_EXPORT int tw_fastcast_abi(void) { return TW_ABI; }

/* ---------------------------------------------------------------- one element, in C */

static inline uint32_t bits_of(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

static inline float float_of(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static inline uint16_t bf16_narrow_one(float f) {
    uint32_t b = bits_of(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x0040u); /* NaN */
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

static inline float bf16_widen_one(uint16_t h) { return float_of((uint32_t)h << 16); }

static inline uint16_t f16_narrow_one(float f) {
    uint32_t x = bits_of(f), sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x >= 0x47800000u) /* >= 65536: Inf, or NaN made quiet */
        return (uint16_t)(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (x < 0x38800000u) { /* below 2^-14: a float16 subnormal or zero */
        /* adding 0.5 aligns the 10 wanted bits at the bottom; the FPU rounds to even */
        return (uint16_t)(sign | (bits_of(float_of(x) + 0.5f) - 0x3f000000u));
    }
    uint32_t odd = (x >> 13) & 1u; /* rebias the exponent, round to even; 65520+ -> Inf */
    return (uint16_t)(sign | ((x + 0xc8000fffu + odd) >> 13));
}

static inline float f16_widen_one(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) return float_of(sign | bits_of((float)m * 0x1p-24f)); /* exact */
    if (e == 31) return float_of(sign | 0x7f800000u | (m << 13) | (m ? 0x00400000u : 0));
    return float_of(sign | ((e + 112u) << 23) | (m << 13));
}

#define SCALAR_CASTS(name, in_t, out_t, one)                             \
    static void name(const void *s_, void *d_, size_t n, int stream) {   \
        const in_t *s = s_;                                              \
        out_t *d = d_;                                                   \
        (void)stream;                                                    \
        for (size_t i = 0; i < n; i++) d[i] = one(s[i]);                 \
    }
SCALAR_CASTS(bf16_narrow_scalar, float, uint16_t, bf16_narrow_one)
SCALAR_CASTS(bf16_widen_scalar, uint16_t, float, bf16_widen_one)
SCALAR_CASTS(f16_narrow_scalar, float, uint16_t, f16_narrow_one)
SCALAR_CASTS(f16_widen_scalar, uint16_t, float, f16_widen_one)

/* Elements to handle one by one before the destination reaches a TW_ALIGN boundary. */
static size_t head(const void *d, size_t elem, size_t n) {
    size_t mis = (uintptr_t)d % TW_ALIGN;
    size_t k = mis ? (TW_ALIGN - mis) / elem : 0;
    return k < n ? k : n;
}

#ifdef TW_X86
/* ------------------------------------------------------------------ vectors */

/* An aligned store of a `bits`-wide vector, streaming (past the cache) or not. */
#define STORE(bits, p, v, stream)                                   \
    do {                                                            \
        if (stream)                                                 \
            _mm##bits##_stream_si##bits((__m##bits##i *)(p), (v));  \
        else                                                        \
            _mm##bits##_store_si##bits((__m##bits##i *)(p), (v));   \
    } while (0)

/* The loop every vector cast shares: a scalar head up to an aligned destination, `step`
 * elements per vector body, a scalar tail, a fence after streaming stores. */
#define VECTOR_CASTS(name, flags, in_t, out_t, one, step, ...)                     \
    __attribute__((target(flags))) static void name(const void *s_, void *d_,      \
                                                    size_t n, int stream) {        \
        const in_t *s = s_;                                                        \
        out_t *d = d_;                                                             \
        size_t i = head(d, sizeof(out_t), n);                                      \
        for (size_t k = 0; k < i; k++) d[k] = one(s[k]);                           \
        for (; i + (step) <= n; i += (step)) __VA_ARGS__                           \
        for (; i < n; i++) d[i] = one(s[i]);                                       \
        if (stream) _mm_sfence();                                                  \
    }

#define RNE 0x08 /* _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC */

VECTOR_CASTS(bf16_narrow_avx512, "avx512f,avx512bw", float, uint16_t, bf16_narrow_one, 16, {
    __m512i b = _mm512_loadu_si512((const void *)(s + i));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    __m512i hi = _mm512_srli_epi32(b, 16);
    __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
    r = _mm512_mask_or_epi32(r, nan, hi, _mm512_set1_epi32(0x0040));
    STORE(256, d + i, _mm512_cvtepi32_epi16(r), stream);
})

VECTOR_CASTS(bf16_widen_avx512, "avx512f,avx512bw", uint16_t, float, bf16_widen_one, 16, {
    __m256i h = _mm256_loadu_si256((const __m256i *)(s + i));
    STORE(512, d + i, _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16), stream);
})

VECTOR_CASTS(bf16_narrow_avx2, "avx2,f16c", float, uint16_t, bf16_narrow_one, 16, {
    __m256i out[2];
    for (int k = 0; k < 2; k++) {
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + i + 8 * k));
        /* |b| > inf as signed ints: |b| has its top bit clear, so this is exact */
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
        __m256i hi = _mm256_srli_epi32(b, 16);
        __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
        __m256i r = _mm256_srli_epi32(
            _mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
        out[k] = _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x0040)), nan);
    }
    /* values fit 16 bits, so the saturating pack is exact; it interleaves 128-bit lanes */
    STORE(256, d + i, _mm256_permute4x64_epi64(_mm256_packus_epi32(out[0], out[1]), 0xd8),
          stream);
})

VECTOR_CASTS(bf16_widen_avx2, "avx2,f16c", uint16_t, float, bf16_widen_one, 8, {
    __m128i h = _mm_loadu_si128((const __m128i *)(s + i));
    STORE(256, d + i, _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16), stream);
})

VECTOR_CASTS(f16_narrow_avx512, "avx512f", float, uint16_t, f16_narrow_one, 16, {
    STORE(256, d + i, _mm512_cvtps_ph(_mm512_loadu_ps(s + i), RNE), stream);
})

VECTOR_CASTS(f16_widen_avx512, "avx512f", uint16_t, float, f16_widen_one, 16, {
    __m256i h = _mm256_loadu_si256((const __m256i *)(s + i));
    STORE(512, d + i, _mm512_castps_si512(_mm512_cvtph_ps(h)), stream);
})

VECTOR_CASTS(f16_narrow_avx2, "avx2,f16c", float, uint16_t, f16_narrow_one, 16, {
    __m128i lo = _mm256_cvtps_ph(_mm256_loadu_ps(s + i), RNE);
    __m128i hi = _mm256_cvtps_ph(_mm256_loadu_ps(s + i + 8), RNE);
    STORE(256, d + i, _mm256_set_m128i(hi, lo), stream);
})

VECTOR_CASTS(f16_widen_avx2, "avx2,f16c", uint16_t, float, f16_widen_one, 8, {
    __m128i h = _mm_loadu_si128((const __m128i *)(s + i));
    STORE(256, d + i, _mm256_castps_si256(_mm256_cvtph_ps(h)), stream);
})
#endif

/* [kind][isa]; an ISA without its own version of a kind falls back to a lower one. */
static const cast_fn CASTS[TW_KINDS][TW_ISAS] = {
#ifdef TW_X86
    {bf16_narrow_scalar, bf16_narrow_avx2, bf16_narrow_avx512},
    {bf16_widen_scalar, bf16_widen_avx2, bf16_widen_avx512},
    {f16_narrow_scalar, f16_narrow_avx2, f16_narrow_avx512},
    {f16_widen_scalar, f16_widen_avx2, f16_widen_avx512},
#else
    {bf16_narrow_scalar, bf16_narrow_scalar, bf16_narrow_scalar},
    {bf16_widen_scalar, bf16_widen_scalar, bf16_widen_scalar},
    {f16_narrow_scalar, f16_narrow_scalar, f16_narrow_scalar},
    {f16_widen_scalar, f16_widen_scalar, f16_widen_scalar},
#endif
};

/* The best instruction set this CPU has: TW_ISA_*. */
TW_EXPORT int tw_fastcast_best_isa(void) {
#ifdef TW_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
        return TW_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) return TW_ISA_AVX2;
#endif
    return TW_ISA_SCALAR;
}

typedef struct {
    cast_fn fn;
    const void *src;
    void *dst;
    size_t n;
    int stream;
} job_t;

static void *thread_main(void *arg) {
    const job_t *j = arg;
    j->fn(j->src, j->dst, j->n, j->stream);
    return NULL;
}

/* Cast n elements of `kind` (TW_NARROW_BF16, ...), split over up to `threads` threads (the
 * caller's thread is one of them). Returns 0, or -1 for an argument this build cannot
 * serve (the caller then casts another way). */
TW_EXPORT int tw_fastcast(const void *src, void *dst, size_t n, int kind, int threads, int isa,
                          int stream) {
    if (kind < 0 || kind >= TW_KINDS || isa < 0 || isa > tw_fastcast_best_isa()) return -1;
    int narrowing = kind == TW_NARROW_BF16 || kind == TW_NARROW_F16;
    size_t in_size = narrowing ? 4 : 2, out_size = narrowing ? 2 : 4;
    if ((uintptr_t)dst % out_size) return -1; /* the aligned stores need whole elements */
    if (n == 0) return 0;
    if (threads < 1) threads = 1;
    if (threads > TW_MAX_THREADS) threads = TW_MAX_THREADS;
    /* chunks are whole 64-byte lines of output, so only the last one has a ragged end */
    size_t per_line = TW_ALIGN / out_size;
    size_t share = (n + (size_t)threads - 1) / (size_t)threads; /* rounded up: covers n */
    size_t chunk = (share + per_line - 1) / per_line * per_line;
    job_t jobs[TW_MAX_THREADS];
    pthread_t tids[TW_MAX_THREADS];
    int used = 0;
    for (size_t start = 0; start < n && used < threads; start += chunk, used++) {
        size_t len = n - start < chunk ? n - start : chunk;
        jobs[used] = (job_t){CASTS[kind][isa], (const char *)src + start * in_size,
                             (char *)dst + start * out_size, len, stream};
    }
    int started = 1; /* jobs[0] runs on this thread */
    for (; started < used; started++)
        if (pthread_create(&tids[started], NULL, thread_main, &jobs[started]) != 0) break;
    for (int k = started; k < used; k++) thread_main(&jobs[k]); /* no thread to be had */
    thread_main(&jobs[0]);
    for (int k = 1; k < started; k++) pthread_join(tids[k], NULL);
    return 0;
}
