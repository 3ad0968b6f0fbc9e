// Forward message passing of D2 Pruning (SPEC §1), one node per thread.
//
//   mode sum:      g_i = s_i + Σ_{j∈N(i)} w_ij · max(s_j, eps)
//   mode product:  g_i = s_i · Σ_{j∈N(i)} w_ij · max(s_j, eps)
//
// The sum runs over the CSR row left to right, from 0.0, in float64 with explicit
// round-to-nearest intrinsics (no FMA contraction), so the result is bit-identical to the
// NumPy/numba CPU pass. Grid-stride loop, no shared memory, no barriers: the host emulation
// (host_emulation.h) runs the threads one after another.

#ifndef D2_GRID_STRIDE
#define D2_GRID_STRIDE(i, n)                                                         \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);    \
         i += (long long)blockDim.x * gridDim.x)
#endif

extern "C" __global__ void d2_forward(long long n, const long long* indptr, const int* indices,
                                      const double* weights, const double* scores, double eps,
                                      int product, double* out) {
    D2_GRID_STRIDE(i, n) {
        double acc = 0.0;
        for (long long e = indptr[i]; e < indptr[i + 1]; ++e) {
            double s = scores[indices[e]];
            double m = s > eps ? s : eps;  // max(s_j, eps), as d2scale/forward.py writes it
            acc = __dadd_rn(acc, __dmul_rn(weights[e], m));
        }
        out[i] = product ? __dmul_rn(scores[i], acc) : __dadd_rn(scores[i], acc);
    }
}
