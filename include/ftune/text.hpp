// ftune/text.hpp: BERT's WordPiece tokenizer, usable on its own (needs utf8proc only).
#pragma once

#include "ftune/text/bert.hpp"
