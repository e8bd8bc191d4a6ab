// Blocks composed from layers: the encoder block (norm placement as a policy), the pre-norm
// causal decoder block, and the stack of blocks between an input layer and an optional final
// norm.
#pragma once

#include "ftune/blocks/decoder_block.hpp"
#include "ftune/blocks/encoder_block.hpp"
#include "ftune/blocks/stack.hpp"
