// c[z] = a[z] @ b[z] for (batch, m, k) @ (batch, k, n), row-major: TILE x TILE
// tiles of a and b staged in shared memory, so each element is read from
// global memory once per tile instead of once per output. Launch with
// blockDim (TILE, TILE) and gridDim (ceil(n / TILE), ceil(m / TILE), batch).
#define TILE 16

extern "C" __global__ void matmul_tiled(const float* __restrict__ a, const float* __restrict__ b,
                                        float* __restrict__ c, int m, int n, int k) {
    __shared__ float sa[TILE][TILE];
    __shared__ float sb[TILE][TILE];
    int tx = threadIdx.x, ty = threadIdx.y;
    int row = blockIdx.y * TILE + ty, col = blockIdx.x * TILE + tx;
    a += (long long)blockIdx.z * m * k;
    b += (long long)blockIdx.z * k * n;
    c += (long long)blockIdx.z * m * n;
    float acc = 0.0f;
    for (int start = 0; start < k; start += TILE) {
        sa[ty][tx] = (row < m && start + tx < k) ? a[(long long)row * k + start + tx] : 0.0f;
        sb[ty][tx] = (start + ty < k && col < n) ? b[(long long)(start + ty) * n + col] : 0.0f;
        __syncthreads();  // the whole tile is loaded before anyone uses it
#pragma unroll
        for (int kk = 0; kk < TILE; ++kk) acc += sa[ty][kk] * sb[kk][tx];
        __syncthreads();  // the whole tile is used before anyone overwrites it
    }
    if (row < m && col < n) c[(long long)row * n + col] = acc;
}
