/* float32 <-> bfloat16 casts for large wire tensors, loaded with ctypes (no Python API).
 *
 * Why not torch (codec/_native.py has the measurements): torch's OpenMP workers keep
 * spinning after a parallel cast and take CPUs from the transfer that follows; this kernel
 * runs on the caller's thread, or on threads that exit when done. And a large cast is bound
 * by memory traffic: cached stores first read each output line (read-for-ownership), so
 * narrowing moves 200 MB for 150 MB of data and widening 250 MB for 150 MB. Non-temporal
 * (streaming) stores skip that: 100 MB casts 1.2-1.3x faster than torch's on the test VM.
 *
 * Rounding is done in integer arithmetic, not with AVX512-BF16's vcvtne2ps2bf16: that
 * instruction treats subnormal inputs as zero, and the wire promises round-to-nearest-even
 * for every float32 (codec/_precision.py). NaN becomes a quiet NaN with its sign kept.
 *
 * Callers (codec/_precision.py) check contiguity, sizes and dtypes; this file trusts them.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TW_X86 1
#endif

#define TW_ABI 1
#define TW_EXPORT __attribute__((visibility("default")))
#define TW_MAX_THREADS 16
#define TW_ALIGN 64 /* streaming stores want 64-byte aligned destinations */

enum { TW_NARROW = 0, TW_WIDEN = 1 };
enum { TW_ISA_SCALAR = 0, TW_ISA_AVX2 = 1, TW_ISA_AVX512 = 2 };

TW_EXPORT int tw_fastcast_abi(void) { return TW_ABI; }

static inline uint16_t narrow_one(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x0040u); /* NaN */
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

static inline float widen_one(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static void narrow_scalar(const float *s, uint16_t *d, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = narrow_one(s[i]);
}

static void widen_scalar(const uint16_t *s, float *d, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = widen_one(s[i]);
}

/* Elements to handle one by one before the destination reaches a TW_ALIGN boundary. */
static size_t head(const void *d, size_t elem, size_t n) {
    size_t mis = (uintptr_t)d % TW_ALIGN;
    size_t k = mis ? (TW_ALIGN - mis) / elem : 0;
    return k < n ? k : n;
}

#ifdef TW_X86
/* An aligned store of a `bits`-wide vector, streaming (past the cache) or not. */
#define STORE(bits, p, v, stream)                                   \
    do {                                                            \
        if (stream)                                                 \
            _mm##bits##_stream_si##bits((__m##bits##i *)(p), (v));  \
        else                                                        \
            _mm##bits##_store_si##bits((__m##bits##i *)(p), (v));   \
    } while (0)

__attribute__((target("avx512f,avx512bw"))) static void narrow_avx512(const float *s,
                                                                       uint16_t *d, size_t n,
                                                                       int stream) {
    size_t i = head(d, 2, n);
    narrow_scalar(s, d, i);
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
    const __m512i inf = _mm512_set1_epi32(0x7f800000);
    const __m512i bias = _mm512_set1_epi32(0x7fff);
    const __m512i one = _mm512_set1_epi32(1);
    const __m512i quiet = _mm512_set1_epi32(0x0040);
    for (; i + 16 <= n; i += 16) {
        __m512i b = _mm512_loadu_si512((const void *)(s + i));
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, abs_mask), inf);
        __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), one);
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(bias, lsb)), 16);
        r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(b, 16), quiet);
        __m256i h = _mm512_cvtepi32_epi16(r);
        STORE(256, d + i, h, stream);
    }
    narrow_scalar(s + i, d + i, n - i);
    if (stream) _mm_sfence();
}

__attribute__((target("avx512f,avx512bw"))) static void widen_avx512(const uint16_t *s,
                                                                      float *d, size_t n,
                                                                      int stream) {
    size_t i = head(d, 4, n);
    widen_scalar(s, d, i);
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(s + i));
        __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
        STORE(512, d + i, w, stream);
    }
    widen_scalar(s + i, d + i, n - i);
    if (stream) _mm_sfence();
}

__attribute__((target("avx2"))) static void narrow_avx2(const float *s, uint16_t *d, size_t n,
                                                         int stream) {
    size_t i = head(d, 2, n);
    narrow_scalar(s, d, i);
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    const __m256i inf = _mm256_set1_epi32(0x7f800000);
    const __m256i bias = _mm256_set1_epi32(0x7fff);
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i quiet = _mm256_set1_epi32(0x0040);
    for (; i + 16 <= n; i += 16) {
        __m256i out[2];
        for (int k = 0; k < 2; k++) {
            __m256i b = _mm256_loadu_si256((const __m256i *)(s + i + 8 * k));
            /* |b| > inf as signed ints: |b| has its top bit clear, so this is exact */
            __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(b, abs_mask), inf);
            __m256i hi = _mm256_srli_epi32(b, 16);
            __m256i lsb = _mm256_and_si256(hi, one);
            __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(bias, lsb)), 16);
            out[k] = _mm256_blendv_epi8(r, _mm256_or_si256(hi, quiet), nan);
        }
        /* values fit 16 bits, so the saturating pack is exact; it interleaves 128-bit lanes */
        __m256i h = _mm256_permute4x64_epi64(_mm256_packus_epi32(out[0], out[1]), 0xd8);
        STORE(256, d + i, h, stream);
    }
    narrow_scalar(s + i, d + i, n - i);
    if (stream) _mm_sfence();
}

__attribute__((target("avx2"))) static void widen_avx2(const uint16_t *s, float *d, size_t n,
                                                        int stream) {
    size_t i = head(d, 4, n);
    widen_scalar(s, d, i);
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(s + i));
        __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
        STORE(256, d + i, w, stream);
    }
    widen_scalar(s + i, d + i, n - i);
    if (stream) _mm_sfence();
}
#endif

/* The best instruction set this CPU has: TW_ISA_*. */
TW_EXPORT int tw_fastcast_best_isa(void) {
#ifdef TW_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
        return TW_ISA_AVX512;
    if (__builtin_cpu_supports("avx2")) return TW_ISA_AVX2;
#endif
    return TW_ISA_SCALAR;
}

typedef struct {
    const void *src;
    void *dst;
    size_t n;
    int kind, isa, stream;
} job_t;

static void run_job(const job_t *j) {
#ifdef TW_X86
    if (j->isa == TW_ISA_AVX512) {
        if (j->kind == TW_NARROW)
            narrow_avx512(j->src, j->dst, j->n, j->stream);
        else
            widen_avx512(j->src, j->dst, j->n, j->stream);
        return;
    }
    if (j->isa == TW_ISA_AVX2) {
        if (j->kind == TW_NARROW)
            narrow_avx2(j->src, j->dst, j->n, j->stream);
        else
            widen_avx2(j->src, j->dst, j->n, j->stream);
        return;
    }
#endif
    if (j->kind == TW_NARROW)
        narrow_scalar(j->src, j->dst, j->n);
    else
        widen_scalar(j->src, j->dst, j->n);
}

static void *thread_main(void *arg) {
    run_job((const job_t *)arg);
    return NULL;
}

/* Cast n elements: kind TW_NARROW (float32 -> bfloat16 bits) or TW_WIDEN (back), split over
 * up to `threads` threads (the caller's thread is one of them). Returns 0, or -1 for an
 * argument this build cannot serve (the caller then casts another way). */
TW_EXPORT int tw_fastcast(const void *src, void *dst, size_t n, int kind, int threads, int isa,
                int stream) {
    if ((kind != TW_NARROW && kind != TW_WIDEN) || isa < 0 || isa > tw_fastcast_best_isa())
        return -1;
    size_t in_size = kind == TW_NARROW ? 4 : 2, out_size = kind == TW_NARROW ? 2 : 4;
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
        jobs[used] = (job_t){(const char *)src + start * in_size, (char *)dst + start * out_size,
                             len, kind, isa, stream};
    }
    int started = 1; /* jobs[0] runs on this thread */
    for (; started < used; started++)
        if (pthread_create(&tids[started], NULL, thread_main, &jobs[started]) != 0) break;
    for (int k = started; k < used; k++) run_job(&jobs[k]); /* no thread to be had */
    run_job(&jobs[0]);
    for (int k = 1; k < started; k++) pthread_join(tids[k], NULL);
    return 0;
}
