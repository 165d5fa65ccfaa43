// The CUDA kernel of the fused op (semantics in csrc/langneuron.h). No torch headers here, so
// nvcc compiles this file in seconds; the tensor glue is csrc/cuda/act_stats_cuda.cpp.
//
// Layout: a block of kThreads threads covers a column tile of kThreads * kVec neurons and a
// range of rows; each thread owns kVec adjacent neurons of the tile for all of the block's rows.
// Gate, up and h move as 16-byte packs when every row is 16-byte aligned (else element by
// element). Statistics are reduced per (language, neuron) in shared memory: each entry has
// exactly one owning thread, so there are no shared-memory atomics and no __syncthreads, and
// at the end each thread issues one global atomicAdd per non-zero (language, neuron) entry:
// counts as unsigned long long, sums / sumsq as float or double. When K languages do not fit
// in shared memory the block adds straight into global memory instead (slower, same result).
#include "langneuron.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace langneuron {
namespace cuda {

template <typename X> __host__ __device__ __forceinline__ X min_of(X a, X b) { return a < b ? a : b; }
template <typename X> __host__ __device__ __forceinline__ X max_of(X a, X b) { return a < b ? b : a; }

constexpr int kThreads = 128;     // threads per block
constexpr int kRowUnroll = 4;     // rows loaded before any is processed (memory parallelism)

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
  if (type == AccType::F64) atomicAdd(static_cast<double*>(base) + index, x);
  else atomicAdd(static_cast<float*>(base) + index, static_cast<float>(x));
}

// Shared memory per block: [K][kVec][kThreads] int32 counts, then doubles for sums and sumsq
// (thread-major innermost, so a warp touches 32 consecutive words: no bank conflicts).
template <typename T, Act A>
__global__ void __launch_bounds__(kThreads)
act_stats_kernel(const ActStatsParams p, int64_t rows_per_block, bool packed, bool use_smem) {
  constexpr int V = 16 / sizeof(T);
  using P = Pack<T, V>;
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const int tid = threadIdx.x;
  const int64_t col0 = (int64_t(blockIdx.x) * kThreads + tid) * V;
  const int64_t row_begin = int64_t(blockIdx.y) * rows_per_block;
  const int64_t row_end = min_of<int64_t>(p.M, row_begin + rows_per_block);
  if (row_begin >= row_end) return;
  const int64_t ncols = col0 < p.I ? min_of<int64_t>(V, p.I - col0) : 0;
  if (ncols == 0) return;  // no thread reads another's shared entries, so leaving is safe

  const bool want_stats = p.K > 0 && (p.counts || p.sums || p.sumsq);
  const bool stats_smem = want_stats && use_smem;
  const int64_t entries = p.K * V * kThreads;
  int32_t* s_cnt = reinterpret_cast<int32_t*>(smem_raw);
  double* s_sum = reinterpret_cast<double*>(smem_raw + ((entries * 4 + 15) / 16) * 16);
  double* s_sq = s_sum + (p.sums ? entries : 0);
  auto slot = [&](int64_t lang, int v) { return (lang * V + v) * kThreads + tid; };
  if (stats_smem) {
    for (int64_t k = 0; k < p.K; ++k)
      for (int v = 0; v < V; ++v) {
        if (p.counts) s_cnt[slot(k, v)] = 0;
        if (p.sums) s_sum[slot(k, v)] = 0.0;
        if (p.sumsq) s_sq[slot(k, v)] = 0.0;
      }
  }

  const T* gate = static_cast<const T*>(p.gate);
  const T* up = static_cast<const T*>(p.up);
  T* h = static_cast<T*>(p.h);

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
      const int32_t lang = want_stats ? (p.row_lang ? p.row_lang[m] : 0) : -1;
      const int32_t group = p.steer_mode ? (p.row_group ? p.row_group[m] : 0) : -1;
      P out;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        if (!packed && v >= ncols) break;
        float a = activate<A>(Elem<T>::load(g[q].v[v]));
        if (lang >= 0) {
          const int64_t col = col0 + v;
          if (stats_smem) {
            if (p.counts) s_cnt[slot(lang, v)] += a > 0.0f ? 1 : 0;  // NaN never counts
            if (p.sums) s_sum[slot(lang, v)] += double(a);
            if (p.sumsq) s_sq[slot(lang, v)] += double(a) * double(a);
          } else {
            const int64_t index = lang * p.I + col;
            if (p.counts && a > 0.0f)
              atomicAdd(reinterpret_cast<unsigned long long*>(p.counts) + index, 1ull);
            if (p.sums) atomic_add_acc(p.sums, p.sums_type, index, double(a));
            if (p.sumsq) atomic_add_acc(p.sumsq, p.sumsq_type, index, double(a) * double(a));
          }
        }
        if (group >= 0) {  // steering after counting: statistics see the unsteered value
          const int64_t index = int64_t(group) * p.I + col0 + v;
          const int8_t mode = p.steer_mode[index];
          if (mode == kSteerSet) a = p.steer_value[index];
          else if (mode == kSteerAdd) a += p.steer_value[index];
        }
        out.v[v] = Elem<T>::store(up ? a * Elem<T>::load(u[q].v[v]) : a);
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

  if (!stats_smem) return;
  for (int64_t k = 0; k < p.K; ++k) {
    for (int v = 0; v < ncols; ++v) {
      const int64_t index = k * p.I + col0 + v;
      if (p.counts) {
        const int32_t c = s_cnt[slot(k, v)];
        if (c != 0)
          atomicAdd(reinterpret_cast<unsigned long long*>(p.counts) + index,
                    static_cast<unsigned long long>(c));
      }
      if (p.sums) {
        const double s = s_sum[slot(k, v)];
        if (s != 0.0) atomic_add_acc(p.sums, p.sums_type, index, s);
      }
      if (p.sumsq) {
        const double s = s_sq[slot(k, v)];
        if (s != 0.0) atomic_add_acc(p.sumsq, p.sumsq_type, index, s);
      }
    }
  }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

template <typename T, Act A>
const char* launch(const ActStatsParams& p, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  int device = 0, sms = 1, smem_optin = 48 << 10;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);

  const int64_t tile = int64_t(kThreads) * V;
  const int64_t col_tiles = (p.I + tile - 1) / tile;
  // Enough row tiles for ~8 blocks per SM, but >= 16 rows each so the final atomics stay
  // a small fraction of the traffic, and within gridDim.y's limit.
  int64_t row_tiles = (int64_t(8) * sms + col_tiles - 1) / col_tiles;
  row_tiles = max_of<int64_t>(1, min_of<int64_t>(row_tiles, (p.M + 15) / 16));
  int64_t rows_per_block = (p.M + row_tiles - 1) / row_tiles;
  rows_per_block = max_of<int64_t>(rows_per_block, (p.M + 65534) / 65535);
  row_tiles = (p.M + rows_per_block - 1) / rows_per_block;

  const size_t entries = size_t(p.K) * V * kThreads;
  size_t smem = 0;
  if (p.K > 0 && (p.counts || p.sums || p.sumsq)) {
    smem = ((entries * 4 + 15) / 16) * 16 + entries * 8 * ((p.sums ? 1 : 0) + (p.sumsq ? 1 : 0));
  }
  bool use_smem = smem <= size_t(smem_optin);
  if (!use_smem) smem = 0;
  if (smem > (48u << 10)) {
    cudaError_t err = cudaFuncSetAttribute(act_stats_kernel<T, A>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return cudaGetErrorString(err);
  }

  const size_t elem = sizeof(T);
  const bool packed = p.I % V == 0 && aligned16(p.gate) && (p.gate_row_stride * elem) % 16 == 0 &&
                      aligned16(p.h) && (!p.up || (aligned16(p.up) && (p.up_row_stride * elem) % 16 == 0));
  const dim3 grid{static_cast<unsigned>(col_tiles), static_cast<unsigned>(row_tiles), 1u};
  act_stats_kernel<T, A><<<grid, kThreads, smem, stream>>>(p, rows_per_block, packed, use_smem);
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

template <typename T>
const char* launch_for_act(const ActStatsParams& p, cudaStream_t stream) {
  switch (p.act) {
    case Act::Silu: return launch<T, Act::Silu>(p, stream);
    case Act::Gelu: return launch<T, Act::Gelu>(p, stream);
    case Act::GeluTanh: return launch<T, Act::GeluTanh>(p, stream);
    case Act::Relu: return launch<T, Act::Relu>(p, stream);
  }
  return "unknown activation";
}

}  // namespace cuda

const char* act_stats_cuda_launch(const ActStatsParams& p, void* stream) {
  if (p.M == 0 || p.I == 0) return "";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::F32: return cuda::launch_for_act<float>(p, s);
    case DType::BF16: return cuda::launch_for_act<__nv_bfloat16>(p, s);
    case DType::F16: return cuda::launch_for_act<__half>(p, s);
  }
  return "unknown dtype";
}

#define LN_STR_(x) #x
#define LN_STR(x) LN_STR_(x)

const char* cuda_build_info_json() {
  return "{\"cuda_runtime\": " LN_STR(CUDART_VERSION) ", \"nvcc\": \"" LN_STR(__CUDACC_VER_MAJOR__)
         "." LN_STR(__CUDACC_VER_MINOR__) "." LN_STR(__CUDACC_VER_BUILD__) "\"}";
}

}  // namespace langneuron
