// Q8_0 experts whose host rows are packed in groups of 16 (RowPacking::kQ8Rows16, the CPU
// kernels' layout) arrive on the GPU in that packing; the GPU kernels read GGUF rows. This
// converts one expert on the device, stream-ordered (the mover runs it after each copy).
#pragma once

#include "core/weight_format.h"

namespace hm::cuda {

// dst (GGUF rows: every weight byte written, the padding between matrices left as it is) <- src
// (L's packing, which must be kQ8Rows16), both device pointers of L.stride bytes that do not
// overlap; on `stream` (a cudaStream_t). Launch errors raise RuntimeError.
void q8_rows16_to_gguf_async(const uint8_t* src, uint8_t* dst, const ExpertLayout& L, void* stream);

}  // namespace hm::cuda
