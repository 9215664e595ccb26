/* float32 <-> bfloat16 / float16 casts for wire tensors, loaded with ctypes (no Python API).
 *
 * Why not torch (codec/_native.py has the measurements): torch's OpenMP workers keep
 * spinning after a parallel cast and take CPUs from the transfer that follows; this kernel
 * runs on the caller's thread, or on pooled threads asleep between casts. And a large cast
 * is bound by memory traffic: cached stores first read each output line (read-for-
 * ownership), so narrowing moves 200 MB for 150 MB of data and widening 250 MB for 150 MB.
 * Non-temporal (streaming) stores skip that: 100 MB casts 1.2-1.3x faster than torch's on
 * the test VM.
 *
 * Rounding is round-to-nearest-even everywhere, subnormals included. bfloat16 is rounded in
 * integer arithmetic, not with AVX512-BF16's vcvtne2ps2bf16, which treats subnormal inputs
 * as zero; float16 uses the F16C / AVX-512 conversions, which are IEEE-exact, and plain C
 * (the same results) where those are missing. NaN stays NaN (quiet, sign kept).
 *
 * Callers (codec/_native.py) check contiguity, sizes and dtypes; this file trusts them.
 */
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* ---------------------------------------------------------------- the worker pool */

/* Starting three threads for a cast and joining them took ~80 us on the 2-vCPU VM; waking
 * three pooled ones and waiting for them ~18 us (twice per bfloat16 round trip). Workers sleep
 * on a condition variable between casts: nothing spins. One caller uses the pool at a time;
 * another caller meanwhile, or a forked child (whose copy of the pool has no threads), starts
 * threads of its own as before. */
typedef struct {
    pid_t pid;              /* the process whose threads these are */
    pthread_mutex_t busy;   /* held by the caller using the pool */
    pthread_mutex_t lock;   /* guards what follows */
    pthread_cond_t go, done;
    unsigned long generation; /* one per cast handed out */
    int workers;            /* worker k (1..workers) runs jobs[k] when k < njobs */
    int njobs, pending;
    job_t jobs[TW_MAX_THREADS];
} pool_t;

typedef struct {
    pool_t *pool;
    int index;
    unsigned long seen; /* the generation when it was made: it waits for the next */
} worker_t;

static pool_t *the_pool;
static pthread_mutex_t making = PTHREAD_MUTEX_INITIALIZER;

static void *pool_main(void *arg) {
    worker_t me = *(worker_t *)arg;
    free(arg);
    pool_t *p = me.pool;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (p->generation == me.seen) pthread_cond_wait(&p->go, &p->lock);
        me.seen = p->generation;
        if (me.index >= p->njobs) continue;
        job_t job = p->jobs[me.index];
        pthread_mutex_unlock(&p->lock);
        thread_main(&job);
        pthread_mutex_lock(&p->lock);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
    }
    return NULL;
}

/* TENSORWIRE_CAST_POOL=0: every parallel cast starts threads of its own (comparisons). */
static int pool_off(void) {
    static int off = -1; /* asked once; a race only asks twice */
    if (off < 0) {
        const char *v = getenv("TENSORWIRE_CAST_POOL");
        off = v != NULL && strcmp(v, "0") == 0;
    }
    return off;
}

static pool_t *pool_get(void) {
    if (pool_off()) return NULL;
    pid_t pid = getpid();
    pool_t *p = __atomic_load_n(&the_pool, __ATOMIC_ACQUIRE);
    if (p != NULL && p->pid == pid) return p;
    /* a child forked while another thread held it finds it locked for good: no pool there */
    if (pthread_mutex_trylock(&making) != 0) return NULL;
    p = the_pool;
    if (p == NULL || p->pid != pid) {
        p = calloc(1, sizeof *p); /* a forked child's old pool is left as it is */
        if (p != NULL) {
            p->pid = pid;
            pthread_mutex_init(&p->busy, NULL);
            pthread_mutex_init(&p->lock, NULL);
            pthread_cond_init(&p->go, NULL);
            pthread_cond_init(&p->done, NULL);
            __atomic_store_n(&the_pool, p, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&making);
    return p;
}

/* One more worker (the caller holds p->busy); 0 on success. Signals stay with the
 * interpreter's threads: the worker blocks them all. */
static int pool_grow(pool_t *p) {
    worker_t *arg = malloc(sizeof *arg);
    if (arg == NULL) return -1;
    pthread_mutex_lock(&p->lock);
    *arg = (worker_t){p, p->workers + 1, p->generation};
    pthread_mutex_unlock(&p->lock);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t tid;
    int rc = pthread_create(&tid, NULL, pool_main, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        free(arg);
        return -1;
    }
    pthread_detach(tid);
    p->workers++; /* only the busy holder reads or writes it outside the lock */
    return 0;
}

/* Runs jobs[0] here and jobs[1..used-1] on pooled workers; -1 (nothing run) when the pool
 * cannot take them now. */
static int pool_run(const job_t *jobs, int used) {
    pool_t *p = pool_get();
    if (p == NULL || pthread_mutex_trylock(&p->busy) != 0) return -1;
    while (p->workers < used - 1 && pool_grow(p) == 0) {
    }
    if (p->workers < used - 1) {
        pthread_mutex_unlock(&p->busy);
        return -1;
    }
    pthread_mutex_lock(&p->lock);
    memcpy(p->jobs, jobs, (size_t)used * sizeof *jobs);
    p->njobs = used;
    p->pending = used - 1;
    p->generation++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->lock);
    thread_main((void *)&jobs[0]);
    pthread_mutex_lock(&p->lock);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_unlock(&p->busy);
    return 0;
}

/* Threads started for this cast alone, joined before returning. */
static void spawn_run(const job_t *jobs, int used) {
    pthread_t tids[TW_MAX_THREADS];
    int started = 1; /* jobs[0] runs on this thread */
    for (; started < used; started++)
        if (pthread_create(&tids[started], NULL, thread_main, (void *)&jobs[started]) != 0)
            break;
    for (int k = started; k < used; k++) thread_main((void *)&jobs[k]); /* no thread to be had */
    thread_main((void *)&jobs[0]);
    for (int k = 1; k < started; k++) pthread_join(tids[k], NULL);
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
    int used = 0;
    for (size_t start = 0; start < n && used < threads; start += chunk, used++) {
        size_t len = n - start < chunk ? n - start : chunk;
        jobs[used] = (job_t){CASTS[kind][isa], (const char *)src + start * in_size,
                             (char *)dst + start * out_size, len, stream};
    }
    if (used == 1)
        thread_main(&jobs[0]);
    else if (pool_run(jobs, used) != 0)
        spawn_run(jobs, used);
    return 0;
}
