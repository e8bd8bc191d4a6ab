// The layers ftune's models are composed of (include one by one or all through this header).
#pragma once

#include "ftune/layers/absent.hpp"
#include "ftune/layers/activation.hpp"
#include "ftune/layers/attention.hpp"
#include "ftune/layers/chain.hpp"
#include "ftune/layers/dropout.hpp"
#include "ftune/layers/embedding.hpp"
#include "ftune/layers/gated_mlp.hpp"
#include "ftune/layers/gradients.hpp"
#include "ftune/layers/input_embeddings.hpp"
#include "ftune/layers/layer_norm.hpp"
#include "ftune/layers/linear.hpp"
#include "ftune/layers/lora_linear.hpp"
#include "ftune/layers/pooler.hpp"
#include "ftune/layers/rms_norm.hpp"
#include "ftune/layers/rotary_attention.hpp"
