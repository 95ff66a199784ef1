// Softmax over the last axis of a (rows, n) array: one block per row, the row
// max and the sum of exponentials by tree reductions in shared memory.
// blockDim.x must be a power of two, at most MAX_THREADS.
#define MAX_THREADS 256
// NVRTC (CuPy's compiler) has no math.h, so no INFINITY: -inf by its bit pattern.
#define NEG_INF __int_as_float(0xff800000)

__device__ float block_max(float* buf, float value) {
    int t = threadIdx.x;
    buf[t] = value;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) buf[t] = fmaxf(buf[t], buf[t + stride]);
        __syncthreads();
    }
    float result = buf[0];
    __syncthreads();  // everyone has read buf[0] before buf is reused
    return result;
}

__device__ float block_sum_of(float* buf, float value) {
    int t = threadIdx.x;
    buf[t] = value;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) buf[t] += buf[t + stride];
        __syncthreads();
    }
    float result = buf[0];
    __syncthreads();
    return result;
}

extern "C" __global__ void softmax_rows(const float* __restrict__ x, float* __restrict__ out, int n) {
    __shared__ float buf[MAX_THREADS];
    const float* row = x + (long long)blockIdx.x * n;
    float* dst = out + (long long)blockIdx.x * n;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, row[j]);  // coalesced: thread t, column t
    m = block_max(buf, m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(row[j] - m);
    float inv = 1.0f / block_sum_of(buf, s);
    for (int j = threadIdx.x; j < n; j += blockDim.x) dst[j] = expf(row[j] - m) * inv;
}
