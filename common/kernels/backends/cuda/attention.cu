// Attention forward over (batch*heads, seq, head_dim) row-major arrays:
// softmax(q k^T * scale) v, causal = key j visible to query i iff j <= i.
// NVRTC (CuPy's compiler) has no math.h, so no INFINITY: -inf by its bit pattern.
#define NEG_INF __int_as_float(0xff800000)

// Naive: one thread per query row; the (seq_q, seq_k) scores go through
// global memory (the `scores` scratch array). Grid: ceil(bh * seq_q / blockDim.x).
extern "C" __global__ void attention_naive(const float* __restrict__ q, const float* __restrict__ k,
                                           const float* __restrict__ v, float* __restrict__ scores,
                                           float* __restrict__ out, int bh, int seq_q, int seq_k, int d,
                                           int dv, float scale, int causal) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= bh * seq_q) return;
    int b = r / seq_q, i = r % seq_q;
    const float* qi = q + (long long)r * d;
    const float* kb = k + (long long)b * seq_k * d;
    const float* vb = v + (long long)b * seq_k * dv;
    float* s = scores + (long long)r * seq_k;
    int last = (causal && i + 1 < seq_k) ? i + 1 : seq_k;
    float m = NEG_INF;
    for (int j = 0; j < last; ++j) {
        float dot = 0.0f;
        for (int c = 0; c < d; ++c) dot += qi[c] * kb[(long long)j * d + c];
        s[j] = dot * scale;
        m = fmaxf(m, s[j]);
    }
    float total = 0.0f;
    for (int j = 0; j < last; ++j) {
        s[j] = expf(s[j] - m);
        total += s[j];
    }
    for (int c = 0; c < dv; ++c) {
        float acc = 0.0f;
        for (int j = 0; j < last; ++j) acc += s[j] * vb[(long long)j * dv + c];
        out[(long long)r * dv + c] = acc / total;
    }
}

// Flash: one block per (batch*head, tile of BLOCK queries), one thread per
// query. The block stages BLOCK keys and values at a time in shared memory
// (coalesced: consecutive threads, consecutive addresses) and each thread
// keeps an online softmax for its row: running max m, running sum l and
// accumulator acc, rescaled by exp(m_old - m_new) when the max grows.
// Grid: (bh, ceil(seq_q / BLOCK)); blockDim.x = BLOCK; d and dv (v's head_dim) <= MAX_HEAD_DIM.
#define BLOCK 32
#define MAX_HEAD_DIM 128

extern "C" __global__ void flash_attention_forward(const float* __restrict__ q, const float* __restrict__ k,
                                                   const float* __restrict__ v, float* __restrict__ out,
                                                   int seq_q, int seq_k, int d, int dv, float scale, int causal) {
    __shared__ float k_tile[BLOCK][MAX_HEAD_DIM];
    __shared__ float v_tile[BLOCK][MAX_HEAD_DIM];
    float q_row[MAX_HEAD_DIM], acc[MAX_HEAD_DIM], p[BLOCK];
    int b = blockIdx.x, t = threadIdx.x;
    int q_start = blockIdx.y * BLOCK, i = q_start + t;
    bool active = i < seq_q;
    const float* kb = k + (long long)b * seq_k * d;
    const float* vb = v + (long long)b * seq_k * dv;
    for (int c = 0; c < d; ++c) q_row[c] = active ? q[((long long)b * seq_q + i) * d + c] * scale : 0.0f;
    for (int c = 0; c < dv; ++c) acc[c] = 0.0f;
    float m = NEG_INF, l = 0.0f;
    int k_end = (causal && q_start + BLOCK < seq_k) ? q_start + BLOCK : seq_k;  // no query here sees past it
    for (int k_start = 0; k_start < k_end; k_start += BLOCK) {
        for (int e = t; e < BLOCK * d; e += BLOCK) {
            int r = e / d, c = e % d;
            k_tile[r][c] = k_start + r < seq_k ? kb[(long long)(k_start + r) * d + c] : 0.0f;
        }
        for (int e = t; e < BLOCK * dv; e += BLOCK) {
            int r = e / dv, c = e % dv;
            v_tile[r][c] = k_start + r < seq_k ? vb[(long long)(k_start + r) * dv + c] : 0.0f;
        }
        __syncthreads();  // the tile is loaded before anyone reads it
        if (active) {
            float tile_max = NEG_INF;
            for (int j = 0; j < BLOCK; ++j) {
                int key = k_start + j;
                float s = NEG_INF;
                if (key < seq_k && (!causal || key <= i)) {
                    s = 0.0f;
                    for (int c = 0; c < d; ++c) s += q_row[c] * k_tile[j][c];
                }
                p[j] = s;
                tile_max = fmaxf(tile_max, s);
            }
            if (tile_max > NEG_INF) {  // else every key of this tile is masked for this row
                float m_new = fmaxf(m, tile_max);
                float correction = expf(m - m_new);  // 0 on the first visible tile (m = -inf)
                l *= correction;
                for (int c = 0; c < dv; ++c) acc[c] *= correction;
                for (int j = 0; j < BLOCK; ++j) {
                    float w = expf(p[j] - m_new);  // masked keys: exp(-inf) = 0
                    l += w;
                    for (int c = 0; c < dv; ++c) acc[c] += w * v_tile[j][c];
                }
                m = m_new;
            }
        }
        __syncthreads();  // everyone is done with the tile before it is overwritten
    }
    if (active) {
        float inv = 1.0f / l;
        for (int c = 0; c < dv; ++c) out[((long long)b * seq_q + i) * dv + c] = acc[c] * inv;
    }
}
