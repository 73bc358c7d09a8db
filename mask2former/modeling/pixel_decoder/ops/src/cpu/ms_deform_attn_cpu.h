#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace mask2former {

// Instruction set the CPU kernel runs with on this machine: "avx2+fma" or "baseline".
std::string cpu_kernel_isa();
// "auto" (the best the CPU supports), "baseline", or "avx2+fma" where supported.
void set_cpu_kernel_isa(const std::string& isa);

// Inputs are checked and contiguous (see ../ms_deform_attn.h); float32 or float64.
at::Tensor ms_deform_attn_cpu_forward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step);

std::vector<at::Tensor> ms_deform_attn_cpu_backward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output,
    int64_t im2col_step);

}  // namespace mask2former
