// LayerNorm over the last axis of a (rows, n) array: one block per row; the
// mean, then the variance around it (two passes: no cancellation), then scale
// and shift. blockDim.x must be a power of two, at most MAX_THREADS.
#define MAX_THREADS 256

__device__ float block_sum_of(float* buf, float value) {
    int t = threadIdx.x;
    buf[t] = value;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) buf[t] += buf[t + stride];
        __syncthreads();
    }
    float result = buf[0];
    __syncthreads();  // everyone has read buf[0] before buf is reused
    return result;
}

extern "C" __global__ void layernorm_rows(const float* __restrict__ x, const float* __restrict__ weight,
                                          const float* __restrict__ bias, float* __restrict__ out, int n,
                                          float eps) {
    __shared__ float buf[MAX_THREADS];
    const float* row = x + (long long)blockIdx.x * n;
    float* dst = out + (long long)blockIdx.x * n;
    float s = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += row[j];
    float mean = block_sum_of(buf, s) / n;
    s = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float d = row[j] - mean;
        s += d * d;
    }
    float rstd = rsqrtf(block_sum_of(buf, s) / n + eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x) dst[j] = (row[j] - mean) * rstd * weight[j] + bias[j];
}
