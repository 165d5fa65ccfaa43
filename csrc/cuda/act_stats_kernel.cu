// The CUDA kernel of the fused op (semantics in csrc/langneuron.h). No torch headers here, so
// nvcc compiles this file in seconds; the tensor glue is csrc/cuda/act_stats_cuda.cpp.
//
// Layout: a block of kThreads threads covers a column tile of kThreads * kVec neurons and a
// range of rows; each thread owns kVec adjacent neurons of the tile for all of the block's rows.
// Gate, up and h move as 16-byte packs when every row is 16-byte aligned (else element by
// element). Statistics: each (language, neuron) partial has exactly one owning thread, kept
// in registers for the current language run (rows arrive in language runs) and flushed with
// one global atomicAdd per non-zero entry when the language changes and at the end: counts as
// unsigned long long, sums / sumsq as float or double. No shared memory, so occupancy does not
// depend on K (the previous per-block shared-memory table took K x 4 KB + 8 KB per language
// for each of sums and sumsq). Language ids >= K and group ids >= G are ignored, so callers
// that skip the range check can never make the kernel write out of bounds. The grid is sized
// from cudaOccupancyMaxActiveBlocksPerMultiprocessor.
#include "langneuron.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace langneuron {
namespace cuda {

template <typename X> __host__ __device__ __forceinline__ X min_of(X a, X b) {
  return a < b ? a : b;
}
template <typename X> __host__ __device__ __forceinline__ X max_of(X a, X b) {
  return a < b ? b : a;
}

constexpr int kThreads = 128;     // threads per block
// Rows loaded before any is processed (memory parallelism): 4 for fp32, 2 for 16-bit types,
// whose 8 neurons per thread need twice the fp64 run partials (4 spilled 360 bytes/thread).
template <int V> struct RowUnroll {
  static constexpr int value = V >= 8 ? 2 : 4;
};
// Caps registers at 65536 / (128 x 4) = 128 per thread: without it the per-run fp64 partials
// pushed the 16-bit kernels to 211 registers (2 resident blocks per SM; ptxas --resource-usage).
constexpr int kMinBlocksPerSm = 4;

template <typename T> struct Elem;
template <> struct Elem<float> {
  static __device__ __forceinline__ float load(float x) { return x; }
  static __device__ __forceinline__ float store(float f) { return f; }
};
template <> struct Elem<__half> {
  static __device__ __forceinline__ float load(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half store(float f) { return __float2half_rn(f); }
};
template <> struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 store(float f) { return __float2bfloat16_rn(f); }
};

// torch's formulas, in fp32 (accurate expf / erff / tanhf, as torch's CUDA kernels use).
template <Act A> __device__ __forceinline__ float activate(float x);
template <> __device__ __forceinline__ float activate<Act::Silu>(float x) {
  return x / (1.0f + expf(-x));
}
template <> __device__ __forceinline__ float activate<Act::Gelu>(float x) {
  return x * 0.5f * (1.0f + erff(x * 0.70710678118654752f));
}
template <> __device__ __forceinline__ float activate<Act::GeluTanh>(float x) {
  const float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.0f + tanhf(inner));
}
template <> __device__ __forceinline__ float activate<Act::Relu>(float x) {
  return x < 0.0f ? 0.0f : x;  // NaN stays NaN
}

template <typename T, int V>
struct alignas(16) Pack {
  T v[V];
};

__device__ __forceinline__ void atomic_add_acc(void* base, AccType type, int64_t index, double x) {
  if (type == AccType::F64)
    atomicAdd(static_cast<double*>(base) + index, x);
  else
    atomicAdd(static_cast<float*>(base) + index, static_cast<float>(x));
}

// Running maximum without a float atomicMax: non-negative floats order like their int bits,
// negative ones in reverse of their unsigned bits. NaN never wins (the caller skips it).
__device__ __forceinline__ void atomic_max_float(float* addr, float v) {
  if (v >= 0.0f)
    atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
  else
    atomicMin(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
}

// bin(a) = the number of edges <= a (csrc/langneuron.h); the edges are few and L1-resident.
__device__ __forceinline__ int64_t hist_bin(const ActStatsParams& p, float a) {
  int64_t b = 0;
  for (int64_t e = 0; e + 1 < p.B; ++e) b += p.hist_edges[e] <= a ? 1 : 0;
  return b;
}

// Statistics of one thread's V neurons for the current language run, in registers.
// kSums: the call has sums or sumsq (a separate instance, so the counts-only kernel holds no
// fp64 partials: 92-113 registers and no spills on sm_90 for every dtype; with sums the fp32
// kernels use 122 and the 16-bit ones, 8 neurons x 2 fp64 partials per thread, spill about
// 150 bytes per thread to L1: `nvcc -arch=sm_90 --resource-usage`).
template <int V, bool kSums>
struct RunPartials {
  int32_t lang = -1;
  int32_t cnt[V];
  float mx[V];
  double sum[kSums ? V : 1];
  double sq[kSums ? V : 1];

  __device__ __forceinline__ void reset(int32_t new_lang) {
    lang = new_lang;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      cnt[v] = 0;
      mx[v] = -__int_as_float(0x7f800000);
      if (kSums) {
        sum[v] = 0.0;
        sq[v] = 0.0;
      }
    }
  }
  // One global atomic per non-zero (language, neuron) entry of the run.
  __device__ __forceinline__ void flush(const ActStatsParams& p, int64_t col0, int64_t ncols) {
    if (lang < 0) return;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      if (v >= ncols) break;
      const int64_t index = int64_t(lang) * p.I + col0 + v;
      if (p.counts && cnt[v] != 0)
        atomicAdd(reinterpret_cast<unsigned long long*>(p.counts) + index,
                  static_cast<unsigned long long>(cnt[v]));
      if (kSums && p.sums && sum[v] != 0.0) atomic_add_acc(p.sums, p.sums_type, index, sum[v]);
      if (kSums && p.sumsq && sq[v] != 0.0) atomic_add_acc(p.sumsq, p.sumsq_type, index, sq[v]);
      if (p.amax && mx[v] > -__int_as_float(0x7f800000)) atomic_max_float(p.amax + index, mx[v]);
    }
  }
};

// One block: kThreads threads x V adjacent neurons each, over a run of rows. Rows arrive in
// language runs (a sequence is one language), so each thread keeps its neurons' partial
// statistics in registers while the language stays the same and flushes them (one atomic per
// entry) when it changes and at the end: no shared memory at all, whatever K is.
template <typename T, Act A, bool kSums>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    act_stats_kernel(const ActStatsParams p, int64_t rows_per_block, bool packed) {
  constexpr int V = 16 / sizeof(T);
  using P = Pack<T, V>;

  const int tid = threadIdx.x;
  const int64_t col0 = (int64_t(blockIdx.x) * kThreads + tid) * V;
  const int64_t row_begin = int64_t(blockIdx.y) * rows_per_block;
  const int64_t row_end = min_of<int64_t>(p.M, row_begin + rows_per_block);
  if (row_begin >= row_end) return;
  const int64_t ncols = col0 < p.I ? min_of<int64_t>(V, p.I - col0) : 0;
  if (ncols == 0) return;  // threads share nothing, so leaving early is safe

  const bool want_stats = p.K > 0 && (p.counts || p.sums || p.sumsq || p.hist || p.amax);
  RunPartials<V, kSums> run;
  run.reset(-1);

  const T* gate = static_cast<const T*>(p.gate);
  const T* up = static_cast<const T*>(p.up);
  T* h = static_cast<T*>(p.h);

  constexpr int kRowUnroll = RowUnroll<V>::value;
  for (int64_t m0 = row_begin; m0 < row_end; m0 += kRowUnroll) {
    P g[kRowUnroll], u[kRowUnroll];
#pragma unroll
    for (int q = 0; q < kRowUnroll; ++q) {
      const int64_t m = m0 + q;
      if (m >= row_end) break;
      const T* gr = gate + m * p.gate_row_stride + col0;
      const T* ur = up ? up + m * p.up_row_stride + col0 : nullptr;
      if (packed) {
        g[q] = *reinterpret_cast<const P*>(gr);
        if (ur) u[q] = *reinterpret_cast<const P*>(ur);
      } else {
        for (int v = 0; v < V; ++v) {
          if (v < ncols) {
            g[q].v[v] = gr[v];
            if (ur) u[q].v[v] = ur[v];
          }
        }
      }
    }
#pragma unroll
    for (int q = 0; q < kRowUnroll; ++q) {
      const int64_t m = m0 + q;
      if (m >= row_end) break;
      int32_t lang = want_stats ? (p.row_lang ? p.row_lang[m] : 0) : -1;
      if (lang >= p.K) lang = -1;  // unchecked ids (check_ids=False) never write out of bounds
      int32_t group = p.steer_mode ? (p.row_group ? p.row_group[m] : 0) : -1;
      if (group >= p.G) group = -1;
      if (lang >= 0 && lang != run.lang) {
        run.flush(p, col0, ncols);
        run.reset(lang);
      }
      P out;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        if (!packed && v >= ncols) break;
        float a = activate<A>(Elem<T>::load(g[q].v[v]));
        if (lang >= 0) {
          run.cnt[v] += a > 0.0f ? 1 : 0;  // NaN never counts
          run.mx[v] = a > run.mx[v] ? a : run.mx[v];  // NaN never wins
          if (kSums) {
            run.sum[v] += double(a);
            run.sq[v] += double(a) * double(a);
          }
          if (p.hist && a == a) {  // one atomic per counted element: the bins vary per row
            const int64_t slot = (int64_t(lang) * p.I + col0 + v) * p.B + hist_bin(p, a);
            atomicAdd(reinterpret_cast<unsigned long long*>(p.hist) + slot, 1ull);
          }
        }
        if (group >= 0) {  // steering after counting: statistics see the unsteered value
          const int64_t index = int64_t(group) * p.I + col0 + v;
          const int8_t mode = p.steer_mode[index];
          if (mode == kSteerSet)
            a = p.steer_value[index];
          else if (mode == kSteerAdd)
            a += p.steer_value[index];
          else if (mode == kSteerScale)
            a *= p.steer_value[index];
        }
        // a' rounded to T before the product, as the model's own act(gate) * up
        out.v[v] =
            Elem<T>::store(up ? Elem<T>::load(Elem<T>::store(a)) * Elem<T>::load(u[q].v[v]) : a);
      }
      T* hr = h + m * p.I + col0;
      if (packed) {
        *reinterpret_cast<P*>(hr) = out;
      } else {
        for (int v = 0; v < V; ++v)
          if (v < ncols) hr[v] = out.v[v];
      }
    }
  }
  run.flush(p, col0, ncols);
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// Rows per block: the grid fills the device as measured by the occupancy API (resident blocks
// per SM x SMs), with at least kMinRows rows per block so that the end-of-run atomics stay a
// small share of the traffic, and at most 65,535 row blocks (gridDim.y's limit).
constexpr int64_t kMinRows = 16;

template <typename T, Act A, bool kSums>
const char* launch(const ActStatsParams& p, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  int device = 0, sms = 1, per_sm = 1;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, act_stats_kernel<T, A, kSums>,
                                                      kThreads, 0);
  if (err != cudaSuccess) return cudaGetErrorString(err);

  const int64_t tile = int64_t(kThreads) * V;
  const int64_t col_tiles = (p.I + tile - 1) / tile;
  const int64_t resident = int64_t(max_of(per_sm, 1)) * sms;
  int64_t row_tiles = (resident + col_tiles - 1) / col_tiles;
  row_tiles = max_of<int64_t>(1, min_of<int64_t>(row_tiles, (p.M + kMinRows - 1) / kMinRows));
  int64_t rows_per_block = (p.M + row_tiles - 1) / row_tiles;
  rows_per_block = max_of<int64_t>(rows_per_block, (p.M + 65534) / 65535);
  row_tiles = (p.M + rows_per_block - 1) / rows_per_block;

  const size_t elem = sizeof(T);
  const bool packed = p.I % V == 0 && aligned16(p.gate) && (p.gate_row_stride * elem) % 16 == 0 &&
                      aligned16(p.h) &&
                      (!p.up || (aligned16(p.up) && (p.up_row_stride * elem) % 16 == 0));
  const dim3 grid{static_cast<unsigned>(col_tiles), static_cast<unsigned>(row_tiles), 1u};
  act_stats_kernel<T, A, kSums><<<grid, kThreads, 0, stream>>>(p, rows_per_block, packed);
  err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

template <typename T, bool kSums>
const char* launch_for_act(const ActStatsParams& p, cudaStream_t stream) {
  switch (p.act) {
    case Act::Silu: return launch<T, Act::Silu, kSums>(p, stream);
    case Act::Gelu: return launch<T, Act::Gelu, kSums>(p, stream);
    case Act::GeluTanh: return launch<T, Act::GeluTanh, kSums>(p, stream);
    case Act::Relu: return launch<T, Act::Relu, kSums>(p, stream);
  }
  return "unknown activation";
}

template <typename T>
const char* launch_for_sums(const ActStatsParams& p, cudaStream_t stream) {
  const bool sums = p.K > 0 && (p.sums || p.sumsq);
  return sums ? launch_for_act<T, true>(p, stream) : launch_for_act<T, false>(p, stream);
}

}  // namespace cuda

const char* act_stats_cuda_launch(const ActStatsParams& p, void* stream) {
  if (p.M == 0 || p.I == 0) return "";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::F32: return cuda::launch_for_sums<float>(p, s);
    case DType::BF16: return cuda::launch_for_sums<__nv_bfloat16>(p, s);
    case DType::F16: return cuda::launch_for_sums<__half>(p, s);
  }
  return "unknown dtype";
}

#define LN_STR_(x) #x
#define LN_STR(x) LN_STR_(x)

const char* cuda_build_info_json() {
  return "{\"cuda_runtime\": " LN_STR(CUDART_VERSION) ", \"nvcc\": \"" LN_STR(
      __CUDACC_VER_MAJOR__) "." LN_STR(__CUDACC_VER_MINOR__) "." LN_STR(__CUDACC_VER_BUILD__) "\"}";
}

}  // namespace langneuron
