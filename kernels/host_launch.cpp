// Host shim: compiles the CUDA kernels with g++ and launches them like cuLaunchKernel.
//
// d2_emu_launch(name, grid, block, params) runs kernel `name` over grid x block threads;
// params[i] points at the value of the i-th kernel argument (as kernelParams does in the
// CUDA driver API). Built by d2scale.kernels.build_host_library(), called through ctypes.
#include <cstddef>
#include <cstring>
#include <utility>

#include "host_emulation.h"
#include "forward.cu"
#include "reverse.cu"

namespace {

template <class... A, std::size_t... I>
void d2_call(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<A*>(params[I])...);
}

template <class... A>
void d2_run_grid(void (*kernel)(A...), unsigned grid, unsigned block, void** params) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned b = 0; b < grid; ++b) {
        for (unsigned t = 0; t < block; ++t) {
            blockIdx = {b, 0, 0};
            threadIdx = {t, 0, 0};
            d2_call(kernel, params, std::index_sequence_for<A...>{});
        }
    }
}

struct d2_entry {
    const char* name;
    void (*run)(unsigned, unsigned, void**);
};

#define D2_KERNEL(NAME) \
    {#NAME, [](unsigned g, unsigned b, void** p) { d2_run_grid(NAME, g, b, p); }}

const d2_entry d2_kernels[] = {
    D2_KERNEL(d2_forward),
    D2_KERNEL(d2_transpose_positions),
    D2_KERNEL(d2_mark_settled),
    D2_KERNEL(d2_commit_settled),
    D2_KERNEL(d2_recompute),
};

}  // namespace

// Returns 0 on success, -1 when no kernel has that name.
extern "C" int d2_emu_launch(const char* name, unsigned grid, unsigned block, void** params) {
    for (const d2_entry& k : d2_kernels) {
        if (std::strcmp(k.name, name) == 0) {
            k.run(grid, block, params);
            return 0;
        }
    }
    return -1;
}
