#include "ms_deform_attn.h"

namespace {

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def(
      "ms_deform_attn_forward", &mask2former::ms_deform_attn_forward,
      "ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step) "
      "-> output (N, Lq, M*D)");
  m.def(
      "ms_deform_attn_backward", &mask2former::ms_deform_attn_backward,
      "ms_deform_attn_backward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, grad_output, "
      "im2col_step) -> [grad_value, grad_sampling_loc, grad_attn_weight]");
  m.def("with_cuda", &with_cuda, "True if the CUDA kernels were compiled in");
  m.def("cpu_kernel_isa", &mask2former::cpu_kernel_isa, "Instruction set the CPU kernel uses on this machine");
  m.def(
      "set_cpu_kernel_isa", &mask2former::set_cpu_kernel_isa,
      "Choose the CPU kernel's instruction set: \"auto\", \"baseline\" or \"avx2+fma\" (tests, benchmarks)");
}
