// ftune: fine-tune and serve BERT-family encoders in C++. Umbrella header of the training path
// (core types, reference and CPU backends, typed primitives); no JSON, no tokenizer.
#pragma once

#include "ftune/version.hpp"
#include "ftune/config.hpp"
#include "ftune/core/error.hpp"
#include "ftune/core/shape.hpp"
#include "ftune/core/device.hpp"
#include "ftune/core/tensor.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/core/rng.hpp"
#include "ftune/core/context.hpp"
#include "ftune/core/concepts.hpp"
#include "ftune/core/types.hpp"
#include "ftune/backends/reference/primitives.hpp"
#include "ftune/backends/cpu/primitives.hpp"
#include "ftune/ops.hpp"
#include "ftune/layers.hpp"
#include "ftune/blocks.hpp"
#include "ftune/bert/encoder.hpp"
#include "ftune/bert/tasks.hpp"
#include "ftune/llama/decoder.hpp"
#include "ftune/gpt2/decoder.hpp"
#include "ftune/loss.hpp"
#include "ftune/optim.hpp"
#include "ftune/testing/check_gradients.hpp"
#if FTUNE_WITH_CUDA
#include "ftune/cuda/parameters.hpp"
#endif
