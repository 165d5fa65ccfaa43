// CPU implementation of langneuron_native::act_stats: argument checks, then the kernel.
#include "langneuron.h"
#include "tensor_args.h"

#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <cstdlib>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace langneuron {
namespace {

// Largest id in `ids` (or -1 for none), to reject out-of-range language / group ids up front.
int32_t max_id(const int32_t* ids, int64_t n) {
  int32_t best = -1;
  for (int64_t i = 0; i < n; ++i) best = ids[i] > best ? ids[i] : best;
  return best;
}

// h for large calls is allocated 2 MiB-aligned and advised for transparent huge pages: the
// first touch of a fresh 64 MiB output otherwise costs 16k page faults, more than the kernel
// itself on small VMs (torch does the same only with THP_MEM_ALLOC_ENABLE=1). Small outputs,
// and systems without THP, use torch's allocator.
at::Tensor allocate_output(int64_t M, int64_t I, const at::TensorOptions& options) {
  const size_t bytes = size_t(M) * size_t(I) * options.dtype().itemsize();
  constexpr size_t kHugePage = size_t(2) << 20;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes >= 2 * kHugePage) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* data = std::aligned_alloc(kHugePage, rounded);
    if (data != nullptr) {
      madvise(data, rounded, MADV_HUGEPAGE);  // advisory: failure just means small pages
      return at::from_blob(data, {M, I}, [](void* ptr) { std::free(ptr); }, options);
    }
  }
#endif
  return at::empty({M, I}, options);
}

at::Tensor act_stats_cpu(const at::Tensor& gate, const std::optional<at::Tensor>& up,
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
  PreparedArgs args = prepare_args(gate, up, act, row_lang, counts, sums, sumsq, row_group,
                                   steer_mode, steer_value, hist, hist_edges, amax,
                                   /*allocate_h=*/false);
  {  // the values the kernel relies on, before anything is written
    const ActStatsParams& q = args.params;
    for (int64_t b = 0; b + 1 < q.B; ++b) {
      const float e = q.hist_edges[b];
      TORCH_CHECK(e - e == 0.0f, "act_stats: hist_edges must be finite, edge ", b, " is ", e);
      TORCH_CHECK(b == 0 || q.hist_edges[b - 1] < e,
                  "act_stats: hist_edges must be strictly increasing (edge ", b, ")");
    }
    for (int64_t j = 0; q.steer_mode && j < q.G * q.I; ++j) {
      TORCH_CHECK(q.steer_mode[j] >= kSteerKeep && q.steer_mode[j] <= kSteerScale,
                  "act_stats: steer_mode holds ", int(q.steer_mode[j]),
                  "; modes are 0 keep, 1 set, 2 add, 3 scale");
      TORCH_CHECK(q.steer_mode[j] != kSteerScale || q.steer_value[j] == q.steer_value[j],
                  "act_stats: steer_value holds a NaN scale factor");
    }
  }
  args.h = allocate_output(args.params.M, args.params.I, gate.options());
  args.params.h = args.h.data_ptr();
  const ActStatsParams& p = args.params;
  const bool has_stats = p.counts || p.sums || p.sumsq || p.hist || p.amax;
  if (p.row_lang && has_stats) {
    const int32_t top = max_id(p.row_lang, p.M);
    TORCH_CHECK(top < p.K, "act_stats: row_lang holds language id ", top,
                " but the statistic buffers have only ", p.K, " slots");
  }
  if (p.row_group) {
    const int32_t top = max_id(p.row_group, p.M);
    TORCH_CHECK(top < p.G, "act_stats: row_group holds group ", top, " but steer_mode has only ",
                p.G, " groups");
  } else if (p.steer_mode) {
    TORCH_CHECK(p.G >= 1, "act_stats: steer_mode has no groups");
  }
  act_stats_cpu_kernel(p);
  return args.h;
}

}  // namespace
}  // namespace langneuron

TORCH_LIBRARY_IMPL(langneuron_native, CPU, m) { m.impl("act_stats", &langneuron::act_stats_cpu); }
