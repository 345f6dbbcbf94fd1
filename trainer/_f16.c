/* Float16 weights times float32 rows on one core: the product behind ``trainer.cpu_linear``'s
 * float16 layers where torch runs on one thread (see cpu_linear's docstring); and, at the end,
 * the attention of trainer.packed_attention's packed steps on CPU.
 *
 *     y[m][n] = sum_k x[m][k] * w[n][k]  (+ bias[n])
 *
 * w is packed in panels of 16 output features, each stored k-major (panel, k, features), zero
 * past the last feature, so the weights are read as one contiguous stream. Two loops over the
 * same panels, chosen by the CPU:
 *
 * - AVX2, FMA and F16C: rows are taken 12 at a time and each panel is multiplied by them in two
 *   tiles of up to 6 rows, whose 12 accumulators (2 x 8 features a row) stay in registers; the
 *   second tile finds the panel in cache.
 * - AVX-512: one zmm accumulator a row, tiles of up to 12 rows; the weights are read once for all
 *   rows (panels outer, tiles of rows inner).
 *
 * Both prefetch the weights 8 KB ahead of the multiply-adds, into L2. A decoding step reads every
 * weight from memory once; without the prefetch the reads of a tile wait on memory and its
 * multiply-adds on the reads, so each row added to a step cost most of its multiply-add time on
 * top of the memory time (on an AMD Zen 4, the AVX2 loop's products of a 4-row step took 18.6 ms
 * without it, 13.6 ms with it into L1). Into L2 rather than L1, and with the AVX-512 loop on
 * panels of 16 features (a line every other k, as the AVX2 loop), the overlap is better: on that
 * Zen 4 the 120 products of a step (LM head aside) of 1 / 4 / 10 rows took 10.3 / 13.0 / 22.9 ms
 * with the earlier AVX-512 loop (panels of 32, prefetching into L1) and 9.3 / 10.4 / 20.6 ms with
 * this one. (A synthetic loop over the same shapes gave the AVX2 loop as much from prefetching
 * into L2: 4 rows 12.9 -> 9.8 ms.)
 *
 * Every output value is summed in the same order (k = 0, 1, ..., one fused multiply-add each),
 * whatever the number of rows, wherever the row sits and whichever loop runs: a row's result has
 * the same bits alone and in any batch, with either loop.
 *
 * The module builds anywhere (setup.py, optional); ``supported()`` says whether this CPU can run
 * the kernel (the AVX2 loop) and ``avx512()`` whether it can run the AVX-512 loop. Each loop is
 * compiled for its instructions only (``target`` attributes), so the module loads on any CPU.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#define PANEL 16    /* output features a panel (both loops) */
#define TILE 6      /* rows a tile: 2 x 6 accumulators, 2 weight vectors and 1 broadcast of 16 ymm */
#define TILE512 12  /* rows a tile of the AVX-512 loop */
#define AHEAD 8192  /* bytes of weights prefetched (into L2) ahead of those being multiplied */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_KERNEL 1
#include <immintrin.h>

#define KERNEL __attribute__((target("avx2,fma,f16c")))

/* A row's accumulators are named variables, not an array: GCC keeps an array of them on the
 * stack, storing it every iteration (half the speed). R is a constant where tile() is inlined. */
#define ROW(r) __m256 a##r##0 = _mm256_setzero_ps(), a##r##1 = _mm256_setzero_ps();
#define FMA(r)                                                                                     \
    if (R > r) {                                                                                   \
        __m256 xv = _mm256_broadcast_ss(x + r * K + k);                                            \
        a##r##0 = _mm256_fmadd_ps(xv, w0, a##r##0);                                                \
        a##r##1 = _mm256_fmadd_ps(xv, w1, a##r##1);                                                \
    }
#define STORE(r)                                                                                   \
    if (R > r) {                                                                                   \
        _mm256_storeu_ps(y + r * ldy, _mm256_add_ps(a##r##0, b0));                                 \
        _mm256_storeu_ps(y + r * ldy + 8, _mm256_add_ps(a##r##1, b1));                             \
    }

/* R rows of x (K apart) times one panel p, into y (rows ldy apart); b: the panel's 16 biases. */
static inline __attribute__((always_inline)) KERNEL void
tile(const int R, const float *x, long K, const uint16_t *p, float *y, long ldy, const float *b)
{
    ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
    for (long k = 0; k < K; k++) {
        /* one line of 64 bytes every other k; the extra prefetch of a line in flight is cheap.
           Past the end of the weights it is a hint that cannot fault. */
        _mm_prefetch((const char *)(p + PANEL * k) + AHEAD, _MM_HINT_T1);
        __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + PANEL * k)));
        __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + PANEL * k + 8)));
        FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5)
    }
    __m256 b0 = b ? _mm256_loadu_ps(b) : _mm256_setzero_ps();
    __m256 b1 = b ? _mm256_loadu_ps(b + 8) : _mm256_setzero_ps();
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5)
}

static KERNEL void
tile_rows(int R, const float *x, long K, const uint16_t *p, float *y, long ldy, const float *b)
{
    switch (R) {
    case 1: tile(1, x, K, p, y, ldy, b); break;
    case 2: tile(2, x, K, p, y, ldy, b); break;
    case 3: tile(3, x, K, p, y, ldy, b); break;
    case 4: tile(4, x, K, p, y, ldy, b); break;
    case 5: tile(5, x, K, p, y, ldy, b); break;
    case 6: tile(6, x, K, p, y, ldy, b); break;
    }
}

static KERNEL void
product(const float *x, long M, long K, const uint16_t *w, const float *bias, float *y, long N)
{
    long panels = (N + PANEL - 1) / PANEL;
    for (long m = 0; m < M; m += 2 * TILE) {
        int rows = M - m < 2 * TILE ? (int)(M - m) : 2 * TILE;
        /* 7-12 rows: two tiles of about half each (a tile of 1-2 rows waits on its few
           accumulators' latency) */
        int r1 = rows <= TILE ? rows : (rows + 1) / 2, r2 = rows - r1;
        const float *x1 = x + m * K, *x2 = x1 + r1 * K;
        for (long j = 0; j < panels; j++) {
            const uint16_t *p = w + j * PANEL * K;
            long col = j * PANEL, width = N - col < PANEL ? N - col : PANEL;
            if (width == PANEL) {
                const float *b = bias ? bias + col : NULL;
                tile_rows(r1, x1, K, p, y + m * N + col, N, b);
                if (r2)
                    tile_rows(r2, x2, K, p, y + (m + r1) * N + col, N, b);
            } else { /* the last, partial panel: through a buffer, so nothing is written past N */
                float out[2 * TILE][PANEL], b[PANEL] = {0};
                if (bias)
                    memcpy(b, bias + col, width * sizeof(float));
                tile_rows(r1, x1, K, p, out[0], PANEL, bias ? b : NULL);
                if (r2)
                    tile_rows(r2, x2, K, p, out[r1], PANEL, bias ? b : NULL);
                for (int r = 0; r < rows; r++)
                    memcpy(y + (m + r) * N + col, out[r], width * sizeof(float));
            }
        }
    }
}

/* The AVX-512 loop: the same panels of 16 features, one zmm a row, 12 rows a tile. */
#define KERNEL512 __attribute__((target("avx512f,avx2,fma,f16c")))
#define ROW5(r) __m512 c##r = _mm512_setzero_ps();
#define FMA5(r)                                                                                    \
    if (R > r)                                                                                     \
        c##r = _mm512_fmadd_ps(_mm512_set1_ps(x[r * K + k]), w, c##r);
#define STORE5(r)                                                                                  \
    if (R > r)                                                                                     \
        _mm512_storeu_ps(y + r * ldy, _mm512_add_ps(c##r, b0));

/* R rows of x (K apart) times one panel p, into y (rows ldy apart); b: the panel's 16 biases. */
static inline __attribute__((always_inline)) KERNEL512 void
tile512(const int R, const float *x, long K, const uint16_t *p, float *y, long ldy, const float *b)
{
    ROW5(0) ROW5(1) ROW5(2) ROW5(3) ROW5(4) ROW5(5) ROW5(6) ROW5(7) ROW5(8) ROW5(9) ROW5(10) ROW5(11)
    for (long k = 0; k < K; k++) {
        _mm_prefetch((const char *)(p + PANEL * k) + AHEAD, _MM_HINT_T1); /* as in tile() */
        __m512 w = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + PANEL * k)));
        FMA5(0) FMA5(1) FMA5(2) FMA5(3) FMA5(4) FMA5(5) FMA5(6) FMA5(7) FMA5(8) FMA5(9) FMA5(10) FMA5(11)
    }
    __m512 b0 = b ? _mm512_loadu_ps(b) : _mm512_setzero_ps();
    STORE5(0) STORE5(1) STORE5(2) STORE5(3) STORE5(4) STORE5(5)
    STORE5(6) STORE5(7) STORE5(8) STORE5(9) STORE5(10) STORE5(11)
}

#define CASE5(r)                                                                                   \
    case r: tile512(r, x, K, p, y, ldy, b); break;

static KERNEL512 void
tile512_rows(int R, const float *x, long K, const uint16_t *p, float *y, long ldy, const float *b)
{
    switch (R) {
        CASE5(1) CASE5(2) CASE5(3) CASE5(4) CASE5(5) CASE5(6)
        CASE5(7) CASE5(8) CASE5(9) CASE5(10) CASE5(11) CASE5(12)
    }
}

static KERNEL512 void
product512(const float *x, long M, long K, const uint16_t *w, const float *bias, float *y, long N)
{
    long panels = (N + PANEL - 1) / PANEL, tiles = (M + TILE512 - 1) / TILE512;
    for (long j = 0; j < panels; j++) {
        const uint16_t *p = w + j * PANEL * K;
        long col = j * PANEL, width = N - col < PANEL ? N - col : PANEL;
        const float *b = bias ? bias + col : NULL;
        float out[TILE512][PANEL], part[PANEL] = {0};
        if (b && width < PANEL) { /* the last, partial panel: its biases padded with zeros */
            memcpy(part, b, width * sizeof(float));
            b = part;
        }
        /* tiles of as even sizes as can be (a tile of 1-2 rows waits on its accumulators) */
        for (long t = 0, m = 0; t < tiles; t++) {
            long rows = (M - m + (tiles - t) - 1) / (tiles - t);
            if (width == PANEL) {
                tile512_rows((int)rows, x + m * K, K, p, y + m * N + col, N, b);
            } else { /* through a buffer, so nothing is written past N */
                tile512_rows((int)rows, x + m * K, K, p, out[0], PANEL, b);
                for (long r = 0; r < rows; r++)
                    memcpy(y + (m + r) * N + col, out[r], width * sizeof(float));
            }
            m += rows;
        }
    }
}

/* Attention for trainer.packed_attention's packed steps, on one core: token t of the packed
 * sequence (a decoding row's next token, or one of a new prompt's tokens) has its key and value
 * written to column stop[t] - 1 of cache slot slot[t], then each of its query heads attends over
 * the count[t] columns before stop[t] of its key head (heads / key heads query heads share one),
 * softmax in float32. The tokens go in order, so a prompt's token finds those before it written.
 * Every value is summed in one order whatever the other tokens: a token's result has the same
 * bits alone and in any batch. 8-float vectors (AVX2, FMA) on every CPU that runs the kernel, so
 * AVX2 and AVX-512 CPUs give the same bits. */
static inline __attribute__((always_inline)) KERNEL float
hsum8(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

static KERNEL void
attend(long T, long H, long KH, long D, const float *q, long q_tok, long q_head, const float *kn, long kn_tok,
       long kn_head, const float *vn, long vn_tok, long vn_head, float *kc, float *vc, long slot_stride,
       long head_stride, const int64_t *slot, const int64_t *stop, const int64_t *count, float scale,
       float *out, float *s)
{
    long G = H / KH;
    for (long t = 0; t < T; t++) {
        long n = count[t], first = stop[t] - n;
        for (long h = 0; h < KH; h++) {
            float *K = kc + slot[t] * slot_stride + h * head_stride, *V = vc + slot[t] * slot_stride + h * head_stride;
            memcpy(K + (stop[t] - 1) * D, kn + t * kn_tok + h * kn_head, D * sizeof(float));
            memcpy(V + (stop[t] - 1) * D, vn + t * vn_tok + h * vn_head, D * sizeof(float));
            for (long g = 0; g < G; g++) {
                const float *qv = q + t * q_tok + (h * G + g) * q_head;
                float m = -INFINITY, sum = 0.0f;
                for (long j = 0; j < n; j++) {
                    const float *kv = K + (first + j) * D;
                    __m256 acc = _mm256_setzero_ps();
                    for (long i = 0; i < D; i += 8)
                        acc = _mm256_fmadd_ps(_mm256_loadu_ps(qv + i), _mm256_loadu_ps(kv + i), acc);
                    s[j] = hsum8(acc) * scale;
                    m = s[j] > m ? s[j] : m;
                }
                for (long j = 0; j < n; j++) {
                    s[j] = expf(s[j] - m);
                    sum += s[j];
                }
                float *o = out + (t * H + h * G + g) * D;
                for (long i = 0; i < D; i += 8) {
                    __m256 acc = _mm256_setzero_ps();
                    for (long j = 0; j < n; j++)
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(s[j]), _mm256_loadu_ps(V + (first + j) * D + i), acc);
                    _mm256_storeu_ps(o + i, _mm256_mul_ps(acc, _mm256_set1_ps(1.0f / sum)));
                }
            }
        }
    }
}

static int
has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

static int
has_avx512(void)
{
    return has_avx2() && __builtin_cpu_supports("avx512f"); /* (OS support of its registers included) */
}
#else
static int has_avx2(void) { return 0; }
static int has_avx512(void) { return 0; }
#endif

static PyObject *
f16_supported(PyObject *self, PyObject *unused)
{
    (void)self, (void)unused;
    return PyBool_FromLong(has_avx2());
}

static PyObject *
f16_avx512(PyObject *self, PyObject *unused)
{
    (void)self, (void)unused;
    return PyBool_FromLong(has_avx512());
}

static PyObject *
f16_product(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long long x, w, bias, y;
    Py_ssize_t rows, k, n;
    int avx512;
    if (!PyArg_ParseTuple(args, "KnnKKKnp", &x, &rows, &k, &w, &bias, &y, &n, &avx512))
        return NULL;
    if (rows < 0 || k < 0 || n < 0 || !x || !w || !y) {
        PyErr_SetString(PyExc_ValueError, "product: negative size or null address");
        return NULL;
    }
#ifdef HAVE_KERNEL
    if (avx512 ? !has_avx512() : !has_avx2()) {
        PyErr_SetString(PyExc_RuntimeError, avx512 ? "product: the AVX-512 loop needs AVX-512, which this CPU lacks"
                                                   : "product: this CPU lacks AVX2, FMA or F16C");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (avx512)
        product512((const float *)x, rows, k, (const uint16_t *)w, (const float *)bias, (float *)y, n);
    else
        product((const float *)x, rows, k, (const uint16_t *)w, (const float *)bias, (float *)y, n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    PyErr_SetString(PyExc_RuntimeError, "the float16 kernel needs an x86-64 CPU");
    return NULL;
#endif
}

static PyObject *
f16_attend(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long long q, kn, vn, kc, vc, plan, out;
    Py_ssize_t T, H, KH, D, q_tok, q_head, kn_tok, kn_head, vn_tok, vn_head, slots, columns;
    float scale;
    if (!PyArg_ParseTuple(args, "nnnnKnnKnnKnnKKnnKfK", &T, &H, &KH, &D, &q, &q_tok, &q_head, &kn, &kn_tok,
                          &kn_head, &vn, &vn_tok, &vn_head, &kc, &vc, &slots, &columns, &plan, &scale, &out))
        return NULL;
    if (T < 0 || KH <= 0 || H % KH || D <= 0 || D % 8 || slots <= 0 || columns <= 0 || !q || !kn || !vn || !kc
        || !vc || !plan || !out) {
        PyErr_SetString(PyExc_ValueError, "attend: bad sizes or null address");
        return NULL;
    }
    /* plan: 3 x T int64, each token's slot, stop and count: checked against the cache's slots and
       columns before anything is written */
    const int64_t *slot = (const int64_t *)plan, *stop = slot + T, *count = stop + T;
    long longest = 1;
    for (Py_ssize_t t = 0; t < T; t++) {
        if (slot[t] < 0 || slot[t] >= slots || count[t] < 1 || stop[t] > columns || stop[t] - count[t] < 0) {
            PyErr_Format(PyExc_ValueError, "attend: token %zd: slot %lld, columns %lld to %lld outside the cache",
                         t, (long long)slot[t], (long long)(stop[t] - count[t]), (long long)stop[t]);
            return NULL;
        }
        longest = count[t] > longest ? count[t] : longest;
    }
#ifdef HAVE_KERNEL
    if (!has_avx2()) {
        PyErr_SetString(PyExc_RuntimeError, "attend: this CPU lacks AVX2, FMA or F16C");
        return NULL;
    }
    float *s = PyMem_RawMalloc(longest * sizeof(float));
    if (!s)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    /* one key head's columns: head_stride floats; one slot: KH of them */
    attend(T, H, KH, D, (const float *)q, q_tok, q_head, (const float *)kn, kn_tok, kn_head, (const float *)vn,
           vn_tok, vn_head, (float *)kc, (float *)vc, KH * columns * D, columns * D, slot, stop, count, scale,
           (float *)out, s);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(s);
    Py_RETURN_NONE;
#else
    PyErr_SetString(PyExc_RuntimeError, "the kernel needs an x86-64 CPU");
    return NULL;
#endif
}

static PyMethodDef methods[] = {
    {"supported", f16_supported, METH_NOARGS, "Whether this CPU has AVX2, FMA and F16C."},
    {"avx512", f16_avx512, METH_NOARGS, "Whether this CPU can run the AVX-512 loop."},
    {"product", f16_product, METH_VARARGS,
     "product(x, rows, k, w, bias, y, n, avx512): y (rows x n float32) = x (rows x k float32) times\n"
     "the panels of 16 features at w, plus bias (n float32; 0 for none). avx512: run the AVX-512\n"
     "loop, else the AVX2 loop (see the module's source); both give the same bits. Addresses are\n"
     "those of contiguous tensors that the caller keeps alive; the GIL is released meanwhile."},
    {"attend", f16_attend, METH_VARARGS,
     "attend(T, H, KH, D, q, q_tok, q_head, k, k_tok, k_head, v, v_tok, v_head, kc, vc, slots, columns,\n"
     "plan, scale, out): attention of T packed tokens (see the module's source). q, k, v: float32\n"
     "addresses with their token and head strides in floats; kc, vc: a layer's keys and values, each\n"
     "slots x KH x columns x D contiguous float32; plan: 3 x T int64 (each token's slot, stop and\n"
     "count); out: T x H x D float32. The GIL is released meanwhile."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_f16",
    .m_doc = "Float16-weight products (AVX2 or AVX-512) and packed steps' attention, on one core.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__f16(void)
{
    return PyModule_Create(&module);
}
