// A persistent pool of worker threads for the CPU kernels: one parallel_for per kernel call, with
// the calling thread (MLX's CPU stream) taking the first share. Workers spin briefly before
// sleeping: a decode step calls the kernels a few hundred times, and waking a sleeping thread
// costs tens of microseconds each time.
#pragma once

#include <functional>

namespace pagedmlx {

// Runs fn(begin, end) over [0, count) split into at most num_threads() contiguous shares.
void parallel_for(int count, const std::function<void(int, int)>& fn);

// Threads the kernels use: PAGEDMLX_THREADS if set, else the CPUs this process may run on.
int num_threads();

}  // namespace pagedmlx
