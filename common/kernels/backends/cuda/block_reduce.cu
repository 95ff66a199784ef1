// partial[block] = sum of the block's slice of x, by a tree reduction in shared
// memory. blockDim.x must be a power of two, at most MAX_THREADS.
#define MAX_THREADS 256

extern "C" __global__ void block_sum(const float* __restrict__ x, float* __restrict__ partial, int n) {
    __shared__ float buf[MAX_THREADS];
    int t = threadIdx.x;
    int i = blockIdx.x * blockDim.x + t;
    buf[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) buf[t] += buf[t + stride];
        __syncthreads();  // this step's writes are visible before the next step reads them
    }
    if (t == 0) partial[blockIdx.x] = buf[0];
}

// TEACHING EXAMPLE WITH A DELIBERATE BUG: block_sum without its barriers. A
// thread may read buf[t + stride] before its owner has written it; the answer
// depends on scheduling. ptxas reports 0 barriers for it, 1 for block_sum.
extern "C" __global__ void block_sum_racy(const float* __restrict__ x, float* __restrict__ partial, int n) {
    __shared__ float buf[MAX_THREADS];
    int t = threadIdx.x;
    int i = blockIdx.x * blockDim.x + t;
    buf[t] = i < n ? x[i] : 0.0f;
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) buf[t] += buf[t + stride];
    }
    if (t == 0) partial[blockIdx.x] = buf[0];
}
