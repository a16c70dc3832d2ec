// Int8 matrix-vector products for the CPU INT8 mode, as llama.cpp's Q8_0 computes them.
//
// The activations are quantized per block of 32 to int8 (one FP32 scale per block), multiplied by the
// int8 weight rows with integer dot products, each block's sum converted to FP32 and scaled by its
// activation scale, and the row's total scaled by the weight row's own scale (cpu_int8's per-row
// quantization). Built at first use by cpu_int8_dot.py; see there for the dispatch and the fallback.
//
// Instruction sets (one library, each path compiled for its own target and chosen at run time):
//   AVX512-VNNI: 64 weights per step, vpdpbusd on (weight XOR 0x80) as unsigned bytes, its accumulator
//                started at -128 * (sum of the four activations) so the sum is exact;
//   AVX-VNNI:    the same with 32 weights per step (VEX-encoded vpdpbusd);
//   AVX2:        vpsignb moves the activation's sign onto the weight, vpmaddubsw |x| * w (no overflow:
//                |x|, |w| <= 127), vpmaddwd sums pairs to int32.
// Each (weight row, activation row) pair is summed in the same order whatever the number of rows, so
// a row's result does not depend on the batch it came in.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;
constexpr int64_t kLane = 4;  // bytes summed into one int32 lane by a dot-product instruction

enum Isa : int64_t { kAvx2 = 1, kAvxVnni = 2, kAvx512Vnni = 4 };

// The activation rows, quantized: int8 values, |values| (AVX2), and per 4-byte lane the block's scale
// and -128 * the lane's sum (the VNNI paths' accumulator start). Padded with zeros to whole 64-byte steps.
struct Activations {
  int64_t rows = 0, padded = 0;
  std::vector<int8_t> q;
  std::vector<uint8_t> magnitude;
  std::vector<float> lane_scale;
  std::vector<int32_t> lane_bias;

  const int8_t* q_row(int64_t m) const { return q.data() + m * padded; }
  const uint8_t* magnitude_row(int64_t m) const { return magnitude.data() + m * padded; }
  const float* scale_row(int64_t m) const { return lane_scale.data() + m * (padded / kLane); }
  const int32_t* bias_row(int64_t m) const { return lane_bias.data() + m * (padded / kLane); }
};

// One block of 32 activations: the step max|x| / 127, x / step rounded to even (the MXCSR default) as int8,
// |int8|, and per 4-byte lane the step and -128 * the lane's sum. Every path needs AVX2, so this is AVX2 code.
__attribute__((target("avx2,fma"))) void quantize_block(const float* x, int8_t* q, uint8_t* magnitude,
                                                        float* lane_scale, int32_t* lane_bias) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 v[4], largest = _mm256_setzero_ps();
  for (int j = 0; j < 4; ++j) {
    v[j] = _mm256_loadu_ps(x + 8 * j);
    largest = _mm256_max_ps(largest, _mm256_andnot_ps(sign, v[j]));
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(largest), _mm256_extractf128_ps(largest, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  const float scale = _mm_cvtss_f32(m) / 127.0f;
  const __m256 inverse = _mm256_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
  __m256i i[4];
  for (int j = 0; j < 4; ++j) i[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inverse));
  // Packing works within 128-bit halves; the permutation puts the 32 bytes back in order.
  const __m256i packed = _mm256_permutevar8x32_epi32(
      _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3])),
      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), packed);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(magnitude), _mm256_abs_epi8(packed));
  const __m256i lane_sums =
      _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), packed), _mm256_set1_epi16(1));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(lane_bias), _mm256_mullo_epi32(lane_sums, _mm256_set1_epi32(-128)));
  _mm256_storeu_ps(lane_scale, _mm256_set1_ps(scale));
}

Activations quantize(const float* x, int64_t rows, int64_t k) {
  Activations a;
  a.rows = rows;
  a.padded = (k + 63) / 64 * 64;
  a.q.assign(rows * a.padded, 0);
  a.magnitude.assign(rows * a.padded, 0);
  a.lane_scale.assign(rows * a.padded / kLane, 0.0f);
  a.lane_bias.assign(rows * a.padded / kLane, 0);
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t start = 0; start < k; start += kBlock)
      quantize_block(x + m * k + start, a.q.data() + m * a.padded + start, a.magnitude.data() + m * a.padded + start,
                     a.lane_scale.data() + (m * a.padded + start) / kLane,
                     a.lane_bias.data() + (m * a.padded + start) / kLane);
  return a;
}

// ---- AVX512-VNNI: R weight rows x MT activation rows per tile, 64 bytes per step ----------------------------

template <int R, int MT>
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni"))) void tile_avx512vnni(
    const int8_t* w, int64_t ldw, int64_t k, const Activations& a, int64_t m0, float* acc_out) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512 acc[R][MT];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 64) {
    // A final half step (k % 64 == 32) reads 32 weights; the activations' padding is zero.
    const __mmask64 keep = (k - i >= 64) ? ~__mmask64(0) : (__mmask64(1) << (k - i)) - 1;
    __m512i wu[R];
    for (int r = 0; r < R; ++r) wu[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(keep, w + r * ldw + i), flip);
    for (int m = 0; m < MT; ++m) {
      const __m512i xq = _mm512_loadu_si512(a.q_row(m0 + m) + i);
      const __m512i bias = _mm512_loadu_si512(a.bias_row(m0 + m) + i / kLane);
      const __m512 scale = _mm512_loadu_ps(a.scale_row(m0 + m) + i / kLane);
      for (int r = 0; r < R; ++r) {
        const __m512i dot = _mm512_dpbusd_epi32(bias, wu[r], xq);
        acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r][m]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m) acc_out[r * MT + m] = _mm512_reduce_add_ps(acc[r][m]);
}

// ---- AVX-VNNI and AVX2: 32 bytes (one block) per step --------------------------------------------------------

__attribute__((target("avx2,fma"))) inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R, int MT>
__attribute__((target("avx2,fma,avxvnni"))) void tile_avxvnni(const int8_t* w, int64_t ldw, int64_t k,
                                                              const Activations& a, int64_t m0, float* acc_out) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256 acc[R][MT];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m) acc[r][m] = _mm256_setzero_ps();
  for (int64_t i = 0; i < k; i += kBlock) {
    __m256i wu[R];
    for (int r = 0; r < R; ++r)
      wu[r] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * ldw + i)), flip);
    for (int m = 0; m < MT; ++m) {
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q_row(m0 + m) + i));
      const __m256i bias = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bias_row(m0 + m) + i / kLane));
      const __m256 scale = _mm256_loadu_ps(a.scale_row(m0 + m) + i / kLane);
      for (int r = 0; r < R; ++r) {
        const __m256i dot = _mm256_dpbusd_avx_epi32(bias, wu[r], xq);
        acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r][m]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m) acc_out[r * MT + m] = sum8(acc[r][m]);
}

template <int R, int MT>
__attribute__((target("avx2,fma"))) void tile_avx2(const int8_t* w, int64_t ldw, int64_t k, const Activations& a,
                                                   int64_t m0, float* acc_out) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R][MT];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m) acc[r][m] = _mm256_setzero_ps();
  for (int64_t i = 0; i < k; i += kBlock) {
    __m256i wq[R];
    for (int r = 0; r < R; ++r) wq[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * ldw + i));
    for (int m = 0; m < MT; ++m) {
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q_row(m0 + m) + i));
      const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.magnitude_row(m0 + m) + i));
      const __m256 scale = _mm256_loadu_ps(a.scale_row(m0 + m) + i / kLane);
      for (int r = 0; r < R; ++r) {
        const __m256i pairs = _mm256_maddubs_epi16(xa, _mm256_sign_epi8(wq[r], xq));
        const __m256i dot = _mm256_madd_epi16(pairs, ones);
        acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r][m]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m) acc_out[r * MT + m] = sum8(acc[r][m]);
}

// ---- tiling and threads ----------------------------------------------------------------------------------------

using TileFn = void (*)(const int8_t*, int64_t, int64_t, const Activations&, int64_t, float*);

template <int R, int MT>
TileFn pick(int64_t isa) {
  switch (isa) {
    case kAvx512Vnni:
      return tile_avx512vnni<R, MT>;
    case kAvxVnni:
      return tile_avxvnni<R, MT>;
    default:
      return tile_avx2<R, MT>;
  }
}

template <int R>
TileFn pick_rows(int64_t isa, int64_t mt) {
  switch (mt) {
    case 1:
      return pick<R, 1>(isa);
    case 2:
      return pick<R, 2>(isa);
    case 3:
      return pick<R, 3>(isa);
    default:
      return pick<R, 4>(isa);
  }
}

TileFn pick_tile(int64_t isa, int64_t r, int64_t mt) {
  if (r == 4) return pick<4, 1>(isa);  // one activation row: four weight rows at a time
  if (r == 2) return pick_rows<2>(isa, mt);
  return pick_rows<1>(isa, mt);
}

int64_t detect_isas() {
  __builtin_cpu_init();
  int64_t isas = 0;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isas |= kAvx2;
  if ((isas & kAvx2) && __builtin_cpu_supports("avxvnni")) isas |= kAvxVnni;
  // The activations are quantized with AVX2 code on every path.
  if ((isas & kAvx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni"))
    isas |= kAvx512Vnni;
  return isas;
}

int64_t supported_isas() {
  static const int64_t isas = detect_isas();
  return isas;
}

at::Tensor matvec(const at::Tensor& x_in, const at::Tensor& q, const at::Tensor& scale_in, int64_t isa) {
  TORCH_CHECK(x_in.dim() == 2 && q.dim() == 2 && x_in.size(1) == q.size(1), "int8 matvec: x [M, K], q [N, K]");
  TORCH_CHECK(q.scalar_type() == at::kChar && q.stride(1) == 1, "int8 matvec: q must be int8 with unit column stride");
  TORCH_CHECK(isa == kAvx2 || isa == kAvxVnni || isa == kAvx512Vnni, "int8 matvec: unknown instruction set ", isa);
  TORCH_CHECK((supported_isas() & isa) == isa, "int8 matvec: this CPU lacks instruction set ", isa);
  const int64_t rows = x_in.size(0), k = x_in.size(1), n = q.size(0);
  TORCH_CHECK(k % kBlock == 0, "int8 matvec: K must be a multiple of 32, not ", k);
  TORCH_CHECK(scale_in.numel() == n, "int8 matvec: one scale per weight row");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const at::Tensor scale = scale_in.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({rows, n}, x.options());
  if (rows == 0 || n == 0) return out;
  const Activations a = quantize(x.data_ptr<float>(), rows, k);
  const int8_t* w = q.data_ptr<int8_t>();
  const int64_t ldw = q.stride(0);
  const float* s = scale.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const int64_t tile_rows = rows == 1 ? 4 : 2;
  const int64_t tiles = (n + tile_rows - 1) / tile_rows;
  // About 64 KiB of weights per task at least: smaller layers are not worth waking a second thread for.
  const int64_t grain = std::max<int64_t>(1, 65536 / (tile_rows * k));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    float sums[4 * 4];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = t * tile_rows;
      const int64_t r = std::min(tile_rows, n - n0);
      for (int64_t m0 = 0; m0 < rows; m0 += 4) {
        const int64_t mt = std::min<int64_t>(4, rows - m0);
        if (r == tile_rows) {
          pick_tile(isa, r, mt)(w + n0 * ldw, ldw, k, a, m0, sums);
        } else {  // the last rows of a layer whose size is not a multiple of the tile
          for (int64_t j = 0; j < r; ++j) pick_tile(isa, 1, mt)(w + (n0 + j) * ldw, ldw, k, a, m0, sums + j * mt);
        }
        for (int64_t j = 0; j < r; ++j)
          for (int64_t m = 0; m < mt; ++m) y[(m0 + m) * n + n0 + j] = sums[j * mt + m] * s[n0 + j];
      }
    }
  });
  return out;
}

}  // namespace

// How many of torch's threads took part in a parallel_for over 64 items: torch's thread count when the
// library runs its loops in parallel, 1 if it was built without OpenMP (the loops then run on one thread).
int64_t team_size() {
  std::atomic<int64_t> widest{0};
  at::parallel_for(0, 64, 1, [&](int64_t, int64_t) {
    const int64_t mine = at::get_thread_num() + 1;
    int64_t seen = widest.load();
    while (mine > seen && !widest.compare_exchange_weak(seen, mine)) {
    }
  });
  return widest.load();
}

TORCH_LIBRARY(qwen_int8, m) {
  m.def("matvec(Tensor x, Tensor q, Tensor scale, int isa) -> Tensor");
  m.def("supported_isas() -> int", &supported_isas);
  m.def("team_size() -> int", &team_size);
}

TORCH_LIBRARY_IMPL(qwen_int8, CPU, m) { m.impl("matvec", matvec); }
