// Argument checks shared by the CPU and CUDA entry points of every op: each failure names the op
// and the offending value. Checks that need the tensor's values (ids, non-finite logits) live in
// the device files, because on CUDA they must not sync.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "kernels/kernels.h"

namespace edlm {

cpu::LogitsType logits_type(const char* op, const at::Tensor& logits);

void check_masked_sample(const at::Tensor& logits, const at::Tensor& xt, int64_t mask_id,
                         int64_t num_samples, double temperature, double top_p, int64_t top_k);

void check_sequence_logprob(const at::Tensor& logits, const at::Tensor& tokens,
                            const std::optional<at::Tensor>& weight);

void check_importance_resample(const at::Tensor& log_weights, int64_t num_samples);

// The logits as the kernels read them: in place when the columns are adjacent (stride(-1) == 1,
// any other strides and storage offset), else a contiguous copy.
at::Tensor unit_column_stride(const at::Tensor& logits);

}  // namespace edlm
