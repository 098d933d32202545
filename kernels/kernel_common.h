// What every kernel file starts from: MLX's primitive and op headers, the CPU encoder, the ISA
// features, the thread pool, the argument checks, nanobind, and the mx / nb aliases.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "cpu_encoder.h"
#include "cpu_features.h"
#include "kernel_args.h"
#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "mlx/transforms.h"
#include "thread_pool.h"

namespace mx = mlx::core;
namespace nb = nanobind;
