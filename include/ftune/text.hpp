// ftune/text.hpp: BERT's WordPiece and byte-level BPE tokenizers, usable on their own (needs
// utf8proc only).
#pragma once

#include "ftune/text/bert.hpp"
#include "ftune/text/bpe.hpp"
