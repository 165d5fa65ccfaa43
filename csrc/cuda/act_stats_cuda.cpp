// CUDA implementation of langneuron_native::act_stats: argument checks, then the launcher.
// Language / group ids are not range-checked here (that would synchronise with the GPU);
// ln.ops.act_stats checks them before calling the op, and the kernel ignores ids >= K / >= G.
#include "langneuron.h"
#include "tensor_args.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace langneuron {
namespace {

at::Tensor act_stats_cuda(const at::Tensor& gate, const std::optional<at::Tensor>& up,
                          std::string_view act, const std::optional<at::Tensor>& row_lang,
                          const std::optional<at::Tensor>& counts,
                          const std::optional<at::Tensor>& sums,
                          const std::optional<at::Tensor>& sumsq,
                          const std::optional<at::Tensor>& row_group,
                          const std::optional<at::Tensor>& steer_mode,
                          const std::optional<at::Tensor>& steer_value,
                          const std::optional<at::Tensor>& hist,
                          const std::optional<at::Tensor>& hist_edges,
                          const std::optional<at::Tensor>& amax) {
  const c10::cuda::CUDAGuard device_guard(gate.device());
  PreparedArgs args = prepare_args(gate, up, act, row_lang, counts, sums, sumsq, row_group,
                                   steer_mode, steer_value, hist, hist_edges, amax);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(gate.device().index()).stream();
  const char* error = act_stats_cuda_launch(args.params, stream);
  TORCH_CHECK(error[0] == '\0', "act_stats (cuda): kernel launch failed: ", error);
  return args.h;
}

}  // namespace
}  // namespace langneuron

TORCH_LIBRARY_IMPL(langneuron_native, CUDA, m) { m.impl("act_stats", &langneuron::act_stats_cuda); }
