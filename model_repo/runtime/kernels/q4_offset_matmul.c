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

   How: each row of A is quantised once per call to int8 by blocks of 32 (scale = max|a| / 127, the
   same activation rounding as onnxruntime's MatMulNBits at accuracy_level 4 and llama.cpp's Q8 dot
   products), with its even and odd elements apart so they line up with the low and high nibbles; each
   block's exact float sum of A carries the offset term, so the activations' rounding only meets the
   centred weights (q - 8) * scale: half the error of rounding against q * scale. The dot products run on AVX-512 VNNI or AVX2
   when the CPU has them (chosen once, at load), otherwise on plain C; onnxruntime's intra-op thread pool
   splits the output columns. */

#include <math.h>
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
#define HALF 16
#define COLUMNS_PER_TASK 16

static const OrtApi *g_ort = NULL;

typedef struct {
  int64_t k, n;
} Kernel;

typedef struct {
  const int8_t *qa_even, *qa_odd; /* [M, blocks * 16] */
  const float *da, *sums, *centre; /* [M, blocks]: int8 scale, exact sum, -8 * da * sum of int8 */
  const uint8_t *packed;          /* [N, blocks, 16] */
  const float *scales, *offsets;  /* [N, blocks] */
  float *y;                       /* [M, N] */
  int64_t m, n, blocks;
} Work;

typedef void (*ColumnsFn)(const Work *, int64_t, int64_t);

/* ---- activations: int8 by blocks, even and odd elements apart, exact block sums ------------------ */
static void quantise_rows(const float *a, int64_t m, int64_t k, int64_t blocks, int8_t *qe, int8_t *qo,
                          float *da, float *sums, float *centre) {
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
      int8_t *e = qe + (r * blocks + b) * HALF, *o = qo + (r * blocks + b) * HALF;
      int32_t isum = 0;
      for (int j = 0; j < HALF; ++j) {
        e[j] = (int8_t)lrintf(v[2 * j] * inv);
        o[j] = (int8_t)lrintf(v[2 * j + 1] * inv);
        isum += e[j] + o[j];
      }
      da[r * blocks + b] = d;
      sums[r * blocks + b] = sum;
      centre[r * blocks + b] = -8.f * d * (float)isum;
    }
  }
}

/* ---- dot products: plain C --------------------------------------------------------------------- */
static void columns_c(const Work *w, int64_t n0, int64_t n1) {
  const int64_t nb = w->blocks;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t *wq = w->packed + n * nb * HALF;
    const float *sc = w->scales + n * nb, *of = w->offsets + n * nb;
    for (int64_t r = 0; r < w->m; ++r) {
      const int8_t *e = w->qa_even + r * nb * HALF, *o = w->qa_odd + r * nb * HALF;
      const float *da = w->da + r * nb, *s = w->sums + r * nb, *c = w->centre + r * nb;
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        int32_t dot = 0;
        for (int j = 0; j < HALF; ++j) {
          uint8_t byte = wq[b * HALF + j];
          dot += (int32_t)(byte & 0x0F) * e[b * HALF + j] + (int32_t)(byte >> 4) * o[b * HALF + j];
        }
        acc += (float)dot * sc[b] * da[b] + of[b] * s[b] + sc[b] * c[b];
      }
      w->y[r * w->n + n] = acc;
    }
  }
}

#if TF_X86
/* ---- AVX-512 VNNI: four blocks an instruction ---------------------------------------------------- */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void columns_avx512(const Work *w,
                                                                                             int64_t n0,
                                                                                             int64_t n1) {
  const int64_t nb = w->blocks;
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t *wq = w->packed + n * nb * HALF;
    const float *sc = w->scales + n * nb, *of = w->offsets + n * nb;
    for (int64_t r = 0; r < w->m; ++r) {
      const int8_t *e = w->qa_even + r * nb * HALF, *o = w->qa_odd + r * nb * HALF;
      const float *da = w->da + r * nb, *s = w->sums + r * nb, *c = w->centre + r * nb;
      __m512 acc = _mm512_setzero_ps();
      for (int64_t b = 0; b < nb; b += 4) {
        int64_t left = nb - b < 4 ? nb - b : 4;
        __mmask64 bytes = left == 4 ? ~(__mmask64)0 : (((__mmask64)1 << (left * HALF)) - 1);
        __mmask8 four = (__mmask8)((1u << left) - 1);
        __m512i packed = _mm512_maskz_loadu_epi8(bytes, wq + b * HALF);
        __m512i low = _mm512_and_si512(packed, nibble);
        __m512i high = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
        __m512i ae = _mm512_maskz_loadu_epi8(bytes, e + b * HALF);
        __m512i ao = _mm512_maskz_loadu_epi8(bytes, o + b * HALF);
        __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), low, ae);
        dot = _mm512_dpbusd_epi32(dot, high, ao);
        __m128 f = _mm_mul_ps(_mm_maskz_loadu_ps(four, sc + b), _mm_maskz_loadu_ps(four, da + b));
        __m512 fs = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(f));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), fs, acc);
      }
      for (int64_t b = 0; b < nb; b += 16) {
        int64_t left = nb - b < 16 ? nb - b : 16;
        __mmask16 lanes = (__mmask16)((1u << left) - 1);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes, of + b), _mm512_maskz_loadu_ps(lanes, s + b), acc);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes, sc + b), _mm512_maskz_loadu_ps(lanes, c + b), acc);
      }
      w->y[r * w->n + n] = _mm512_reduce_add_ps(acc);
    }
  }
}

/* ---- AVX2: two blocks an iteration (maddubs: u8 x s8 pairs to int16, then madd to int32) -------- */
__attribute__((target("avx2,fma"))) static void columns_avx2(const Work *w, int64_t n0, int64_t n1) {
  const int64_t nb = w->blocks;
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t *wq = w->packed + n * nb * HALF;
    const float *sc = w->scales + n * nb, *of = w->offsets + n * nb;
    for (int64_t r = 0; r < w->m; ++r) {
      const int8_t *e = w->qa_even + r * nb * HALF, *o = w->qa_odd + r * nb * HALF;
      const float *da = w->da + r * nb, *s = w->sums + r * nb, *c = w->centre + r * nb;
      __m256 acc = _mm256_setzero_ps();
      int64_t b = 0;
      for (; b + 2 <= nb; b += 2) {
        __m256i packed = _mm256_loadu_si256((const __m256i *)(wq + b * HALF));
        __m256i low = _mm256_and_si256(packed, nibble);
        __m256i high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
        __m256i ae = _mm256_loadu_si256((const __m256i *)(e + b * HALF));
        __m256i ao = _mm256_loadu_si256((const __m256i *)(o + b * HALF));
        __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(low, ae), _mm256_maddubs_epi16(high, ao));
        __m256i dot = _mm256_madd_epi16(p, ones); /* lanes 0-3: block b, 4-7: block b + 1 */
        __m256 fs = _mm256_setr_ps(sc[b] * da[b], sc[b] * da[b], sc[b] * da[b], sc[b] * da[b],
                                   sc[b + 1] * da[b + 1], sc[b + 1] * da[b + 1], sc[b + 1] * da[b + 1],
                                   sc[b + 1] * da[b + 1]);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), fs, acc);
      }
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      float total = _mm_cvtss_f32(h);
      for (; b < nb; ++b) { /* an odd last block */
        int32_t dot = 0;
        for (int j = 0; j < HALF; ++j) {
          uint8_t byte = wq[b * HALF + j];
          dot += (int32_t)(byte & 0x0F) * e[b * HALF + j] + (int32_t)(byte >> 4) * o[b * HALF + j];
        }
        total += (float)dot * sc[b] * da[b];
      }
      for (int64_t i = 0; i < nb; ++i) total += of[i] * s[i] + sc[i] * c[i];
      w->y[r * w->n + n] = total;
    }
  }
}
#endif

static ColumnsFn g_columns = columns_c;
static const char *g_kernel_name = "c";

static void pick_kernel(void) {
  const char *force = getenv("TRITONFORM_Q4_KERNEL"); /* tests: "c", "avx2" or "avx512" */
#if TF_X86
  __builtin_cpu_init();
  int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (force && strcmp(force, "c") == 0) avx512 = avx2 = 0;
  if (force && strcmp(force, "avx2") == 0) avx512 = 0;
  if (avx512) {
    g_columns = columns_avx512;
    g_kernel_name = "avx512vnni";
  } else if (avx2) {
    g_columns = columns_avx2;
    g_kernel_name = "avx2";
  }
#else
  (void)force;
#endif
}

/* The kernel the library runs on this CPU: "avx512vnni", "avx2" or "c" (for the engine's report). */
const char *tritonform_q4_kernel(void) {
  pick_kernel();
  return g_kernel_name;
}

static void run_task(void *data, size_t task) {
  const Work *w = (const Work *)data;
  int64_t n0 = (int64_t)task * COLUMNS_PER_TASK;
  int64_t n1 = n0 + COLUMNS_PER_TASK < w->n ? n0 + COLUMNS_PER_TASK : w->n;
  g_columns(w, n0, n1);
}

/* ---- onnxruntime glue ------------------------------------------------------------------------- */
#define RETURN_IF_ERROR(expr)          \
  do {                                 \
    OrtStatus *status_ = (expr);       \
    if (status_ != NULL) return status_; \
  } while (0)

static OrtStatus *error(const char *message) { return g_ort->CreateStatus(ORT_INVALID_ARGUMENT, message); }

static OrtStatus *ORT_API_CALL create_kernel_v2(const OrtCustomOp *op, const OrtApi *api,
                                                const OrtKernelInfo *info, void **out) {
  (void)op;
  (void)api;
  Kernel *kernel = (Kernel *)calloc(1, sizeof(Kernel));
  if (kernel == NULL) return g_ort->CreateStatus(ORT_FAIL, "Q4OffsetMatMul: out of memory");
  OrtStatus *status = g_ort->KernelInfoGetAttribute_int64(info, "K", &kernel->k);
  if (status == NULL) status = g_ort->KernelInfoGetAttribute_int64(info, "N", &kernel->n);
  if (status == NULL && (kernel->k <= 0 || kernel->n <= 0))
    status = error("Q4OffsetMatMul: attributes K and N must be positive");
  if (status != NULL) {
    free(kernel);
    return status;
  }
  *out = kernel;
  return NULL;
}

static OrtStatus *input(OrtKernelContext *context, size_t index, const OrtValue **value, int64_t *dims,
                        size_t *rank, size_t max_rank) {
  RETURN_IF_ERROR(g_ort->KernelContext_GetInput(context, index, value));
  OrtTensorTypeAndShapeInfo *info = NULL;
  RETURN_IF_ERROR(g_ort->GetTensorTypeAndShape(*value, &info));
  OrtStatus *status = g_ort->GetDimensionsCount(info, rank);
  if (status == NULL && *rank > max_rank) status = error("Q4OffsetMatMul: input has too many dimensions");
  if (status == NULL) status = g_ort->GetDimensions(info, dims, *rank);
  g_ort->ReleaseTensorTypeAndShapeInfo(info);
  return status;
}

static OrtStatus *ORT_API_CALL compute_v2(void *op_kernel, OrtKernelContext *context) {
  const Kernel *kernel = (const Kernel *)op_kernel;
  const int64_t k = kernel->k, n = kernel->n, blocks = (k + BLOCK - 1) / BLOCK;
  const OrtValue *a_value, *packed_value, *scales_value, *offsets_value;
  int64_t dims[8], other[8];
  size_t rank = 0, other_rank = 0;
  RETURN_IF_ERROR(input(context, 0, &a_value, dims, &rank, 8));
  if (rank < 1 || dims[rank - 1] != k) return error("Q4OffsetMatMul: A's last dimension is not K");
  RETURN_IF_ERROR(input(context, 1, &packed_value, other, &other_rank, 8));
  if (other_rank != 3 || other[0] != n || other[1] != blocks || other[2] != HALF)
    return error("Q4OffsetMatMul: packed weights must be [N, ceil(K / 32), 16]");
  RETURN_IF_ERROR(input(context, 2, &scales_value, other, &other_rank, 8));
  if (other_rank != 1 || other[0] != n * blocks) return error("Q4OffsetMatMul: scales must be [N * blocks]");
  RETURN_IF_ERROR(input(context, 3, &offsets_value, other, &other_rank, 8));
  if (other_rank != 1 || other[0] != n * blocks) return error("Q4OffsetMatMul: offsets must be [N * blocks]");

  int64_t m = 1;
  for (size_t i = 0; i + 1 < rank; ++i) m *= dims[i];
  dims[rank - 1] = n;
  OrtValue *y_value = NULL;
  RETURN_IF_ERROR(g_ort->KernelContext_GetOutput(context, 0, dims, rank, &y_value));
  if (m == 0) return NULL;

  const float *a, *scales, *offsets;
  const uint8_t *packed;
  float *y;
  RETURN_IF_ERROR(g_ort->GetTensorMutableData((OrtValue *)a_value, (void **)&a));
  RETURN_IF_ERROR(g_ort->GetTensorMutableData((OrtValue *)packed_value, (void **)&packed));
  RETURN_IF_ERROR(g_ort->GetTensorMutableData((OrtValue *)scales_value, (void **)&scales));
  RETURN_IF_ERROR(g_ort->GetTensorMutableData((OrtValue *)offsets_value, (void **)&offsets));
  RETURN_IF_ERROR(g_ort->GetTensorMutableData(y_value, (void **)&y));

  /* one buffer: int8 even and odd halves, then the float block scales, sums and centring terms */
  size_t quantised = (size_t)(m * blocks * HALF);
  size_t bytes = 2 * quantised + 3 * (size_t)(m * blocks) * sizeof(float) + 64;
  char *scratch = (char *)malloc(bytes);
  if (scratch == NULL) return g_ort->CreateStatus(ORT_FAIL, "Q4OffsetMatMul: out of memory");
  int8_t *qe = (int8_t *)scratch, *qo = qe + quantised;
  float *da = (float *)(((uintptr_t)(qo + quantised) + 63) & ~(uintptr_t)63), *sums = da + m * blocks;
  float *centre = sums + m * blocks;
  quantise_rows(a, m, k, blocks, qe, qo, da, sums, centre);

  Work work = {qe, qo, da, sums, centre, packed, scales, offsets, y, m, n, blocks};
  size_t tasks = (size_t)((n + COLUMNS_PER_TASK - 1) / COLUMNS_PER_TASK);
  OrtStatus *status = g_ort->KernelContext_ParallelFor(context, run_task, tasks, 0, &work);
  free(scratch);
  return status;
}

static void *ORT_API_CALL create_kernel(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info) {
  void *kernel = NULL;
  OrtStatus *status = create_kernel_v2(op, api, info, &kernel);
  if (status != NULL) g_ort->ReleaseStatus(status);
  return kernel;
}
static void ORT_API_CALL compute(void *op_kernel, OrtKernelContext *context) {
  OrtStatus *status = compute_v2(op_kernel, context);
  if (status != NULL) g_ort->ReleaseStatus(status);
}
static void ORT_API_CALL destroy(void *op_kernel) { free(op_kernel); }
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
    g_op.CreateKernel = create_kernel;
    g_op.GetName = op_name;
    g_op.GetExecutionProviderType = op_provider;
    g_op.GetInputType = input_type;
    g_op.GetInputTypeCount = input_count;
    g_op.GetOutputType = output_type;
    g_op.GetOutputTypeCount = output_count;
    g_op.KernelCompute = compute;
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
