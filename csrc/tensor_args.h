// Tensor -> ActStatsParams for the native ops (CPU and CUDA glue share it). Header-only on
// purpose: _C and _C_cuda are separate shared objects loaded with RTLD_LOCAL.
//
// The checks repeat the essentials of ops/args.py so the op is safe when called directly through
// torch.ops.langneuron_native.act_stats. gate/up need unit column stride (any row stride, so
// views of a fused gate_up [M, 2I] are used in place); anything else is copied to contiguous.
#pragma once

#include "langneuron.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <limits>
#include <optional>
#include <string>

namespace langneuron {

struct PreparedArgs {
  ActStatsParams params;
  at::Tensor gate, up, h, row_lang, row_group, steer_mode, steer_value, hist_edges;  // alive
};

inline at::Tensor unit_column_stride(const at::Tensor& t) {
  if (t.size(1) <= 1 || t.stride(1) == 1) return t;
  return t.contiguous();
}

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kBFloat16: return DType::BF16;
    case at::kHalf: return DType::F16;
    default:
      TORCH_CHECK(false, "act_stats: gate must be float32, bfloat16 or float16, got ",
                  t.scalar_type());
  }
}

inline void check_buffer(const std::optional<at::Tensor>& t, const char* name, int64_t I,
                         const at::Tensor& gate, int64_t* K) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->dim() == 2 && t->size(1) == I, "act_stats: ", name, " must have shape [K, ", I,
              "] (languages x neurons), got ", t->sizes());
  TORCH_CHECK(t->device() == gate.device(), "act_stats: ", name, " is on ", t->device(),
              " but gate is on ", gate.device());
  TORCH_CHECK(t->is_contiguous(), "act_stats: ", name, " must be contiguous (updated in place)");
  TORCH_CHECK(*K < 0 || *K == t->size(0), "act_stats: ", name, " has ", t->size(0),
              " language slots but another statistic buffer has ", *K);
  *K = t->size(0);
}

inline AccType acc_type_of(const std::optional<at::Tensor>& t, const char* name) {
  if (!t.has_value()) return AccType::None;
  if (t->scalar_type() == at::kDouble) return AccType::F64;
  TORCH_CHECK(t->scalar_type() == at::kFloat, "act_stats: ", name,
              " must be float32 or float64, got ", t->scalar_type());
  return AccType::F32;
}

inline at::Tensor per_row_ids(const std::optional<at::Tensor>& t, const char* name, int64_t M,
                              const at::Tensor& gate) {
  if (!t.has_value()) return at::Tensor();
  TORCH_CHECK(t->scalar_type() == at::kInt, "act_stats: ", name, " must be int32, got ",
              t->scalar_type());
  TORCH_CHECK(t->numel() == M, "act_stats: ", name, " has ", t->numel(), " entries but there are ",
              M, " rows");
  TORCH_CHECK(t->device() == gate.device(), "act_stats: ", name, " is on ", t->device(),
              " but gate is on ", gate.device());
  return t->reshape({M}).contiguous();
}

// Validates the arguments, allocates h (unless `allocate_h` is false: the caller then sets
// out.h and params.h) and fills the raw view. Range checks of the ids against
// K and G need the values; the CPU glue does them, the CUDA glue leaves them to ops/args.py
// (its kernel ignores ids >= K / >= G, so an unchecked call cannot write out of bounds).
inline PreparedArgs prepare_args(const at::Tensor& gate_in, const std::optional<at::Tensor>& up_in,
                                 std::string_view act, const std::optional<at::Tensor>& row_lang,
                                 const std::optional<at::Tensor>& counts,
                                 const std::optional<at::Tensor>& sums,
                                 const std::optional<at::Tensor>& sumsq,
                                 const std::optional<at::Tensor>& row_group,
                                 const std::optional<at::Tensor>& steer_mode,
                                 const std::optional<at::Tensor>& steer_value,
                                 const std::optional<at::Tensor>& hist,
                                 const std::optional<at::Tensor>& hist_edges,
                                 const std::optional<at::Tensor>& amax, bool allocate_h = true) {
  PreparedArgs out;
  ActStatsParams& p = out.params;
  TORCH_CHECK(gate_in.dim() == 2, "act_stats: gate must be 2-D [rows, neurons], got ",
              gate_in.sizes(), "; ln.ops.act_stats flattens leading dimensions for you");
  const std::string act_name(act);
  TORCH_CHECK(parse_act(act_name.c_str(), &p.act), "act_stats: unknown activation '", act_name,
              "'; expected silu, gelu, gelu_tanh or relu");
  p.dtype = dtype_of(gate_in);
  out.gate = unit_column_stride(gate_in);
  p.M = out.gate.size(0);
  p.I = out.gate.size(1);
  TORCH_CHECK(p.M < std::numeric_limits<int32_t>::max(),
              "act_stats: at most 2^31 - 1 rows per call (counts are accumulated in int32 "
              "per call); split the batch");
  p.gate = out.gate.data_ptr();
  p.gate_row_stride = out.gate.stride(0);
  if (up_in.has_value()) {
    TORCH_CHECK(up_in->sizes() == gate_in.sizes(), "act_stats: up has shape ", up_in->sizes(),
                " but gate has ", gate_in.sizes());
    TORCH_CHECK(up_in->scalar_type() == gate_in.scalar_type() &&
                    up_in->device() == gate_in.device(),
                "act_stats: up must have the same dtype and device as gate");
    out.up = unit_column_stride(*up_in);
    p.up = out.up.data_ptr();
    p.up_row_stride = out.up.stride(0);
  }
  if (allocate_h) {
    out.h = at::empty({p.M, p.I}, gate_in.options().memory_format(at::MemoryFormat::Contiguous));
    p.h = out.h.data_ptr();
  }

  int64_t K = -1;
  check_buffer(counts, "counts", p.I, gate_in, &K);
  check_buffer(sums, "sums", p.I, gate_in, &K);
  check_buffer(sumsq, "sumsq", p.I, gate_in, &K);
  check_buffer(amax, "amax", p.I, gate_in, &K);
  TORCH_CHECK(hist.has_value() == hist_edges.has_value(),
              "act_stats: hist and hist_edges must be given together");
  if (hist.has_value()) {
    TORCH_CHECK(hist_edges->scalar_type() == at::kFloat && hist_edges->dim() == 1 &&
                    hist_edges->numel() >= 1 && hist_edges->device() == gate_in.device(),
                "act_stats: hist_edges must be a 1-D float32 tensor on ", gate_in.device());
    p.B = hist_edges->numel() + 1;
    TORCH_CHECK(hist->scalar_type() == at::kLong && hist->dim() == 3 && hist->size(1) == p.I &&
                    hist->size(2) == p.B && hist->is_contiguous() &&
                    hist->device() == gate_in.device(),
                "act_stats: hist must be a contiguous int64 [K, ", p.I, ", ", p.B, "] tensor on ",
                gate_in.device(), ", got ", hist->scalar_type(), " ", hist->sizes());
    TORCH_CHECK(K < 0 || K == hist->size(0), "act_stats: hist has ", hist->size(0),
                " language slots but another statistic buffer has ", K);
    K = hist->size(0);
    out.hist_edges = hist_edges->contiguous();
    p.hist_edges = out.hist_edges.data_ptr<float>();
    p.hist = hist->data_ptr<int64_t>();
  }
  if (amax.has_value()) {
    TORCH_CHECK(amax->scalar_type() == at::kFloat, "act_stats: amax must be float32, got ",
                amax->scalar_type());
    p.amax = amax->data_ptr<float>();
  }
  p.K = K < 0 ? 0 : K;
  if (counts.has_value()) {
    TORCH_CHECK(counts->scalar_type() == at::kLong, "act_stats: counts must be int64, got ",
                counts->scalar_type());
    p.counts = counts->data_ptr<int64_t>();
  }
  p.sums_type = acc_type_of(sums, "sums");
  p.sums = sums.has_value() ? sums->data_ptr() : nullptr;
  p.sumsq_type = acc_type_of(sumsq, "sumsq");
  p.sumsq = sumsq.has_value() ? sumsq->data_ptr() : nullptr;

  out.row_lang = per_row_ids(row_lang, "row_lang", p.M, gate_in);
  if (out.row_lang.defined()) p.row_lang = out.row_lang.data_ptr<int32_t>();
  TORCH_CHECK(steer_mode.has_value() == steer_value.has_value(),
              "act_stats: steer_mode and steer_value must be given together");
  out.row_group = per_row_ids(row_group, "row_group", p.M, gate_in);
  if (steer_mode.has_value()) {
    TORCH_CHECK(steer_mode->scalar_type() == at::kChar && steer_mode->dim() == 2 &&
                    steer_mode->size(1) == p.I,
                "act_stats: steer_mode must be int8 [G, ", p.I, "], got ",
                steer_mode->scalar_type(), " ", steer_mode->sizes());
    TORCH_CHECK(steer_value->scalar_type() == at::kFloat &&
                    steer_value->sizes() == steer_mode->sizes(),
                "act_stats: steer_value must be float32 with the shape of steer_mode");
    TORCH_CHECK(steer_mode->device() == gate_in.device() &&
                    steer_value->device() == gate_in.device(),
                "act_stats: steer_mode / steer_value must be on ", gate_in.device());
    out.steer_mode = steer_mode->contiguous();
    out.steer_value = steer_value->contiguous();
    p.G = out.steer_mode.size(0);
    p.steer_mode = out.steer_mode.data_ptr<int8_t>();
    p.steer_value = out.steer_value.data_ptr<float>();
    if (out.row_group.defined()) p.row_group = out.row_group.data_ptr<int32_t>();
  } else {
    TORCH_CHECK(!out.row_group.defined(),
                "act_stats: row_group given without steer_mode / steer_value");
  }
  return out;
}

}  // namespace langneuron
