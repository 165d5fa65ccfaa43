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
// Numerics: the activation is torch's own CPU kernel applied to fp32 tiles (see
// torch_activation_inplace), so `a` equals the unpatched model's activation bit for bit; the
// statistics, steering and h are computed here on that fp32 value. IEEE semantics are kept (no
// -ffast-math: it would flush denormals process-wide and drop NaN checks), so NaN propagates
// into h and never counts, and counts are `a > 0` on the same fp32 value the reference tests.
// Histograms bin by exponent bits (HistTable), amax keeps a task-local maximum per language.
#include "langneuron.h"

#include <ATen/Parallel.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/gelu_cpu_dispatch.h>
#include <ATen/ops/relu_cpu_dispatch.h>
#include <ATen/ops/silu_cpu_dispatch.h>

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

// ---- activations: torch's own CPU kernels, on tiles ----

// The activation of a tile of rows is computed by torch's own CPU kernel (at::silu_ etc.) on an
// fp32 scratch tile, so that `a` is the very value the unpatched model computes, bit for bit, on
// whatever vector ISA torch picked at run time (its vectorised exp / erf / tanh differ from any
// re-implementation in the last bits, and a last-bit difference in h moves later layers). The
// tile is padded to a multiple of kTilePad elements so torch never takes its scalar tail path
// (glibc's expf, another last bit), and kept under torch's 32768-element grain so the call runs
// inline on this thread. The CPU kernels are called directly (at::cpu::, no dispatcher), and a
// tile holds up to ~32k elements, so the per-call cost stays small next to the work.
constexpr int64_t kTileElems = 32768 - 64;
constexpr int64_t kTilePad = 64;

void torch_activation_inplace(float* a, int64_t n, Act act) {
  const int64_t padded = (n + kTilePad - 1) / kTilePad * kTilePad;
  std::fill(a + n, a + padded, 0.0f);
  at::Tensor t = at::from_blob(a, {padded}, at::TensorOptions().dtype(at::kFloat));
  switch (act) {
    case Act::Silu: at::cpu::silu_(t); break;
    case Act::Gelu: at::cpu::gelu_(t, "none"); break;
    case Act::GeluTanh: at::cpu::gelu_(t, "tanh"); break;
    case Act::Relu: at::cpu::relu_(t); break;
  }
}

// ---- histogram bins by exponent bits ----

// bin(a) = number of edges <= a, without a search per element: the top 12 bits of a float
// (sign, exponent, 3 mantissa bits) select an interval of values; `base[key]` is the bin of
// the interval's smallest value and at most `R` edges lie inside any interval, so
// bin(a) = base[key] + sum_{r < R} (a >= edges[base[key] + r]), with the edges padded by NaN
// (a >= NaN is false). For the default edges R = 1. Exact for any finite increasing edges.
constexpr int kKeyShift = 20;
constexpr int kKeys = 1 << (32 - kKeyShift);

struct HistTable {
  std::vector<int32_t> base;   // [kKeys]
  std::vector<float> edges;    // [B - 1 + R], NaN-padded
  int32_t R = 0;
  int32_t B = 0;
};

int32_t bin_of(const float* edges, int64_t n_edges, float v) {
  int32_t b = 0;
  for (int64_t e = 0; e < n_edges; ++e) b += edges[e] <= v ? 1 : 0;
  return b;
}

HistTable make_hist_table(const ActStatsParams& p) {
  HistTable t;
  t.B = int32_t(p.B);
  const int64_t n_edges = p.B - 1;
  t.base.resize(kKeys);
  for (uint32_t key = 0; key < uint32_t(kKeys); ++key) {
    const uint32_t first = key << kKeyShift, last = first | ((1u << kKeyShift) - 1);
    const bool negative = (key >> 11) != 0;
    const bool special = ((key >> 3) & 0xFFu) == 0xFFu;  // inf and NaN: only the inf counts
    float lo = negative ? float_of(last) : float_of(first);
    float hi = negative ? float_of(first) : float_of(last);
    if (special) lo = hi = negative ? -__builtin_inff() : __builtin_inff();
    const int32_t b_lo = bin_of(p.hist_edges, n_edges, lo);
    const int32_t b_hi = bin_of(p.hist_edges, n_edges, hi);
    t.base[key] = b_lo;
    t.R = std::max(t.R, b_hi - b_lo);
  }
  t.edges.assign(p.hist_edges, p.hist_edges + n_edges);
  t.edges.resize(size_t(n_edges + t.R + 1), __builtin_nanf(""));
  return t;
}

// counts[j * B + bin(a[j])] += 1 for j < w, NaN counted nowhere. One scalar pass: the table and
// edge lookups are gathers, which a vector loop would pay for per lane anyway. A vectorised
// scan for NaN first lets rows without NaN (nearly all) skip the per-element NaN test.
template <bool kMayHaveNaN, bool kOneEdge>
LN_INLINE void add_bins_pass(const HistTable& t, const float* __restrict__ a, int64_t w,
                             uint8_t* __restrict__ counts) {
  const int32_t* __restrict__ base = t.base.data();
  const float* __restrict__ edges = t.edges.data();
  const int64_t B = t.B;
  for (int64_t j = 0; j < w; ++j) {
    const float v = a[j];
    const int32_t b0 = base[bits_of(v) >> kKeyShift];
    int32_t b = b0 + (v >= edges[b0] ? 1 : 0);
    if (!kOneEdge)
      for (int32_t r = 1; r < t.R; ++r) b += v >= edges[b0 + r] ? 1 : 0;
    if (kMayHaveNaN) {
      const bool counted = v == v;  // NaN adds 0 to bin 0 rather than branching
      counts[j * B + (counted ? b : 0)] += counted ? 1 : 0;
    } else {
      counts[j * B + b] += 1;
    }
  }
}

LN_INLINE void add_bins(const HistTable& t, const float* __restrict__ a, int64_t w,
                        uint8_t* __restrict__ counts) {
  int32_t nans = 0;  // a sum, not a flag: GCC vectorises this reduction, not an OR of bools
  for (int64_t j = 0; j < w; ++j) nans += a[j] != a[j] ? 1 : 0;
  const bool any_nan = nans != 0;
  if (t.R == 1) {
    if (any_nan)
      add_bins_pass<true, true>(t, a, w, counts);
    else
      add_bins_pass<false, true>(t, a, w, counts);
  } else {
    if (any_nan)
      add_bins_pass<true, false>(t, a, w, counts);
    else
      add_bins_pass<false, false>(t, a, w, counts);
  }
}

// ---- one task: a column block for a chunk of rows ----

struct BlockTask {
  const ActStatsParams* p;
  const HistTable* table;  // null without hist
  int64_t col0, ncols;     // neurons [col0, col0 + ncols)
  int64_t row0, row1;      // rows [row0, row1)
  int32_t* cnt;            // [K, ncols] local counts, or null
  void* sum_acc;           // [K, ncols] local sums (sums dtype), or null
  void* sq_acc;            // [K, ncols] local sums of squares, or null
  float* max_acc;          // [K, ncols] local maxima (-inf), or null
  int64_t* hist;           // [K, I, B] global or per-chunk histogram (this task owns its
                           // columns there), or null
  uint8_t* hist_acc;       // [K, kPiece, B] zeroed piece counts (with hist)
  int32_t* hist_rows;      // [K] rows added to hist_acc since its last flush (with hist)
  float* act;              // [kTileElems + kTilePad] scratch: a tile's activations
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

// Rows are processed in tiles of up to kTileElems activations: at most kPiece neurons wide
// (the task as a whole still streams long row segments, what the hardware prefetcher wants).
constexpr int64_t kPiece = 2048;
// Histograms: a piece's counts per language are [piece, B] uint8 (the layout of the [K, I, B]
// histogram, so a flush is one sequential add), flushed before a language's rows could reach
// 256. A tile's histogram pass walks sub-pieces of kHistSub neurons over all its rows, so the
// counters in use ([kHistSub, B] uint8, 16 KiB at B = 32) stay in L1 while the tile streams
// at the full piece width (512-wide pieces measured ~1.3x slower in the load of gate / up).
constexpr int32_t kHistFlushRows = 255;
constexpr int64_t kHistSub = 512;

template <DType D>
LN_INLINE void load_tile(const ActStatsParams& p, const typename Elem<D>::T* gate, int64_t m0,
                         int64_t rows, int64_t w, float* __restrict__ out) {
  for (int64_t r = 0; r < rows; ++r) {
    const typename Elem<D>::T* __restrict__ g = gate + (m0 + r) * p.gate_row_stride;
    float* __restrict__ o = out + r * w;
    for (int64_t j = 0; j < w; ++j) o[j] = Elem<D>::load(g[j]);
  }
}

// Adds language k's piece counts into the [K, I, B] histogram (the task's own columns) and
// zeroes them.
LN_INLINE void flush_hist_lang(const BlockTask& task, int64_t k, int64_t j0, int64_t w) {
  const ActStatsParams& p = *task.p;
  const int64_t n = w * p.B;
  uint8_t* __restrict__ src = task.hist_acc + k * n;
  int64_t* __restrict__ dst = task.hist + (k * p.I + task.col0 + j0) * p.B;
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
  std::fill(src, src + n, uint8_t(0));
  task.hist_rows[k] = 0;
}

LN_INLINE void flush_hist(const BlockTask& task, int64_t j0, int64_t w) {
  for (int64_t k = 0; k < task.p->K; ++k)
    if (task.hist_rows[k]) flush_hist_lang(task, k, j0, w);
}

template <DType D>
LN_INLINE void row_statistics(const BlockTask& task, const float* __restrict__ a, int32_t lang,
                              int64_t j0, int64_t w) {
  const ActStatsParams& p = *task.p;
  const int64_t n = task.ncols;
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
  if (task.max_acc) {
    float* __restrict__ mx = task.max_acc + offset;
    for (int64_t j = 0; j < w; ++j) mx[j] = a[j] > mx[j] ? a[j] : mx[j];  // NaN ignored
  }
}

// The histogram pass over a tile of `rows` x `w` activations (before steering changes them):
// flushes the languages whose counters could overflow, then adds every counted row's bins,
// one L1-sized sub-piece of neurons at a time.
LN_INLINE void tile_histograms(const BlockTask& task, const float* __restrict__ tile, int64_t m0,
                               int64_t rows, int64_t j0, int64_t w) {
  const ActStatsParams& p = *task.p;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t lang = p.row_lang ? p.row_lang[m0 + r] : 0;
    if (lang < 0 || lang >= p.K) continue;
    // flush early enough that this tile's rows (at most `rows`) cannot overflow the counters
    if (task.hist_rows[lang] + rows > kHistFlushRows) flush_hist_lang(task, lang, j0, w);
    task.hist_rows[lang] += 1;
  }
  for (int64_t s0 = 0; s0 < w; s0 += kHistSub) {
    const int64_t sw = std::min(kHistSub, w - s0);
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t lang = p.row_lang ? p.row_lang[m0 + r] : 0;
      if (lang < 0 || lang >= p.K) continue;
      add_bins(*task.table, tile + r * w + s0, sw, task.hist_acc + (lang * w + s0) * p.B);
    }
  }
}

template <DType D>
LN_INLINE void run_task(const BlockTask& task) {
  using T = typename Elem<D>::T;
  const ActStatsParams& p = *task.p;
  const int64_t n = task.ncols;
  const T* gate = static_cast<const T*>(p.gate) + task.col0;
  const T* up = p.up ? static_cast<const T*>(p.up) + task.col0 : nullptr;
  T* h = static_cast<T*>(p.h) + task.col0;
  const bool any_stats = task.cnt || task.sum_acc || task.sq_acc || task.max_acc || task.hist;
  for (int64_t j0 = 0; j0 < n; j0 += kPiece) {
    const int64_t w = n - j0 < kPiece ? n - j0 : kPiece;
    int64_t tile_rows = std::max<int64_t>(1, kTileElems / w);
    // a language's rows since a flush are counted per tile: at most the uint8 limit per tile
    if (task.hist) tile_rows = std::min<int64_t>(tile_rows, kHistFlushRows);
    for (int64_t m0 = task.row0; m0 < task.row1; m0 += tile_rows) {
      const int64_t rows = std::min(tile_rows, task.row1 - m0);
      float* tile = task.act;
      load_tile<D>(p, gate + j0, m0, rows, w, tile);
      torch_activation_inplace(tile, rows * w, p.act);
      if (p.act == Act::Gelu) {  // torch's vectorised erf-GELU gives NaN at +inf: pin +inf
        for (int64_t r = 0; r < rows; ++r) {
          const T* __restrict__ g = gate + (m0 + r) * p.gate_row_stride + j0;
          float* __restrict__ a = tile + r * w;
          for (int64_t j = 0; j < w; ++j)
            a[j] = Elem<D>::load(g[j]) == __builtin_inff() ? __builtin_inff() : a[j];
        }
      }
      if (task.hist) tile_histograms(task, tile, m0, rows, j0, w);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t m = m0 + r;
        float* __restrict__ a = tile + r * w;
        const int32_t lang = p.row_lang ? p.row_lang[m] : 0;
        if (any_stats && lang >= 0 && lang < p.K) row_statistics<D>(task, a, lang, j0, w);

        const int32_t group = p.steer_mode ? (p.row_group ? p.row_group[m] : 0) : -1;
        if (group >= 0 && group < p.G) {  // after the statistics: they see the unsteered a
          const int8_t* __restrict__ mode = p.steer_mode + group * p.I + task.col0 + j0;
          const float* __restrict__ value = p.steer_value + group * p.I + task.col0 + j0;
          for (int64_t j = 0; j < w; ++j) {
            const float set_or_add = mode[j] == kSteerSet ? value[j] : a[j] + value[j];
            const float v = mode[j] == kSteerScale ? a[j] * value[j] : set_or_add;
            a[j] = mode[j] == kSteerKeep ? a[j] : v;
          }
        }

        T* __restrict__ out = h + m * p.I + j0;
        if (up) {
          const T* __restrict__ u = up + m * p.up_row_stride + j0;
          for (int64_t j = 0; j < w; ++j)  // a' rounded to T first, as the model's act(gate) * up
            out[j] = Elem<D>::store(Elem<D>::load(Elem<D>::store(a[j])) * Elem<D>::load(u[j]));
        } else {
          for (int64_t j = 0; j < w; ++j) out[j] = Elem<D>::store(a[j]);
        }
      }
    }
    if (task.hist) flush_hist(task, j0, w);
  }
}

// The one multi-versioned entry: everything above is inlined into each ISA clone.
LN_CLONES void run_block_task(const BlockTask& task) {
  switch (task.p->dtype) {
    case DType::F32: run_task<DType::F32>(task); break;
    case DType::BF16: run_task<DType::BF16>(task); break;
    case DType::F16: run_task<DType::F16>(task); break;
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
  const bool stats = p.counts || p.sums || p.sumsq || p.hist || p.amax;
  const int64_t K = stats ? p.K : 0;
  const int64_t B = p.hist ? p.B : 0;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  HistTable table;
  if (p.hist && K) table = make_hist_table(p);

  // Column blocks as wide as the task-local buffers allow (whole rows when they fit in
  // ~1 MiB, i.e. L2): long contiguous row segments stream at full bandwidth, while narrow
  // blocks (one page per row) measured 1.5-2x slower here. Then rows are split into chunks,
  // with per-chunk partials, until there is a multiple of the thread count of equal tasks.
  // Histograms are not in the task-local budget: a task adds to the [K, I, B] histogram
  // directly in its own columns (a row touches one language's [ncols, B] slice only).
  const size_t slot_bytes = 4 + acc_bytes(p.sums_type) * (p.sums != nullptr) +
                            acc_bytes(p.sumsq_type) * (p.sumsq != nullptr) +
                            4 * (p.amax != nullptr);
  const size_t budget = size_t(1) << 20;
  int64_t bw = p.I;
  while (bw > 64 && size_t(K) * size_t(bw) * slot_bytes > budget) bw = (bw + 1) / 2;
  bw = (bw + 15) / 16 * 16;  // whole vectors per block where possible
  bw = std::min(bw, p.I);
  int64_t col_blocks = (p.I + bw - 1) / bw;
  if (B && col_blocks % threads != 0 && p.I >= 64 * threads) {
    // A multiple of the thread count of column blocks needs no per-chunk partial histograms
    // (K * I * B int64 per chunk: 16 MiB at K = 8, I = 8192, B = 32).
    const int64_t target = (col_blocks + threads - 1) / threads * threads;
    bw = std::min(p.I, ((p.I + target - 1) / target + 15) / 16 * 16);
    col_blocks = (p.I + bw - 1) / bw;
  }

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

  // With several row chunks, each chunk accumulates into its own partial [K, I] (zero, or -inf
  // for the maxima), added / maxed into the buffers at the end.
  const bool partials = row_chunks > 1 && K > 0;
  std::vector<int64_t> part_counts, part_hist;
  std::vector<double> part_sums, part_sumsq;  // sized in doubles, used as the sums dtype
  std::vector<float> part_amax;
  auto doubles_for = [&](AccType t) { return size_t(row_chunks * K * p.I) * acc_bytes(t) / 8 + 1; };
  if (partials) {
    if (p.counts) part_counts.assign(size_t(row_chunks * K * p.I), 0);
    if (p.sums) part_sums.assign(doubles_for(p.sums_type), 0.0);
    if (p.sumsq) part_sumsq.assign(doubles_for(p.sumsq_type), 0.0);
    if (p.amax) part_amax.assign(size_t(row_chunks * K * p.I), -__builtin_inff());
    if (p.hist) part_hist.assign(size_t(row_chunks * K * p.I * B), 0);
  }

  at::parallel_for(0, row_chunks * col_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> cnt(p.counts ? size_t(K * bw) : 0);
    std::vector<double> sum_acc(p.sums ? size_t(K * bw) : 0);  // big enough for either dtype
    std::vector<double> sq_acc(p.sumsq ? size_t(K * bw) : 0);
    std::vector<float> max_acc(p.amax ? size_t(K * bw) : 0);
    std::vector<float> act(size_t(kTileElems + kTilePad));
    std::vector<uint8_t> hist_acc(p.hist ? size_t(K * B * std::min(bw, kPiece)) : 0);
    std::vector<int32_t> hist_rows(size_t(K), 0);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t chunk = t / col_blocks, block = t % col_blocks;
      BlockTask task;
      task.p = &p;
      task.table = &table;
      task.col0 = block * bw;
      task.ncols = std::min(bw, p.I - task.col0);
      task.row0 = chunk * rows_per_chunk;
      task.row1 = std::min(p.M, task.row0 + rows_per_chunk);
      const int64_t n = task.ncols;
      std::fill(cnt.begin(), cnt.end(), 0);
      std::fill(sum_acc.begin(), sum_acc.end(), 0.0);
      std::fill(sq_acc.begin(), sq_acc.end(), 0.0);
      std::fill(max_acc.begin(), max_acc.end(), -__builtin_inff());
      task.cnt = (p.counts && K) ? cnt.data() : nullptr;
      task.sum_acc = (p.sums && K) ? static_cast<void*>(sum_acc.data()) : nullptr;
      task.sq_acc = (p.sumsq && K) ? static_cast<void*>(sq_acc.data()) : nullptr;
      task.max_acc = (p.amax && K) ? max_acc.data() : nullptr;
      task.hist =
          (p.hist && K) ? (partials ? part_hist.data() + chunk * K * p.I * B : p.hist) : nullptr;
      task.act = act.data();
      task.hist_acc = hist_acc.data();
      task.hist_rows = hist_rows.data();
      run_block_task(task);

      const int64_t offset = (partials ? chunk * K * p.I : 0) + task.col0;
      if (task.cnt) {
        int64_t* dst = (partials ? part_counts.data() : p.counts) + offset;
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < n; ++j) dst[k * p.I + j] += cnt[size_t(k * n + j)];
      }
      if (task.max_acc) {
        float* dst = (partials ? part_amax.data() : p.amax) + offset;
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < n; ++j) {
            const float v = max_acc[size_t(k * n + j)];
            float& d = dst[k * p.I + j];
            d = v > d ? v : d;
          }
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
      if (p.amax) {
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < n; ++j) {
            const float v = part_amax[size_t(offset + k * p.I + j)];
            float& d = p.amax[k * p.I + begin + j];
            d = v > d ? v : d;
          }
      }
      if (p.hist) {
        for (int64_t k = 0; k < K; ++k) {
          const int64_t* src = part_hist.data() + (offset + k * p.I) * B;
          int64_t* dst = p.hist + (k * p.I + begin) * B;
          for (int64_t j = 0; j < n * B; ++j) dst[j] += src[j];
        }
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
