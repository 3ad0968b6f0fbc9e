// Exact parallel reverse message passing of D2 Pruning, in rounds (proof: d2scale/_cuda.py).
//
// State per node: cur (float64, current score; for a selected node its pick score) and
// status (int32: -1 unselected, r >= 0 settled in round r). One round is three launches:
//   d2_mark_settled    flag the unselected v with cur_v >= 0 that beat every unselected
//                      neighbour (beats: larger score, ties -> lower index);
//   d2_commit_settled  status_v = round for the flagged nodes;
//   d2_recompute       for every unselected v next to a node settled this round:
//                      cur_v = g0_v - sum of w_uv * cur_u over its selected neighbours u,
//                      subtracted in greedy pick order (cur_u desc, u asc), no FMA.
// Each launch reads only what no thread of the same launch writes, so threads are
// independent: grid-stride loops, no shared memory, no barriers, no atomics.

#ifndef D2_GRID_STRIDE
#define D2_GRID_STRIDE(i, n)                                                         \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);    \
         i += (long long)blockDim.x * gridDim.x)
#endif

// True when node v (score gv) is picked before node w (score gw) by the greedy argmax.
static __device__ __forceinline__ bool d2_beats(double gv, long long v, double gw, long long w) {
    return gv > gw || (gv == gw && v < w);
}

// rev[e] = position of v in row u for the edge e = (v, u) of row v; -1 if u lacks v.
extern "C" __global__ void d2_transpose_positions(long long n, const long long* indptr,
                                                  const int* indices, long long* rev) {
    D2_GRID_STRIDE(v, n) {
        for (long long e = indptr[v]; e < indptr[v + 1]; ++e) {
            const int u = indices[e];
            long long lo = indptr[u], hi = indptr[u + 1];  // rows are sorted ascending
            while (lo < hi) {
                const long long mid = lo + (hi - lo) / 2;
                if (indices[mid] < v) lo = mid + 1; else hi = mid;
            }
            rev[e] = (lo < indptr[u + 1] && indices[lo] == v) ? lo : -1;
        }
    }
}

extern "C" __global__ void d2_mark_settled(long long n, const long long* indptr,
                                           const int* indices, const double* cur,
                                           const int* status, int* flag) {
    D2_GRID_STRIDE(v, n) {
        int settled = status[v] < 0 && cur[v] >= 0.0;
        for (long long e = indptr[v]; settled && e < indptr[v + 1]; ++e) {
            const int w = indices[e];
            if (status[w] < 0 && !d2_beats(cur[v], v, cur[w], w)) settled = 0;
        }
        flag[v] = settled;
    }
}

extern "C" __global__ void d2_commit_settled(long long n, const int* flag, int round,
                                             int* status) {
    D2_GRID_STRIDE(v, n) {
        if (flag[v]) status[v] = round;
    }
}

// Heap sort of the row offsets a[0..m) into greedy pick order of the neighbours they name.
static __device__ bool d2_picked_before(int a, int b, const int* nbr, const double* cur) {
    return d2_beats(cur[nbr[a]], nbr[a], cur[nbr[b]], nbr[b]);
}

static __device__ void d2_sift_down(int* a, long long root, long long m, const int* nbr,
                                    const double* cur) {
    for (long long child = 2 * root + 1; child < m; child = 2 * root + 1) {
        if (child + 1 < m && d2_picked_before(a[child], a[child + 1], nbr, cur)) ++child;
        if (!d2_picked_before(a[root], a[child], nbr, cur)) return;
        const int t = a[root]; a[root] = a[child]; a[child] = t;
        root = child;
    }
}

static __device__ void d2_sort_pick_order(int* a, long long m, const int* nbr,
                                          const double* cur) {
    for (long long i = m / 2 - 1; i >= 0; --i) d2_sift_down(a, i, m, nbr, cur);
    for (long long end = m - 1; end > 0; --end) {
        const int t = a[0]; a[0] = a[end]; a[end] = t;
        d2_sift_down(a, 0, end, nbr, cur);
    }
}

// wt[e] for e = (v, u) is the weight the greedy uses when u updates v: w at (u, v) in row u.
// scratch is int32[E]; node v uses its own row's slice, so threads never share it.
// round < 0 recomputes every unselected node (after the host rolled the state back).
extern "C" __global__ void d2_recompute(long long n, const long long* indptr, const int* indices,
                                        const double* wt, const double* g0, const int* status,
                                        int round, int* scratch, double* cur) {
    D2_GRID_STRIDE(v, n) {
        if (status[v] >= 0) continue;
        const long long start = indptr[v];
        const int* nbr = indices + start;
        int* picked = scratch + start;
        long long m = 0;
        bool touched = false;
        for (long long e = start; e < indptr[v + 1]; ++e) {
            const int s = status[indices[e]];
            touched = touched || s == round;
            if (s >= 0) picked[m++] = (int)(e - start);
        }
        if (!touched && round >= 0) continue;
        d2_sort_pick_order(picked, m, nbr, cur);
        double acc = g0[v];
        for (long long i = 0; i < m; ++i) {
            const long long e = start + picked[i];
            acc = __dsub_rn(acc, __dmul_rn(wt[e], cur[indices[e]]));
        }
        cur[v] = acc;
    }
}
