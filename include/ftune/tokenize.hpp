// ftune/tokenize.hpp: BERT's WordPiece tokenizer, usable on its own (needs utf8proc only).
#pragma once

#include "ftune/tokenize/bert.hpp"
