// Multi-scale deformable attention: input checks shared by every device, and dispatch to the CPU
// or CUDA implementation by the device of `value`.
//
// Shapes: value (N, S, M, D); spatial_shapes (L, 2) int64 (H, W); level_start_index (L,) int64;
// sampling_loc (N, Lq, M, L, P, 2) normalised (x, y); attn_weight (N, Lq, M, L, P);
// output / grad_output (N, Lq, M * D).
#pragma once

#include <torch/extension.h>

#include <vector>

#include "cpu/ms_deform_attn_cpu.h"
#ifdef WITH_CUDA
#include "cuda/ms_deform_attn_cuda.h"
#endif

namespace mask2former {

// Kernels index `value` through spatial_shapes and level_start_index, so inconsistent values would
// read out of bounds: every entry point checks them (copying these two small tensors to the host).
inline void check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (N, S, M, D), got shape ", value.sizes());
  TORCH_CHECK(
      spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
      "ms_deform_attn: value_spatial_shapes must be (L, 2), got shape ", spatial_shapes.sizes());
  const int64_t batch = value.size(0), num_values = value.size(1), heads = value.size(2);
  const int64_t levels = spatial_shapes.size(0);
  TORCH_CHECK(
      sampling_loc.dim() == 6 && sampling_loc.size(0) == batch && sampling_loc.size(2) == heads &&
          sampling_loc.size(3) == levels && sampling_loc.size(5) == 2,
      "ms_deform_attn: sampling_locations has shape ", sampling_loc.sizes(), " but value ", value.sizes(),
      " and value_spatial_shapes ", spatial_shapes.sizes(), " need (N=", batch, ", Lq, M=", heads, ", L=", levels,
      ", P, 2)");
  const int64_t num_queries = sampling_loc.size(1), points = sampling_loc.size(4);
  TORCH_CHECK(
      attn_weight.dim() == 5 && attn_weight.size(0) == batch && attn_weight.size(1) == num_queries &&
          attn_weight.size(2) == heads && attn_weight.size(3) == levels && attn_weight.size(4) == points,
      "ms_deform_attn: attention_weights has shape ", attn_weight.sizes(), " but value ", value.sizes(),
      " and sampling_locations ", sampling_loc.sizes(), " need (N, Lq, M, L, P) = (", batch, ", ", num_queries, ", ",
      heads, ", ", levels, ", ", points, ")");
  TORCH_CHECK(
      level_start_index.dim() == 1 && level_start_index.size(0) == levels,
      "ms_deform_attn: value_level_start_index must be (L,) = (", levels, ",), got shape ", level_start_index.sizes());
  TORCH_CHECK(
      spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
      "ms_deform_attn: value_spatial_shapes and value_level_start_index must be int64, got ",
      spatial_shapes.scalar_type(), " and ", level_start_index.scalar_type());
  TORCH_CHECK(
      value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
      "ms_deform_attn: the compiled kernels support float32 and float64 value, got ", value.scalar_type());
  TORCH_CHECK(
      sampling_loc.scalar_type() == value.scalar_type() && attn_weight.scalar_type() == value.scalar_type(),
      "ms_deform_attn: value (", value.scalar_type(), "), sampling_locations (", sampling_loc.scalar_type(),
      ") and attention_weights (", attn_weight.scalar_type(), ") must have the same dtype");
  for (const at::Tensor* t : {&spatial_shapes, &level_start_index, &sampling_loc, &attn_weight}) {
    TORCH_CHECK(
        t->device() == value.device(), "ms_deform_attn: every input must be on value's device ", value.device(),
        ", got a tensor on ", t->device());
  }
  TORCH_CHECK(im2col_step > 0, "ms_deform_attn: im2col_step must be positive, got ", im2col_step);

  const at::Tensor shapes = spatial_shapes.to(at::kCPU).contiguous();
  const at::Tensor starts = level_start_index.to(at::kCPU).contiguous();
  const int64_t* shape = shapes.data_ptr<int64_t>();
  const int64_t* start = starts.data_ptr<int64_t>();
  int64_t offset = 0;
  for (int64_t l = 0; l < levels; ++l) {
    TORCH_CHECK(
        shape[2 * l] > 0 && shape[2 * l + 1] > 0, "ms_deform_attn: value_spatial_shapes[", l,
        "] must be positive, got (", shape[2 * l], ", ", shape[2 * l + 1], ")");
    TORCH_CHECK(
        start[l] == offset, "ms_deform_attn: value_level_start_index[", l, "] is ", start[l],
        " but value_spatial_shapes put level ", l, " at ", offset);
    offset += shape[2 * l] * shape[2 * l + 1];
  }
  TORCH_CHECK(
      offset == num_values, "ms_deform_attn: value has ", num_values, " positions along dim 1 (shape ", value.sizes(),
      ") but value_spatial_shapes sum to ", offset);
}

inline at::Tensor ms_deform_attn_forward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step);
  const at::Tensor v = value.contiguous(), s = spatial_shapes.contiguous(), i = level_start_index.contiguous();
  const at::Tensor l = sampling_loc.contiguous(), a = attn_weight.contiguous();
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_cuda_forward(v, s, i, l, a, im2col_step);
#else
    TORCH_CHECK(false, "ms_deform_attn: this extension was built without CUDA; rebuild it with CUDA (or FORCE_CUDA=1)");
#endif
  }
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn: unsupported device ", value.device());
  return ms_deform_attn_cpu_forward(v, s, i, l, a, im2col_step);
}

inline std::vector<at::Tensor> ms_deform_attn_backward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output,
    int64_t im2col_step) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step);
  const std::vector<int64_t> output_shape = {value.size(0), sampling_loc.size(1), value.size(2) * value.size(3)};
  TORCH_CHECK(
      grad_output.sizes() == at::IntArrayRef(output_shape), "ms_deform_attn: grad_output has shape ",
      grad_output.sizes(), " but the output is ", at::IntArrayRef(output_shape));
  TORCH_CHECK(
      grad_output.scalar_type() == value.scalar_type() && grad_output.device() == value.device(),
      "ms_deform_attn: grad_output (", grad_output.scalar_type(), ", ", grad_output.device(),
      ") must match value (", value.scalar_type(), ", ", value.device(), ")");
  const at::Tensor v = value.contiguous(), s = spatial_shapes.contiguous(), i = level_start_index.contiguous();
  const at::Tensor l = sampling_loc.contiguous(), a = attn_weight.contiguous(), g = grad_output.contiguous();
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_cuda_backward(v, s, i, l, a, g, im2col_step);
#else
    TORCH_CHECK(false, "ms_deform_attn: this extension was built without CUDA; rebuild it with CUDA (or FORCE_CUDA=1)");
#endif
  }
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn: unsupported device ", value.device());
  return ms_deform_attn_cpu_backward(v, s, i, l, a, g, im2col_step);
}

}  // namespace mask2former
