// Host emulation of the CUDA dialect used by kernels/*.cu, for g++ (see host_launch.cpp).
//
// A launch runs every (block, thread) pair one after another on the calling host thread,
// which is exact for kernels whose threads are independent: grid-stride loops with no
// shared memory, barriers, warp intrinsics or atomics (tests/test_kernels.py checks that
// the sources use none). Arithmetic intrinsics are plain IEEE double operations; build
// with -ffp-contract=off so that g++ never fuses a multiply into an add.
#pragma once

#define D2_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline

struct d2_dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

// thread_local: two Python threads may run emulated launches at the same time.
inline thread_local d2_dim3 blockIdx, threadIdx, blockDim, gridDim;

static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
