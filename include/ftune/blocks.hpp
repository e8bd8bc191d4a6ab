// Blocks composed from layers: the transformer encoder block (norm placement as a policy).
#pragma once

#include "ftune/blocks/encoder_block.hpp"
