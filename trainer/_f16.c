/* Float16 weights times float32 rows on one core with AVX2, FMA and F16C: the product behind
 * ``trainer.cpu_linear``'s float16 layers where fbgemm's AVX2 kernel is slow for the row counts
 * of a decoding step (see cpu_linear's docstring).
 *
 *     y[m][n] = sum_k x[m][k] * w[n][k]  (+ bias[n])
 *
 * w is packed in panels of 16 output features, each stored k-major (panel, k, 16 values), zero
 * past the last feature, so one panel is read as one contiguous stream. Rows are taken 12 at a
 * time and each panel is multiplied by them in two tiles of up to 6 rows, whose 12 accumulators
 * (2 x 8 features a row) stay in registers; the second tile finds the panel in cache. Every
 * output value is summed in the same order (k = 0, 1, ..., one fused multiply-add each), whatever
 * the number of rows and wherever the row sits: a row's result has the same bits alone and in any
 * batch.
 *
 * The module builds anywhere (setup.py, optional); ``supported()`` says whether this CPU can run
 * the kernel, which is compiled for AVX2, FMA and F16C only where those are asked for.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PANEL 16 /* output features a panel */
#define TILE 6   /* rows a tile: 2 x 6 accumulators, 2 weight vectors and 1 broadcast of 16 ymm */

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
#endif

static PyObject *
f16_supported(PyObject *self, PyObject *unused)
{
    (void)self, (void)unused;
#ifdef HAVE_KERNEL
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        Py_RETURN_TRUE;
#endif
    Py_RETURN_FALSE;
}

static PyObject *
f16_avx512(PyObject *self, PyObject *unused)
{
    (void)self, (void)unused;
#ifdef HAVE_KERNEL
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        Py_RETURN_TRUE;
#endif
    Py_RETURN_FALSE;
}

static PyObject *
f16_product(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long long x, w, bias, y;
    Py_ssize_t rows, k, n;
    if (!PyArg_ParseTuple(args, "KnnKKKn", &x, &rows, &k, &w, &bias, &y, &n))
        return NULL;
    if (rows < 0 || k < 0 || n < 0 || !x || !w || !y) {
        PyErr_SetString(PyExc_ValueError, "product: negative size or null address");
        return NULL;
    }
#ifdef HAVE_KERNEL
    Py_BEGIN_ALLOW_THREADS
    product((const float *)x, rows, k, (const uint16_t *)w, (const float *)bias, (float *)y, n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    PyErr_SetString(PyExc_RuntimeError, "the float16 kernel needs an x86-64 CPU");
    return NULL;
#endif
}

static PyMethodDef methods[] = {
    {"supported", f16_supported, METH_NOARGS, "Whether this CPU has AVX2, FMA and F16C."},
    {"avx512", f16_avx512, METH_NOARGS, "Whether this CPU has AVX-512F."},
    {"product", f16_product, METH_VARARGS,
     "product(x, rows, k, w, bias, y, n): y (rows x n float32) = x (rows x k float32) times the\n"
     "panels at w (see the module's source), plus bias (n float32; 0 for none). Addresses are\n"
     "those of contiguous tensors that the caller keeps alive; the GIL is released meanwhile."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_f16",
    .m_doc = "AVX2 float16-weight products for decoding steps on one core.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__f16(void)
{
    return PyModule_Create(&module);
}
