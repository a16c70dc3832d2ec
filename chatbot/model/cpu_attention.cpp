// Decode attention over a request's key/value cache as stored (BF16, FP16 or FP32): one query position,
// every cached position. See cpu_attention.py for how it is built, chosen and checked.
//
// For each key/value head (split across torch's threads), the query heads that share it are its query
// rows, and the head's keys and values are read once for all of them: scores = q . k for every cached
// position, a softmax in FP32, then the weighted sum of the values. Keys and values are converted to
// FP32 as they are read (BF16: a shift; FP16: F16C's conversion), so the cache is never copied.
// Qwen3's head size (128) with one or two query rows per key/value head has AVX-512 code that keeps the
// query rows and the sums in registers (head128); other shapes, and AVX2, run plain loops that the
// compiler vectorizes for each instruction set (QWEN_ATTENTION_BODY, compiled once per "#pragma GCC
// target" region). The exponential is a polynomial (a few units in FP32's last place) so that it vectorizes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kMaxDim = 512;

struct BF16 {
  uint16_t bits;
};

}  // namespace

#define QWEN_ATTENTION_BODY                                                                                  \
  inline float to_float(float v) { return v; }                                                               \
  inline float to_float(BF16 v) {                                                                            \
    uint32_t bits = uint32_t(v.bits) << 16;                                                                  \
    float f;                                                                                                 \
    std::memcpy(&f, &bits, 4);                                                                               \
    return f;                                                                                                \
  }                                                                                                          \
  inline float to_float(_Float16 v) { return float(v); }                                                     \
                                                                                                             \
  /* e^x for x <= 0 (scores less their maximum): 2^(x log2 e), the fraction's power by a polynomial. */      \
  inline float exp_nonpositive(float x) {                                                                    \
    x = x < -87.0f ? -87.0f : x;                                                                             \
    float t = x * 1.44269504088896341f;                                                                      \
    float n = std::floor(t);                                                                                 \
    float f = t - n;                                                                                         \
    float p = 2.169062098039487e-4f; /* 2^f on [0, 1): fitted for relative error, 4e-9 before rounding */     \
    p = p * f + 1.244309146823719e-3f;                                                                       \
    p = p * f + 9.678469701161070e-3f;                                                                       \
    p = p * f + 5.548352731280073e-2f;                                                                       \
    p = p * f + 2.402297948363116e-1f;                                                                       \
    p = p * f + 6.931469872022394e-1f;                                                                       \
    p = p * f + 1.0f;                                                                                        \
    int32_t bits = (int32_t(n) + 127) << 23;                                                                 \
    float scale;                                                                                             \
    std::memcpy(&scale, &bits, 4);                                                                           \
    return p * scale;                                                                                        \
  }                                                                                                          \
                                                                                                             \
  template <typename T>                                                                                      \
  void head(const float* q, int64_t group, const T* k, int64_t k_step, const T* v, int64_t v_step,          \
            int64_t length, int64_t dim, float scaling, float* scores, float* out) {                        \
    float row[kMaxDim];                                                                                      \
    for (int64_t t = 0; t < length; ++t) {                                                                   \
      const T* key = k + t * k_step;                                                                         \
      for (int64_t d = 0; d < dim; ++d) row[d] = to_float(key[d]);                                           \
      for (int64_t g = 0; g < group; ++g) {                                                                  \
        const float* qg = q + g * dim;                                                                       \
        float s = 0.0f;                                                                                      \
        _Pragma("omp simd reduction(+ : s)") for (int64_t d = 0; d < dim; ++d) s += qg[d] * row[d];          \
        scores[g * length + t] = s * scaling;                                                                \
      }                                                                                                      \
    }                                                                                                        \
    for (int64_t g = 0; g < group; ++g) {                                                                    \
      float* sg = scores + g * length;                                                                       \
      float top = sg[0];                                                                                     \
      for (int64_t t = 1; t < length; ++t) top = sg[t] > top ? sg[t] : top;                                  \
      float total = 0.0f;                                                                                    \
      _Pragma("omp simd reduction(+ : total)") for (int64_t t = 0; t < length; ++t) {                        \
        sg[t] = exp_nonpositive(sg[t] - top);                                                                \
        total += sg[t];                                                                                      \
      }                                                                                                      \
      float inverse = 1.0f / total;                                                                          \
      _Pragma("omp simd") for (int64_t t = 0; t < length; ++t) sg[t] *= inverse;                             \
      float* og = out + g * dim;                                                                             \
      for (int64_t d = 0; d < dim; ++d) og[d] = 0.0f;                                                        \
    }                                                                                                        \
    for (int64_t t = 0; t < length; ++t) {                                                                   \
      const T* value = v + t * v_step;                                                                       \
      for (int64_t d = 0; d < dim; ++d) row[d] = to_float(value[d]);                                         \
      for (int64_t g = 0; g < group; ++g) {                                                                  \
        float w = scores[g * length + t];                                                                    \
        float* og = out + g * dim;                                                                           \
        _Pragma("omp simd") for (int64_t d = 0; d < dim; ++d) og[d] += w * row[d];                           \
      }                                                                                                      \
    }                                                                                                        \
  }

namespace {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,f16c,fma")
namespace avx512 {
QWEN_ATTENTION_BODY
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,f16c,fma")
namespace avx512 {

// 16 keys or values of a row as FP32.
inline __m512 load16(const BF16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
inline __m512 load16(const _Float16* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

// Qwen3's head size (128) with one or two query rows per key/value head: the query rows and the output
// sums stay in registers for the whole cache.
template <int G, typename T>
void head128(const float* q, const T* k, int64_t k_step, const T* v, int64_t v_step, int64_t length, float scaling,
             float* scores, float* out) {
  constexpr int C = 8;  // 128 / 16
  __m512 qv[G][C];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c) qv[g][c] = _mm512_loadu_ps(q + g * 128 + c * 16);
  for (int64_t t = 0; t < length; ++t) {
    const T* key = k + t * k_step;
    __m512 acc[G];
    for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_ps();
    for (int c = 0; c < C; ++c) {
      __m512 x = load16(key + c * 16);
      for (int g = 0; g < G; ++g) acc[g] = _mm512_fmadd_ps(qv[g][c], x, acc[g]);
    }
    for (int g = 0; g < G; ++g) scores[g * length + t] = _mm512_reduce_add_ps(acc[g]) * scaling;
  }
  for (int g = 0; g < G; ++g) {
    float* sg = scores + g * length;
    float top = sg[0];
    for (int64_t t = 1; t < length; ++t) top = sg[t] > top ? sg[t] : top;
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int64_t t = 0; t < length; ++t) {
      sg[t] = exp_nonpositive(sg[t] - top);
      total += sg[t];
    }
    float inverse = 1.0f / total;
#pragma omp simd
    for (int64_t t = 0; t < length; ++t) sg[t] *= inverse;
  }
  __m512 sum[G][C];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c) sum[g][c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < length; ++t) {
    const T* value = v + t * v_step;
    __m512 w[G];
    for (int g = 0; g < G; ++g) w[g] = _mm512_set1_ps(scores[g * length + t]);
    for (int c = 0; c < C; ++c) {
      __m512 x = load16(value + c * 16);
      for (int g = 0; g < G; ++g) sum[g][c] = _mm512_fmadd_ps(w[g], x, sum[g][c]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + g * 128 + c * 16, sum[g][c]);
}

}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,f16c,fma")
namespace avx2 {
QWEN_ATTENTION_BODY
}  // namespace avx2
#pragma GCC pop_options

constexpr int64_t kAvx512 = 2;
constexpr int64_t kAvx2 = 1;

int64_t supported_isas() {
  __builtin_cpu_init();
  int64_t mask = 0;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    mask |= kAvx2;
  }
  if ((mask & kAvx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    mask |= kAvx512;
  }
  return mask;
}

template <typename T>
void run(const float* q, int64_t heads, const at::Tensor& k, const at::Tensor& v, double scaling, int64_t isa,
         float* out) {
  const int64_t kv_heads = k.size(0), length = k.size(1), dim = k.size(2);
  const int64_t group = heads / kv_heads;
  const T* kp = reinterpret_cast<const T*>(k.data_ptr());
  const T* vp = reinterpret_cast<const T*>(v.data_ptr());
  at::parallel_for(0, kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(group * length);
    for (int64_t h = begin; h < end; ++h) {
      const float* qh = q + h * group * dim;
      const T* kh = kp + h * k.stride(0);
      const T* vh = vp + h * v.stride(0);
      float* oh = out + h * group * dim;
      if (isa == kAvx512 && dim == 128 && group <= 2) {
        if (group == 1) {
          avx512::head128<1, T>(qh, kh, k.stride(1), vh, v.stride(1), length, float(scaling), scores.data(), oh);
        } else {
          avx512::head128<2, T>(qh, kh, k.stride(1), vh, v.stride(1), length, float(scaling), scores.data(), oh);
        }
      } else if (isa == kAvx512) {
        avx512::head<T>(qh, group, kh, k.stride(1), vh, v.stride(1), length, dim, float(scaling), scores.data(),
                        oh);
      } else {
        avx2::head<T>(qh, group, kh, k.stride(1), vh, v.stride(1), length, dim, float(scaling), scores.data(), oh);
      }
    }
  });
}

// q [heads, dim] FP32; k, v [kv_heads, length, dim] (rows contiguous) in one dtype -> [heads, dim] FP32.
at::Tensor decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scaling, int64_t isa) {
  TORCH_CHECK(q.dim() == 2 && k.dim() == 3 && v.dim() == 3, "decode attention: q [heads, dim], k/v [kv, len, dim]");
  TORCH_CHECK(k.sizes() == v.sizes() && k.scalar_type() == v.scalar_type(), "decode attention: k and v differ");
  TORCH_CHECK(k.stride(2) == 1 && v.stride(2) == 1, "decode attention: cache rows must be contiguous");
  TORCH_CHECK(k.size(1) > 0, "decode attention: an empty cache");
  const int64_t heads = q.size(0), dim = q.size(1);
  TORCH_CHECK(k.size(2) == dim && dim <= kMaxDim, "decode attention: head size ", dim);
  TORCH_CHECK(heads % k.size(0) == 0, "decode attention: ", heads, " query heads over ", k.size(0), " kv heads");
  TORCH_CHECK(isa == kAvx512 || isa == kAvx2, "decode attention: unknown instruction set ", isa);
  TORCH_CHECK((supported_isas() & isa) == isa, "decode attention: this CPU lacks the instruction set asked for");
  at::Tensor query = q.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({heads, dim}, q.options().dtype(at::kFloat));
  switch (k.scalar_type()) {
    case at::kBFloat16:
      run<BF16>(query.data_ptr<float>(), heads, k, v, scaling, isa, out.data_ptr<float>());
      break;
    case at::kHalf:
      run<_Float16>(query.data_ptr<float>(), heads, k, v, scaling, isa, out.data_ptr<float>());
      break;
    case at::kFloat:
      run<float>(query.data_ptr<float>(), heads, k, v, scaling, isa, out.data_ptr<float>());
      break;
    default:
      TORCH_CHECK(false, "decode attention: a ", k.scalar_type(), " cache");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(qwen_attention, m) {
  m.def("decode(Tensor q, Tensor k, Tensor v, float scaling, int isa) -> Tensor");
  m.def("supported_isas() -> int", &supported_isas);
}

TORCH_LIBRARY_IMPL(qwen_attention, CPU, m) { m.impl("decode", decode); }
