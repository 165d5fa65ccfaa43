// The CPU kernel of the fused op (semantics in csrc/langneuron.h).
//
// Work split: the neurons are cut into column blocks as wide as the task-local statistic
// buffers [K, block] allow (whole rows when they fit in ~1 MiB); one task processes one column
// block for a chunk of rows, streaming long contiguous row segments (narrow blocks of one page
// per row measured 1.5-2x slower: the prefetcher restarts at every row) and accumulating the
// block's counts/sums in its own buffers. Each (row chunk, column block) is owned by one task,
// so counts need no atomics. Rows are split into chunks only to give every thread an equal
// share of tasks; each chunk then writes per-chunk partials that one final pass over the
// neurons adds into counts/sums (K * I * chunks adds: nothing next to M * I). With a single
// row chunk the task adds straight into counts/sums.
//
// Vectorisation: every inner loop is a plain loop over a row segment with branch-free bodies
// (selects, no calls) that GCC/Clang vectorise at -O3. The hot function is compiled three times
// (x86-64-v4 = AVX-512, x86-64-v3 = AVX2+FMA, baseline) with `target_clones`, and the loader
// picks the best one for the CPU at run time, so one build is both portable and fast.
//
// Numerics: activations in fp32 with torch's formulas (silu = x / (1 + exp(-x)); gelu =
// (x * (1 + erf(x / sqrt 2))) * 0.5 with the erf approximation torch's vectorised CPU kernels use;
// gelu_tanh = 0.5 x (1 + tanh(u)) evaluated as x / (1 + exp(-2u)), the same function without
// tanh's cancellation); exp by range reduction and a degree-5 polynomial (about 1 ulp). IEEE
// semantics are kept (no -ffast-math: it would flush denormals process-wide and drop NaN
// checks), so NaN propagates into h and never counts, and counts are `a > 0` on the same fp32
// value the reference tests, bit for bit.
#include "langneuron.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && \
    !defined(LANGNEURON_NO_CLONES)
#define LN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LN_CLONES
#endif
#define LN_INLINE inline __attribute__((always_inline))

namespace langneuron {
namespace cpu {

LN_INLINE uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
LN_INLINE float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- element types: load to fp32, store from fp32 (round to nearest even, as c10 does) ----

template <DType D> struct Elem;

template <> struct Elem<DType::F32> {
  using T = float;
  static LN_INLINE float load(float x) { return x; }
  static LN_INLINE float store(float f) { return f; }
};

template <> struct Elem<DType::BF16> {
  using T = uint16_t;
  static LN_INLINE float load(uint16_t x) { return float_of(uint32_t(x) << 16); }
  static LN_INLINE uint16_t store(float f) {
    const uint32_t u = bits_of(f);
    const uint32_t rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
    return f != f ? uint16_t(0x7FC0) : uint16_t(rounded);
  }
};

// IEEE half <-> float without F16C, branch-free (the algorithms of c10/util/Half.h).
template <> struct Elem<DType::F16> {
  using T = uint16_t;
  static LN_INLINE float load(uint16_t x) {
    const uint32_t w = uint32_t(x) << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = float_of((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = float_of((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t magnitude = two_w < (1u << 27) ? bits_of(denormalized) : bits_of(normalized);
    return float_of(sign | magnitude);
  }
  static LN_INLINE uint16_t store(float f) {
    float base = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = bits_of(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? 0x71000000u : bias;
    base = float_of((bias >> 1) + 0x07800000u) + base;
    const uint32_t b = bits_of(base);
    const uint32_t nonsign = ((b >> 13) & 0x00007C00u) + (b & 0x00000FFFu);
    return uint16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
  }
};

// ---- activations in fp32 ----

// exp(x) for the activations: Cody-Waite reduction x = n ln2 + r, a degree-5 polynomial for
// e^r (Cephes expf, ~1 ulp) and 2^n through the exponent bits. Only ever used as `1 + exp(.)`
// or `1 - c * exp(.)` next to x itself, which keeps it cheap: inputs are clamped to
// [-87.3, 88] (below, e^x vanishes next to 1 anyway; above, only the overflow to inf for
// x > 88.72 matters, so that silu(-inf) = -inf / inf = NaN as in torch), and a NaN input gives
// a finite value because the caller's x carries the NaN into the result.
LN_INLINE float exp_f32(float x) {
  float xc = x < 88.0f ? x : 88.0f;               // NaN -> 88 (no NaN reaches the int cast)
  xc = xc > -87.3365447504f ? xc : -87.3365447504f;
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const float res = y * float_of(uint32_t(int32_t(n) + 127) << 23);
  return x > 88.72283935546875f ? __builtin_inff() : res;
}

// erf as torch's vectorised CPU kernels compute it (Abramowitz-Stegun 7.1.26, |err| < 1.5e-7).
LN_INLINE float erf_f32(float x) {
  const float ax = __builtin_fabsf(x);
  const float t = 1.0f / (0.3275911f * ax + 1.0f);
  float r = 1.061405429f * t + -1.453152027f;
  r = r * t + 1.421413741f;
  r = r * t + -0.284496736f;
  r = r * t + 0.254829592f;
  const float e = exp_f32(-(x * x));
  const float y = 1.0f - (e * t) * r;
  return x < 0.0f ? -y : y;
}

template <Act A> LN_INLINE float activate(float x);
template <> LN_INLINE float activate<Act::Silu>(float x) { return x / (1.0f + exp_f32(-x)); }
template <> LN_INLINE float activate<Act::Gelu>(float x) {
  // torch's association: x * (1 + erf) first (so 1.8e38 overflows to inf exactly as in torch)
  return (x * (1.0f + erf_f32(x * 0.70710678118654752f))) * 0.5f;
}
template <> LN_INLINE float activate<Act::GeluTanh>(float x) {
  const float u = 0.79788456080286536f * (x + 0.044715f * (x * x * x));
  return x / (1.0f + exp_f32(-2.0f * u));
}
template <> LN_INLINE float activate<Act::Relu>(float x) { return x < 0.0f ? 0.0f : x; }

// ---- one task: a column block for a chunk of rows ----

struct BlockTask {
  const ActStatsParams* p;
  int64_t col0, ncols;   // neurons [col0, col0 + ncols)
  int64_t row0, row1;    // rows [row0, row1)
  int32_t* cnt;          // [K, ncols] local counts, or null
  void* sum_acc;         // [K, ncols] local sums (sums dtype), or null
  void* sq_acc;          // [K, ncols] local sums of squares, or null
  float* act;            // [ncols] scratch: this row's activations
};

template <typename S>
LN_INLINE void add_values(S* __restrict__ acc, const float* __restrict__ a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) acc[j] += S(a[j]);
}

template <typename S>
LN_INLINE void add_squares(S* __restrict__ acc, const float* __restrict__ a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const S v = S(a[j]);
    acc[j] += v * v;
  }
}

// Rows are processed in pieces of kPiece neurons so the activation scratch stays in L1 while
// the task as a whole streams long row segments (what the hardware prefetcher wants).
constexpr int64_t kPiece = 512;

template <DType D, Act A>
LN_INLINE void run_task(const BlockTask& task) {
  using T = typename Elem<D>::T;
  const ActStatsParams& p = *task.p;
  const int64_t n = task.ncols;
  const T* gate = static_cast<const T*>(p.gate) + task.col0;
  const T* up = p.up ? static_cast<const T*>(p.up) + task.col0 : nullptr;
  T* h = static_cast<T*>(p.h) + task.col0;
  float* __restrict__ a = task.act;
  for (int64_t m = task.row0; m < task.row1; ++m) {
    const int32_t lang = p.row_lang ? p.row_lang[m] : 0;
    const int32_t group = p.steer_mode ? (p.row_group ? p.row_group[m] : 0) : -1;
    for (int64_t j0 = 0; j0 < n; j0 += kPiece) {
      const int64_t w = n - j0 < kPiece ? n - j0 : kPiece;
      const T* __restrict__ g = gate + m * p.gate_row_stride + j0;
      for (int64_t j = 0; j < w; ++j) a[j] = activate<A>(Elem<D>::load(g[j]));

      if (lang >= 0) {
        const int64_t offset = lang * n + j0;
        if (task.cnt) {
          int32_t* __restrict__ c = task.cnt + offset;
          for (int64_t j = 0; j < w; ++j) c[j] += a[j] > 0.0f ? 1 : 0;  // NaN > 0 is false
        }
        if (task.sum_acc) {
          if (p.sums_type == AccType::F64)
            add_values(static_cast<double*>(task.sum_acc) + offset, a, w);
          else
            add_values(static_cast<float*>(task.sum_acc) + offset, a, w);
        }
        if (task.sq_acc) {
          if (p.sumsq_type == AccType::F64)
            add_squares(static_cast<double*>(task.sq_acc) + offset, a, w);
          else
            add_squares(static_cast<float*>(task.sq_acc) + offset, a, w);
        }
      }

      if (group >= 0) {  // after counting: statistics always see the unsteered activation
        const int8_t* __restrict__ mode = p.steer_mode + group * p.I + task.col0 + j0;
        const float* __restrict__ value = p.steer_value + group * p.I + task.col0 + j0;
        for (int64_t j = 0; j < w; ++j) {
          const float v = mode[j] == kSteerSet ? value[j] : a[j] + value[j];
          a[j] = mode[j] == kSteerKeep ? a[j] : v;
        }
      }

      T* __restrict__ out = h + m * p.I + j0;
      if (up) {
        const T* __restrict__ u = up + m * p.up_row_stride + j0;
        for (int64_t j = 0; j < w; ++j) out[j] = Elem<D>::store(a[j] * Elem<D>::load(u[j]));
      } else {
        for (int64_t j = 0; j < w; ++j) out[j] = Elem<D>::store(a[j]);
      }
    }
  }
}

template <DType D>
LN_INLINE void run_task_for_dtype(const BlockTask& task) {
  switch (task.p->act) {
    case Act::Silu: run_task<D, Act::Silu>(task); break;
    case Act::Gelu: run_task<D, Act::Gelu>(task); break;
    case Act::GeluTanh: run_task<D, Act::GeluTanh>(task); break;
    case Act::Relu: run_task<D, Act::Relu>(task); break;
  }
}

// The one multi-versioned entry: everything above is inlined into each ISA clone.
LN_CLONES void run_block_task(const BlockTask& task) {
  switch (task.p->dtype) {
    case DType::F32: run_task_for_dtype<DType::F32>(task); break;
    case DType::BF16: run_task_for_dtype<DType::BF16>(task); break;
    case DType::F16: run_task_for_dtype<DType::F16>(task); break;
  }
}

// ---- work split and accumulation ----

size_t acc_bytes(AccType t) { return t == AccType::F64 ? 8 : t == AccType::F32 ? 4 : 0; }

template <typename S>
void add_block(S* dst, int64_t dst_row_stride, const S* src, int64_t K, int64_t n) {
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < n; ++j) dst[k * dst_row_stride + j] += src[k * n + j];
}

void add_acc(AccType t, void* dst, int64_t dst_row_stride, const void* src, int64_t K, int64_t n) {
  if (t == AccType::F64)
    add_block(static_cast<double*>(dst), dst_row_stride, static_cast<const double*>(src), K, n);
  else
    add_block(static_cast<float*>(dst), dst_row_stride, static_cast<const float*>(src), K, n);
}

}  // namespace cpu

void act_stats_cpu_kernel(const ActStatsParams& p) {
  using namespace cpu;
  if (p.M == 0 || p.I == 0) return;
  const int64_t K = (p.counts || p.sums || p.sumsq) ? p.K : 0;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());

  // Column blocks as wide as the task-local buffers allow (whole rows when they fit in
  // ~1 MiB, i.e. L2): long contiguous row segments stream at full bandwidth, while narrow
  // blocks (one page per row) measured 1.5-2x slower here. Then rows are split into chunks,
  // with per-chunk partials, until there is a multiple of the thread count of equal tasks.
  const size_t slot_bytes = 4 + acc_bytes(p.sums_type) * (p.sums != nullptr) +
                            acc_bytes(p.sumsq_type) * (p.sumsq != nullptr);
  const size_t budget = size_t(1) << 20;
  int64_t bw = p.I;
  while (bw > 64 && size_t(K) * size_t(bw) * slot_bytes > budget) bw = (bw + 1) / 2;
  bw = (bw + 15) / 16 * 16;  // whole vectors per block where possible
  bw = std::min(bw, p.I);
  const int64_t col_blocks = (p.I + bw - 1) / bw;

  int64_t row_chunks = 1;
  if (col_blocks % threads != 0) {
    int64_t a = col_blocks, b = threads;  // row_chunks = threads / gcd(col_blocks, threads)
    while (b != 0) {
      const int64_t t = a % b;
      a = b;
      b = t;
    }
    row_chunks = threads / a;
  }
  row_chunks = std::max<int64_t>(1, std::min<int64_t>(row_chunks, p.M / 16));  // >= 16 rows each
  const int64_t rows_per_chunk = (p.M + row_chunks - 1) / row_chunks;
  row_chunks = (p.M + rows_per_chunk - 1) / rows_per_chunk;

  // With several row chunks, each chunk accumulates into its own zeroed partial [K, I].
  const bool partials = row_chunks > 1 && K > 0;
  std::vector<int64_t> part_counts;
  std::vector<double> part_sums, part_sumsq;  // sized in doubles, used as the sums dtype
  auto doubles_for = [&](AccType t) { return size_t(row_chunks * K * p.I) * acc_bytes(t) / 8 + 1; };
  if (partials) {
    if (p.counts) part_counts.assign(size_t(row_chunks * K * p.I), 0);
    if (p.sums) part_sums.assign(doubles_for(p.sums_type), 0.0);
    if (p.sumsq) part_sumsq.assign(doubles_for(p.sumsq_type), 0.0);
  }

  at::parallel_for(0, row_chunks * col_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> cnt(p.counts ? size_t(K * bw) : 0);
    std::vector<double> sum_acc(p.sums ? size_t(K * bw) : 0);  // big enough for either dtype
    std::vector<double> sq_acc(p.sumsq ? size_t(K * bw) : 0);
    std::vector<float> act(static_cast<size_t>(std::min(bw, kPiece)));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t chunk = t / col_blocks, block = t % col_blocks;
      BlockTask task;
      task.p = &p;
      task.col0 = block * bw;
      task.ncols = std::min(bw, p.I - task.col0);
      task.row0 = chunk * rows_per_chunk;
      task.row1 = std::min(p.M, task.row0 + rows_per_chunk);
      const int64_t n = task.ncols;
      std::fill(cnt.begin(), cnt.end(), 0);
      std::fill(sum_acc.begin(), sum_acc.end(), 0.0);
      std::fill(sq_acc.begin(), sq_acc.end(), 0.0);
      task.cnt = (p.counts && K) ? cnt.data() : nullptr;
      task.sum_acc = (p.sums && K) ? static_cast<void*>(sum_acc.data()) : nullptr;
      task.sq_acc = (p.sumsq && K) ? static_cast<void*>(sq_acc.data()) : nullptr;
      task.act = act.data();
      run_block_task(task);

      const int64_t offset = (partials ? chunk * K * p.I : 0) + task.col0;
      if (task.cnt) {
        int64_t* dst = (partials ? part_counts.data() : p.counts) + offset;
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < n; ++j) dst[k * p.I + j] += cnt[size_t(k * n + j)];
      }
      auto acc_dst = [&](std::vector<double>& part, void* global, AccType type) -> void* {
        char* base = partials ? reinterpret_cast<char*>(part.data()) : static_cast<char*>(global);
        return base + size_t(offset) * acc_bytes(type);
      };
      if (task.sum_acc)
        add_acc(p.sums_type, acc_dst(part_sums, p.sums, p.sums_type), p.I, sum_acc.data(), K, n);
      if (task.sq_acc)
        add_acc(p.sumsq_type, acc_dst(part_sumsq, p.sumsq, p.sumsq_type), p.I, sq_acc.data(), K, n);
    }
  });

  if (!partials) return;
  // Add the per-chunk partials, parallel over neurons.
  at::parallel_for(0, p.I, 1024, [&](int64_t begin, int64_t end) {
    const int64_t n = end - begin;
    for (int64_t c = 0; c < row_chunks; ++c) {
      const int64_t offset = c * K * p.I + begin;
      if (p.counts) {
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < n; ++j)
            p.counts[k * p.I + begin + j] += part_counts[size_t(offset + k * p.I + j)];
      }
      auto add_part = [&](const std::vector<double>& part, void* global, AccType type) {
        const char* src =
            reinterpret_cast<const char*>(part.data()) + size_t(offset) * acc_bytes(type);
        char* dst = static_cast<char*>(global) + size_t(begin) * acc_bytes(type);
        for (int64_t k = 0; k < K; ++k) {
          const size_t row = size_t(k * p.I) * acc_bytes(type);
          add_acc(type, dst + row, p.I, src + row, 1, n);
        }
      };
      if (p.sums) add_part(part_sums, p.sums, p.sums_type);
      if (p.sumsq) add_part(part_sumsq, p.sumsq, p.sumsq_type);
    }
  });
}

}  // namespace langneuron
