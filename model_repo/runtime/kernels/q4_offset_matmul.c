/* tritonform's CPU operator for 4-bit weights with an exact float offset per block (onnxruntime custom op).

   Y[m, n] = sum_k A[m, k] * W[k, n], with W stored by blocks of 32 along K:
       W[k, n] = (q[n, k] - 8) * scale[n, b] + offset[n, b],   b = k / 32, q in 0..15
   (the Q4_1 form of GGUF checkpoints, w = q * d + m, with offset = m + 8 * d). The standard graph computes this with three
   kinds of nodes per projection (MatMulNBits for the q * scale part, a block sum of A and a MatMul by the
   offsets, an Add); this operator reads each weight once and does all of it, in one node.

   Inputs:  A      float [..., K]
            packed uint8 [N, blocks, 16]  two weights a byte: even k in the low nibble, odd k in the high
            scales float [N * blocks]
            offset float [N * blocks]
   Output:  Y      float [..., N]
   Attributes: K, N.

   How: the weights are repacked once, when onnxruntime creates the kernel, into tiles of 16 output
   columns x one block (see Kernel), the shape of a 4-way int8 dot product a column. Each call quantises
   A's rows to int8 by blocks of 32 (scale = max|a| / 127: the activation rounding of onnxruntime's
   MatMulNBits at accuracy_level 4 and of llama.cpp's Q8 dot products); each block's exact float sum of
   A carries the offset term, so the rounding only meets the centred weights (q - 8) * scale, as in
   MatMulNBits. A tile's 16 columns are one AVX-512 register (AVX2: two), up to 4 rows of A share each
   unpacked tile, and onnxruntime's intra-op thread pool splits the column groups. AVX-512 VNNI, AVX2 or
   plain C is picked once, by what the CPU has. */

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "onnxruntime_c_api.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TF_X86 1
#else
#define TF_X86 0
#endif

#define BLOCK 32
#define GROUP 16                         /* output columns a tile */
#define TILE_Q (GROUP * BLOCK / 2)       /* 256 bytes of 4-bit weights */
#define TILE32 (TILE_Q + 2 * GROUP * 4)  /* + 16 scales and 16 offsets, float32 */
#define TILE16 (TILE_Q + 2 * GROUP * 2)  /* + 16 scales and 16 lows (offset - 8 * scale), float16 */
#define GROUPS_PER_TASK 4
#define ROWS_AT_ONCE 4

static const OrtApi *g_ort = NULL;

/* The weights, repacked once when the kernel is created, as tiles of 16 columns x one block of 32:
     bytes [0, 256):   4 chunks of 64 bytes; chunk c holds, for column j = 0..15 and i = 0..3, the byte
                       q[j][4c + i] | q[j][16 + 4c + i] << 4 at 4j + i: one 32-bit lane a column, four
                       consecutive k's, which is the operand shape of a 4-way int8 dot product;
     then the 16 columns' scales and offsets as float32, or, when float16 holds every block's scale
     and low (offset - 8 * scale) to a thousandth of a step (always so for weights that came from
     Q4_1, whose d and m are float16), their scales and lows as float16: 320 bytes a tile instead of
     384, a sixth less to read each token.
   Tile (g, b) is at (g * blocks + b) * tile: one group's blocks are read in order. Columns past N are
   zero. */
typedef struct {
  int64_t k, n, blocks, groups, tile;
  int half;
  uint8_t *tiles;
} Kernel;

typedef struct {
  const int8_t *qa;                /* [M, blocks * 32] the activations in int8 */
  const float *da, *sums, *centre; /* [M, blocks]: int8 scale, exact sum, -8 * da * sum of the int8 */
  const Kernel *kernel;
  float *y; /* [M, N] */
  int64_t m;
} Work;

typedef void (*GroupsFn)(const Work *, int64_t, int64_t);

/* IEEE float16 <-> float32, round to nearest even (portable C; only used when repacking). */
static uint16_t to_half(float x) {
  uint32_t f;
  memcpy(&f, &x, 4);
  uint32_t sign = (f >> 16) & 0x8000u, exponent = (f >> 23) & 0xFFu, mantissa = f & 0x7FFFFFu;
  if (exponent == 0xFFu) return (uint16_t)(sign | 0x7C00u | (mantissa ? 0x200u : 0u)); /* inf, nan */
  int e = (int)exponent - 127 + 15;
  if (e >= 31) return (uint16_t)(sign | 0x7C00u); /* too large: inf */
  if (e <= 0) {                                   /* subnormal or zero */
    if (e < -10) return (uint16_t)sign;
    mantissa |= 0x800000u;
    int shift = 14 - e;
    uint32_t half = mantissa >> shift, rest = mantissa & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rest > mid || (rest == mid && (half & 1u))) ++half;
    return (uint16_t)(sign | half);
  }
  uint32_t half = ((uint32_t)e << 10) | (mantissa >> 13), rest = mantissa & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half; /* may carry into the exponent */
  return (uint16_t)(sign | half);
}

static float from_half(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu, f;
  if (exponent == 0x1Fu) {
    f = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    f = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    f = sign;
  } else { /* subnormal: normalise */
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while (!(mantissa & 0x400u));
    f = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mantissa & 0x3FFu) << 13);
  }
  float x;
  memcpy(&x, &f, 4);
  return x;
}

/* Whether float16 keeps every block's scale and low to a thousandth of a step. */
static int halves_suffice(int64_t cells, const float *scales, const float *offsets) {
  for (int64_t i = 0; i < cells; ++i) {
    float scale = scales[i], low = offsets[i] - 8.f * scales[i];
    float drift = 15.f * fabsf(from_half(to_half(scale)) - scale) + fabsf(from_half(to_half(low)) - low);
    if (!(drift <= 1e-3f * fabsf(scale))) return 0;
  }
  return 1;
}

static void repack(Kernel *kernel, const uint8_t *packed, const float *scales, const float *offsets) {
  const int64_t nb = kernel->blocks;
  for (int64_t g = 0; g < kernel->groups; ++g) {
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t *tile = kernel->tiles + (g * nb + b) * kernel->tile;
      float *sc = (float *)(tile + TILE_Q), *of = sc + GROUP;
      uint16_t *hsc = (uint16_t *)(tile + TILE_Q), *hlo = hsc + GROUP;
      for (int j = 0; j < GROUP; ++j) {
        int64_t n = g * GROUP + j;
        if (n >= kernel->n) continue; /* calloc'd: zeros */
        const uint8_t *src = packed + (n * nb + b) * (BLOCK / 2); /* byte t: k = 2t low, 2t + 1 high */
        uint8_t q[BLOCK];
        for (int t = 0; t < BLOCK / 2; ++t) {
          q[2 * t] = src[t] & 0x0F;
          q[2 * t + 1] = src[t] >> 4;
        }
        for (int c = 0; c < 4; ++c)
          for (int i = 0; i < 4; ++i)
            tile[c * 64 + 4 * j + i] = (uint8_t)(q[4 * c + i] | (q[16 + 4 * c + i] << 4));
        float scale = scales[n * nb + b], offset = offsets[n * nb + b];
        if (kernel->half) {
          hsc[j] = to_half(scale);
          hlo[j] = to_half(offset - 8.f * scale);
        } else {
          sc[j] = scale;
          of[j] = offset;
        }
      }
    }
  }
}

/* ---- activations: int8 by blocks of 32, exact block sums ---------------------------------------- */
static void quantise_rows(const float *a, int64_t m, int64_t k, int64_t blocks, int8_t *qa, float *da,
                          float *sums, float *centre) {
  for (int64_t r = 0; r < m; ++r) {
    const float *row = a + r * k;
    for (int64_t b = 0; b < blocks; ++b) {
      float v[BLOCK];
      int64_t start = b * BLOCK, len = k - start < BLOCK ? k - start : BLOCK;
      float amax = 0.f, sum = 0.f;
      for (int64_t j = 0; j < BLOCK; ++j) {
        v[j] = j < len ? row[start + j] : 0.f;
        sum += v[j];
        float x = fabsf(v[j]);
        amax = x > amax ? x : amax;
      }
      float d = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
      int8_t *q = qa + (r * blocks + b) * BLOCK;
      int32_t isum = 0;
      for (int j = 0; j < BLOCK; ++j) {
        q[j] = (int8_t)lrintf(v[j] * inv);
        isum += q[j];
      }
      da[r * blocks + b] = d;
      sums[r * blocks + b] = sum;
      centre[r * blocks + b] = -8.f * d * (float)isum;
    }
  }
}

static void store(const Work *w, int64_t r, int64_t g, const float *acc) {
  int64_t n0 = g * GROUP, n = w->kernel->n;
  for (int j = 0; j < GROUP && n0 + j < n; ++j) w->y[r * n + n0 + j] = acc[j];
}

/* ---- plain C ------------------------------------------------------------------------------------ */
static void groups_c(const Work *w, int64_t g0, int64_t g1) {
  const int64_t nb = w->kernel->blocks;
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t r = 0; r < w->m; ++r) {
      float acc[GROUP] = {0};
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *tile = w->kernel->tiles + (g * nb + b) * w->kernel->tile;
        float sc[GROUP], of[GROUP];
        if (w->kernel->half) {
          const uint16_t *hsc = (const uint16_t *)(tile + TILE_Q), *hlo = hsc + GROUP;
          for (int j = 0; j < GROUP; ++j) {
            sc[j] = from_half(hsc[j]);
            of[j] = from_half(hlo[j]) + 8.f * sc[j];
          }
        } else {
          memcpy(sc, tile + TILE_Q, sizeof(sc));
          memcpy(of, tile + TILE_Q + sizeof(sc), sizeof(of));
        }
        const int8_t *qa = w->qa + (r * nb + b) * BLOCK;
        int64_t rb = r * nb + b;
        for (int j = 0; j < GROUP; ++j) {
          int32_t dot = 0;
          for (int c = 0; c < 4; ++c)
            for (int i = 0; i < 4; ++i) {
              uint8_t byte = tile[c * 64 + 4 * j + i];
              dot += (byte & 0x0F) * qa[4 * c + i] + (byte >> 4) * qa[16 + 4 * c + i];
            }
          acc[j] += sc[j] * ((float)dot * w->da[rb] + w->centre[rb]) + of[j] * w->sums[rb];
        }
      }
      store(w, r, g, acc);
    }
  }
}

#if TF_X86
static int32_t quad(const int8_t *p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* ---- AVX-512 VNNI: a tile's 16 columns in one register, up to 4 rows on the same unpacked weights -- */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void groups_avx512(const Work *w,
                                                                                            int64_t g0,
                                                                                            int64_t g1) {
  const int64_t nb = w->kernel->blocks;
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t r0 = 0; r0 < w->m; r0 += ROWS_AT_ONCE) {
      int rows = w->m - r0 < ROWS_AT_ONCE ? (int)(w->m - r0) : ROWS_AT_ONCE;
      __m512 acc[ROWS_AT_ONCE] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                                  _mm512_setzero_ps()};
      const int64_t step = w->kernel->tile;
      const uint8_t *tile = w->kernel->tiles + g * nb * step;
      for (int64_t b = 0; b < nb; ++b, tile += step) {
        __m512i lo[4], hi[4];
        for (int c = 0; c < 4; ++c) {
          __m512i q = _mm512_loadu_si512((const void *)(tile + c * 64));
          lo[c] = _mm512_and_si512(q, nibble);
          hi[c] = _mm512_and_si512(_mm512_srli_epi16(q, 4), nibble);
        }
        __m512 sc, of;
        if (w->kernel->half) {
          sc = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(tile + TILE_Q)));
          __m512 low = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(tile + TILE_Q + 32)));
          of = _mm512_fmadd_ps(_mm512_set1_ps(8.f), sc, low);
        } else {
          sc = _mm512_loadu_ps((const float *)(tile + TILE_Q));
          of = _mm512_loadu_ps((const float *)(tile + TILE_Q) + GROUP);
        }
        for (int r = 0; r < rows; ++r) {
          int64_t rb = (r0 + r) * nb + b;
          const int8_t *qa = w->qa + rb * BLOCK;
          __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[0], _mm512_set1_epi32(quad(qa)));
          __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi[0], _mm512_set1_epi32(quad(qa + 16)));
          for (int c = 1; c < 4; ++c) {
            d0 = _mm512_dpbusd_epi32(d0, lo[c], _mm512_set1_epi32(quad(qa + 4 * c)));
            d1 = _mm512_dpbusd_epi32(d1, hi[c], _mm512_set1_epi32(quad(qa + 16 + 4 * c)));
          }
          __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(d0, d1)), _mm512_set1_ps(w->da[rb]),
                                     _mm512_set1_ps(w->centre[rb]));
          acc[r] = _mm512_fmadd_ps(sc, t, acc[r]);
          acc[r] = _mm512_fmadd_ps(of, _mm512_set1_ps(w->sums[rb]), acc[r]);
        }
      }
      for (int r = 0; r < rows; ++r) {
        float out[GROUP];
        _mm512_storeu_ps(out, acc[r]);
        store(w, r0 + r, g, out);
      }
    }
  }
}

/* ---- AVX2: half a tile (8 columns) a register; maddubs (u8 x s8 pairs to int16: 16 products of at
   most 15 * 127 fit) then madd to int32 ------------------------------------------------------------ */
__attribute__((target("avx2,fma,f16c"))) static void groups_avx2(const Work *w, int64_t g0, int64_t g1) {
  const int64_t nb = w->kernel->blocks;
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t r = 0; r < w->m; ++r) {
      __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
      const int64_t step = w->kernel->tile;
      const uint8_t *tile = w->kernel->tiles + g * nb * step;
      for (int64_t b = 0; b < nb; ++b, tile += step) {
        int64_t rb = r * nb + b;
        const int8_t *qa = w->qa + rb * BLOCK;
        __m256 da = _mm256_set1_ps(w->da[rb]), ce = _mm256_set1_ps(w->centre[rb]);
        __m256 su = _mm256_set1_ps(w->sums[rb]);
        for (int h = 0; h < 2; ++h) {
          __m256i p = _mm256_setzero_si256();
          for (int c = 0; c < 4; ++c) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(tile + c * 64 + h * 32));
            __m256i lo = _mm256_and_si256(q, nibble);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble);
            p = _mm256_add_epi16(p, _mm256_maddubs_epi16(lo, _mm256_set1_epi32(quad(qa + 4 * c))));
            p = _mm256_add_epi16(p, _mm256_maddubs_epi16(hi, _mm256_set1_epi32(quad(qa + 16 + 4 * c))));
          }
          __m256i dot = _mm256_madd_epi16(p, ones);
          __m256 sc, of;
          if (w->kernel->half) {
            sc = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(tile + TILE_Q + 16 * h)));
            __m256 low = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(tile + TILE_Q + 32 + 16 * h)));
            of = _mm256_fmadd_ps(_mm256_set1_ps(8.f), sc, low);
          } else {
            sc = _mm256_loadu_ps((const float *)(tile + TILE_Q) + 8 * h);
            of = _mm256_loadu_ps((const float *)(tile + TILE_Q) + GROUP + 8 * h);
          }
          __m256 t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), da, ce);
          acc[h] = _mm256_fmadd_ps(sc, t, acc[h]);
          acc[h] = _mm256_fmadd_ps(of, su, acc[h]);
        }
      }
      float out[GROUP];
      _mm256_storeu_ps(out, acc[0]);
      _mm256_storeu_ps(out + 8, acc[1]);
      store(w, r, g, out);
    }
  }
}
#endif

static GroupsFn g_groups = groups_c;
static const char *g_kernel_name = "c";

static void pick_once(void) {
  const char *force = getenv("TRITONFORM_Q4_KERNEL"); /* tests: "c", "avx2" or "avx512" */
#if TF_X86
  __builtin_cpu_init();
  int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c"); /* f16c: the float16 tables' widening */
  if (force && strcmp(force, "c") == 0) avx512 = avx2 = 0;
  if (force && strcmp(force, "avx2") == 0) avx512 = 0;
  if (avx512) {
    g_groups = groups_avx512;
    g_kernel_name = "avx512vnni";
  } else if (avx2) {
    g_groups = groups_avx2;
    g_kernel_name = "avx2";
  }
#else
  (void)force;
#endif
}

/* Once a process (the first session's registration or the first query): later calls change nothing, so
   no kernel is ever swapped under a running session. */
static pthread_once_t g_picked = PTHREAD_ONCE_INIT;
static void pick_kernel(void) { pthread_once(&g_picked, pick_once); }

/* The kernel the library runs on this CPU: "avx512vnni", "avx2" or "c" (for the engine's report). */
const char *tritonform_q4_kernel(void) {
  pick_kernel();
  return g_kernel_name;
}

/* How many kernels this process created with float16 (half = 1) or float32 (half = 0) tables. */
static int64_t g_tables[2] = {0, 0};
int64_t tritonform_q4_tables(int half) { return __atomic_load_n(&g_tables[half ? 1 : 0], __ATOMIC_RELAXED); }

static void run_task(void *data, size_t task) {
  const Work *w = (const Work *)data;
  int64_t g0 = (int64_t)task * GROUPS_PER_TASK, groups = w->kernel->groups;
  g_groups(w, g0, g0 + GROUPS_PER_TASK < groups ? g0 + GROUPS_PER_TASK : groups);
}

/* ---- onnxruntime glue ------------------------------------------------------------------------- */
#define RETURN_IF_ERROR(expr)            \
  do {                                   \
    OrtStatus *status_ = (expr);         \
    if (status_ != NULL) return status_; \
  } while (0)

static OrtStatus *error(const char *message) { return g_ort->CreateStatus(ORT_INVALID_ARGUMENT, message); }

static OrtStatus *shape(const OrtValue *value, int64_t *dims, size_t *rank) {
  OrtTensorTypeAndShapeInfo *info = NULL;
  RETURN_IF_ERROR(g_ort->GetTensorTypeAndShape(value, &info));
  OrtStatus *status = g_ort->GetDimensionsCount(info, rank);
  if (status == NULL && *rank > 8) status = error("Q4OffsetMatMul: an input has more than 8 dimensions");
  if (status == NULL) status = g_ort->GetDimensions(info, dims, *rank);
  g_ort->ReleaseTensorTypeAndShapeInfo(info);
  return status;
}

/* The data of constant input `index` (an initializer), checked to have `count` elements in `rank` dims. */
static OrtStatus *constant(const OrtKernelInfo *info, size_t index, size_t rank, int64_t count,
                           const char *message, void **data) {
  int is_constant = 0;
  const OrtValue *value = NULL;
  RETURN_IF_ERROR(g_ort->KernelInfoGetConstantInput_tensor(info, index, &is_constant, &value));
  if (!is_constant || value == NULL) return error("Q4OffsetMatMul: the weights must be initializers");
  int64_t dims[8];
  size_t got = 0;
  RETURN_IF_ERROR(shape(value, dims, &got));
  int64_t elements = 1;
  for (size_t i = 0; i < got; ++i) elements *= dims[i];
  if (got != rank || elements != count) return error(message);
  return g_ort->GetTensorMutableData((OrtValue *)value, data);
}

static void ORT_API_CALL destroy(void *op_kernel) {
  Kernel *kernel = (Kernel *)op_kernel;
  if (kernel != NULL) free(kernel->tiles);
  free(kernel);
}

static OrtStatus *ORT_API_CALL create_kernel_v2(const OrtCustomOp *op, const OrtApi *api,
                                                const OrtKernelInfo *info, void **out) {
  (void)op;
  (void)api;
  Kernel *kernel = (Kernel *)calloc(1, sizeof(Kernel));
  if (kernel == NULL) return g_ort->CreateStatus(ORT_FAIL, "Q4OffsetMatMul: out of memory");
  void *packed = NULL, *scales = NULL, *offsets = NULL;
  OrtStatus *status = g_ort->KernelInfoGetAttribute_int64(info, "K", &kernel->k);
  if (status == NULL) status = g_ort->KernelInfoGetAttribute_int64(info, "N", &kernel->n);
  if (status == NULL && (kernel->k <= 0 || kernel->n <= 0))
    status = error("Q4OffsetMatMul: attributes K and N must be positive");
  kernel->blocks = (kernel->k + BLOCK - 1) / BLOCK;
  kernel->groups = (kernel->n + GROUP - 1) / GROUP;
  int64_t cells = kernel->n * kernel->blocks;
  if (status == NULL)
    status = constant(info, 1, 3, cells * (BLOCK / 2), "Q4OffsetMatMul: packed weights must be [N, blocks, 16]",
                      &packed);
  if (status == NULL)
    status = constant(info, 2, 1, cells, "Q4OffsetMatMul: scales must be [N * blocks]", &scales);
  if (status == NULL)
    status = constant(info, 3, 1, cells, "Q4OffsetMatMul: offsets must be [N * blocks]", &offsets);
  if (status == NULL) {
    /* float16 tables only for the vector kernels (they widen them with one instruction) */
    kernel->half = g_groups != groups_c && halves_suffice(cells, (const float *)scales, (const float *)offsets);
    kernel->tile = kernel->half ? TILE16 : TILE32;
    kernel->tiles = (uint8_t *)calloc((size_t)(kernel->groups * kernel->blocks), (size_t)kernel->tile);
    if (kernel->tiles == NULL) status = g_ort->CreateStatus(ORT_FAIL, "Q4OffsetMatMul: out of memory");
  }
  if (status != NULL) {
    destroy(kernel);
    return status;
  }
  repack(kernel, (const uint8_t *)packed, (const float *)scales, (const float *)offsets);
  __atomic_fetch_add(&g_tables[kernel->half], 1, __ATOMIC_RELAXED);
  *out = kernel;
  return NULL;
}

static OrtStatus *ORT_API_CALL compute_v2(void *op_kernel, OrtKernelContext *context) {
  const Kernel *kernel = (const Kernel *)op_kernel;
  const int64_t k = kernel->k, n = kernel->n, blocks = kernel->blocks;
  const OrtValue *a_value = NULL;
  int64_t dims[8];
  size_t rank = 0;
  RETURN_IF_ERROR(g_ort->KernelContext_GetInput(context, 0, &a_value));
  RETURN_IF_ERROR(shape(a_value, dims, &rank));
  if (rank < 1 || dims[rank - 1] != k) return error("Q4OffsetMatMul: A's last dimension is not K");
  int64_t m = 1;
  for (size_t i = 0; i + 1 < rank; ++i) m *= dims[i];
  dims[rank - 1] = n;
  OrtValue *y_value = NULL;
  RETURN_IF_ERROR(g_ort->KernelContext_GetOutput(context, 0, dims, rank, &y_value));
  if (m == 0) return NULL;
  const float *a;
  float *y;
  RETURN_IF_ERROR(g_ort->GetTensorMutableData((OrtValue *)a_value, (void **)&a));
  RETURN_IF_ERROR(g_ort->GetTensorMutableData(y_value, (void **)&y));

  /* one buffer: the int8 activations, then their block scales, sums and centring terms */
  size_t quantised = (size_t)(m * blocks * BLOCK);
  char *scratch = (char *)malloc(quantised + 3 * (size_t)(m * blocks) * sizeof(float) + 64);
  if (scratch == NULL) return g_ort->CreateStatus(ORT_FAIL, "Q4OffsetMatMul: out of memory");
  int8_t *qa = (int8_t *)scratch;
  float *da = (float *)(((uintptr_t)(qa + quantised) + 63) & ~(uintptr_t)63), *sums = da + m * blocks;
  float *centre = sums + m * blocks;
  quantise_rows(a, m, k, blocks, qa, da, sums, centre);

  Work work = {qa, da, sums, centre, kernel, y, m};
  size_t tasks = (size_t)((kernel->groups + GROUPS_PER_TASK - 1) / GROUPS_PER_TASK);
  OrtStatus *status = g_ort->KernelContext_ParallelFor(context, run_task, tasks, 0, &work);
  free(scratch);
  return status;
}

static const char *ORT_API_CALL op_name(const OrtCustomOp *op) {
  (void)op;
  return "Q4OffsetMatMul";
}
static const char *ORT_API_CALL op_provider(const OrtCustomOp *op) {
  (void)op;
  return "CPUExecutionProvider";
}
static ONNXTensorElementDataType ORT_API_CALL input_type(const OrtCustomOp *op, size_t index) {
  (void)op;
  return index == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
static size_t ORT_API_CALL input_count(const OrtCustomOp *op) {
  (void)op;
  return 4;
}
static ONNXTensorElementDataType ORT_API_CALL output_type(const OrtCustomOp *op, size_t index) {
  (void)op;
  (void)index;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
static size_t ORT_API_CALL output_count(const OrtCustomOp *op) {
  (void)op;
  return 1;
}
static OrtCustomOpInputOutputCharacteristic ORT_API_CALL required(const OrtCustomOp *op, size_t index) {
  (void)op;
  (void)index;
  return INPUT_OUTPUT_REQUIRED;
}
static OrtMemType ORT_API_CALL memory_type(const OrtCustomOp *op, size_t index) {
  (void)op;
  (void)index;
  return OrtMemTypeDefault;
}
static int ORT_API_CALL one(const OrtCustomOp *op) {
  (void)op;
  return 1;
}
static int ORT_API_CALL newest(const OrtCustomOp *op) {
  (void)op;
  return 2147483647;
}
static size_t ORT_API_CALL no_pairs(int **input_index, int **output_index) {
  *input_index = NULL;
  *output_index = NULL;
  return 0;
}
static void ORT_API_CALL release_pairs(int *input_index, int *output_index) {
  (void)input_index;
  (void)output_index;
}

static OrtCustomOp g_op;
static OrtCustomOpDomain *g_domain = NULL;

/* Called by onnxruntime's register_custom_ops_library: adds the "tritonform" domain's operator. */
OrtStatus *ORT_API_CALL RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *api_base) {
  g_ort = api_base->GetApi(ORT_API_VERSION);
  if (g_ort == NULL) return NULL; /* an onnxruntime older than these headers: nothing registered */
  if (g_domain == NULL) { /* once a process: every session shares the one domain */
    pick_kernel();
    memset(&g_op, 0, sizeof(g_op));
    g_op.version = ORT_API_VERSION;
    g_op.CreateKernel = NULL; /* the V2 entry points below: they report errors */
    g_op.GetName = op_name;
    g_op.GetExecutionProviderType = op_provider;
    g_op.GetInputType = input_type;
    g_op.GetInputTypeCount = input_count;
    g_op.GetOutputType = output_type;
    g_op.GetOutputTypeCount = output_count;
    g_op.KernelCompute = NULL;
    g_op.KernelDestroy = destroy;
    g_op.GetInputCharacteristic = required;
    g_op.GetOutputCharacteristic = required;
    g_op.GetInputMemoryType = memory_type;
    g_op.GetVariadicInputMinArity = one;
    g_op.GetVariadicInputHomogeneity = one;
    g_op.GetVariadicOutputMinArity = one;
    g_op.GetVariadicOutputHomogeneity = one;
    g_op.CreateKernelV2 = create_kernel_v2;
    g_op.KernelComputeV2 = compute_v2;
    g_op.InferOutputShapeFn = NULL;
    g_op.GetStartVersion = one;
    g_op.GetEndVersion = newest;
    g_op.GetMayInplace = no_pairs;
    g_op.ReleaseMayInplace = release_pairs;
    g_op.GetAliasMap = no_pairs;
    g_op.ReleaseAliasMap = release_pairs;
    RETURN_IF_ERROR(g_ort->CreateCustomOpDomain("tritonform", &g_domain));
    RETURN_IF_ERROR(g_ort->CustomOpDomain_Add(g_domain, &g_op));
  }
  return g_ort->AddCustomOpDomain(options, g_domain);
}
