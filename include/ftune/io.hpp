// ftune/io.hpp: reading (and, with the Hugging Face issue, writing) model files. Needs
// nlohmann_json; kept out of the training-path umbrella ftune/ftune.hpp.
#pragma once

#include "ftune/io/hf.hpp"
#include "ftune/io/safetensors.hpp"
