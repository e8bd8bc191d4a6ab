// The tokenizer alone: built with include/ and utf8proc only (no Eigen, xsimd or JSON paths).
#include <ftune/text.hpp>

#include <cstdio>

int main() {
    ftune::text::vocabulary v;
    for (const char* t :
         {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "cafe", "!"})
        v.add(t);
    const ftune::text::bert_tokenizer tok(std::move(v), {});
    const auto e = tok.encode("Unaffable CAFÉ!");
    // [CLS] un ##aff ##able cafe ! [SEP]
    const std::vector<std::int32_t> want{2, 5, 6, 7, 8, 9, 3};
    if (e.ids != want) {
        std::puts("unexpected ids");
        return 1;
    }
    std::puts("ok");
    return 0;
}
