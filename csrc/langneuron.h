// Shared declarations of the fused op `act_stats`, free of torch headers so that nvcc compiles
// the CUDA kernel quickly and the plain-C++ kernels stay independent of ATen.
//
// Semantics (docs/design.md, "The fused op"; the definition is ops/reference.py), on 2-D inputs
// with M rows and I neurons:
//   a = act(gate) in fp32
//   for rows with row_lang[m] >= 0, k = row_lang[m]:
//     counts[k, i] += a > 0; sums[k, i] += a; sumsq[k, i] += a*a
//     hist[k, i, bin(a)] += 1 (not for NaN); amax[k, i] = max(amax[k, i], a) (NaN ignored)
//   a' = steer(a) per row group (mode 0 keep, 1 set to value, 2 add value, 3 scale: a * value;
//        group < 0: none); statistics always see the unsteered a
//   h  = round(round(a') * up) (gated) or round(a') (plain), round() to the input dtype: a' is
//        rounded before the product as the model's own act(gate) * up rounds act(gate).
// Binning, the one rule: bin(a) = the number of edges e with e <= a (edges fp32 [B-1], finite,
// strictly increasing; IEEE comparison, so -0.0 equals an edge at 0.0): bin b holds
// edges[b-1] <= a < edges[b], -inf lands in bin 0 and +inf in bin B-1.
#pragma once

#include <cstdint>

namespace langneuron {

// The schema of `langneuron_native::act_stats`, defined once in csrc/registration.cpp.
constexpr const char* kActStatsSchema =
    "act_stats(Tensor gate, Tensor? up, str act, Tensor? row_lang, Tensor(a!)? counts, "
    "Tensor(b!)? sums, Tensor(c!)? sumsq, Tensor? row_group, Tensor? steer_mode, "
    "Tensor? steer_value, Tensor(d!)? hist=None, Tensor? hist_edges=None, "
    "Tensor(e!)? amax=None) -> Tensor";

enum class Act : int { Silu = 0, Gelu = 1, GeluTanh = 2, Relu = 3 };
enum class DType : int { F32 = 0, BF16 = 1, F16 = 2 };        // gate / up / h
enum class AccType : int { None = 0, F32 = 1, F64 = 2 };      // sums / sumsq

enum SteerMode : int8_t { kSteerKeep = 0, kSteerSet = 1, kSteerAdd = 2, kSteerScale = 3 };

// Raw view of one call. Pointers that are not used are null. gate/up rows are `*_row_stride`
// elements apart with unit column stride; h, counts, sums, sumsq, steer_* are contiguous.
struct ActStatsParams {
  int64_t M = 0;                 // rows (tokens)
  int64_t I = 0;                 // neurons
  int64_t K = 0;                 // language slots of counts/sums/sumsq (0 when none given)
  int64_t G = 0;                 // steering groups (0 = no steering)
  Act act = Act::Silu;
  DType dtype = DType::F32;
  const void* gate = nullptr;
  int64_t gate_row_stride = 0;
  const void* up = nullptr;      // null: plain MLP
  int64_t up_row_stride = 0;
  void* h = nullptr;             // [M, I] contiguous, dtype
  const int32_t* row_lang = nullptr;   // null: every row is language 0
  int64_t* counts = nullptr;           // [K, I]
  void* sums = nullptr;                // [K, I] of sums_type
  AccType sums_type = AccType::None;
  void* sumsq = nullptr;               // [K, I] of sumsq_type
  AccType sumsq_type = AccType::None;
  const int32_t* row_group = nullptr;  // null: every row is group 0
  const int8_t* steer_mode = nullptr;  // [G, I]
  const float* steer_value = nullptr;  // [G, I]
  int64_t* hist = nullptr;             // [K, I, B]
  const float* hist_edges = nullptr;   // [B - 1]
  int64_t B = 0;                       // bins (0 when no hist)
  float* amax = nullptr;               // [K, I]
};

// Parses an activation name; returns false for an unknown name.
inline bool parse_act(const char* name, Act* out) {
  struct Entry {
    const char* name;
    Act act;
  };
  static const Entry table[] = {{"silu", Act::Silu},
                                {"gelu", Act::Gelu},
                                {"gelu_tanh", Act::GeluTanh},
                                {"relu", Act::Relu}};
  for (const Entry& e : table) {
    const char* a = e.name;
    const char* b = name;
    while (*a && *a == *b) {
      ++a;
      ++b;
    }
    if (*a == 0 && *b == 0) {
      *out = e.act;
      return true;
    }
  }
  return false;
}

// CPU kernel (csrc/cpu/act_stats_kernel.cpp): parallel over neuron blocks with at::parallel_for.
void act_stats_cpu_kernel(const ActStatsParams& p);

// CUDA kernel launcher (csrc/cuda/act_stats_kernel.cu); `stream` is a cudaStream_t.
// Returns an empty string on success, otherwise the CUDA error text.
const char* act_stats_cuda_launch(const ActStatsParams& p, void* stream);

// Build metadata as a JSON object string, filled from compile-time macros.
const char* cpu_build_info_json();
const char* cuda_build_info_json();

}  // namespace langneuron
