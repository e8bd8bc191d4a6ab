// ftune/io.hpp: reading and writing model files (Hugging Face directories, safetensors, GGUF).
// Needs nlohmann_json; kept out of the training-path umbrella ftune/ftune.hpp.
#pragma once

#include "ftune/io/gguf.hpp"
#include "ftune/io/gguf_llama.hpp"
#include "ftune/io/hf.hpp"
#include "ftune/io/safetensors.hpp"
#include "ftune/io/sentence_transformers.hpp"
