// Blocks composed from layers: the transformer block (norm placement as a policy) and the stack
// of blocks between an input layer and an optional final norm.
#pragma once

#include "ftune/blocks/encoder_block.hpp"
#include "ftune/blocks/stack.hpp"
