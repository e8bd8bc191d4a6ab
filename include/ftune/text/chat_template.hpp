// text::chat_template: a model's chat template (the Jinja source in tokenizer_config.json,
// chat_template.jinja or GGUF's tokenizer.chat_template) rendered as Transformers'
// apply_chat_template renders it: Jinja2 with trim_blocks and lstrip_blocks, the loop controls
// and the {% generation %} tag, raise_exception, strftime_now, namespace() and Transformers'
// tojson. The interpreter covers the Jinja that chat templates use (statements for, if, set,
// generation, break, continue; Python-style expressions, filters, tests and string, list and
// dict methods); anything else is an ftune::error naming the template, the line and the
// construct, raised when the template is read.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <map>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN
namespace text {

/// One message of a conversation.
struct chat_message {
    std::string role;     ///< "system", "user", "assistant" (or the template's own roles)
    std::string content;  ///< its text
};

/// A rendered conversation and where the {% generation %} blocks put their text (the spans
/// Transformers' return_assistant_tokens_mask reports: what the assistant says).
struct chat_rendering {
    std::string text;                                             ///< the prompt text
    std::vector<std::pair<std::size_t, std::size_t>> generation;  ///< [begin, end) byte spans
};

namespace jinja_detail {

/// A template value: JSON keeping the order of keys (as Python's dicts), with `discarded`
/// standing for Jinja's undefined.
using value = nlohmann::ordered_json;

/// Jinja's undefined.
inline value undefined() {
    return value(value::value_t::discarded);
}
/// Whether v is undefined.
inline bool is_undefined(const value& v) {
    return v.is_discarded();
}

/// An expression node.
struct expr {
    enum kind {
        literal,
        name,
        attr,
        item,
        slice,
        call,
        filter,
        test,
        unary,
        binary,
        ternary,
        list,
        dict,
    } k = literal;
    std::string op;                           // operator, name, attribute, filter or test name
    value lit;                                // a literal
    std::vector<std::unique_ptr<expr>> args;  // operands, arguments, elements
    std::vector<std::string> keywords;        // a call's keyword names ("" for positionals)
    bool negate = false;                      // `is not`
    int height = 1;                           // the longest path to a leaf (bounded)
};
using expr_ptr = std::unique_ptr<expr>;

/// A statement node.
struct node {
    enum kind { text, output, if_, for_, set, set_block, generation, break_, continue_ } k = text;
    std::string text_;                      // text
    expr_ptr e;                             // output value, set value, for iterable
    std::vector<expr_ptr> conds;            // if / elif conditions (if_), loop filter (for_)
    std::vector<std::vector<node>> bodies;  // branches (if_: one per condition + else),
                                            // for_: body and else; set_block, generation: body
    std::vector<std::string> targets;       // for_ variables; set: name (and attribute)
    int line = 0;                           // where it starts
};

/// The Python text of a number or a value (str()), as Jinja outputs it.
inline std::string py_str(const value& v);

/// The Python repr of v (strings quoted as Python quotes them).
inline std::string py_repr(const value& v) {
    if (v.is_string()) {
        const std::string& s = v.get_ref<const std::string&>();
        const char q =
            s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
        std::string out(1, q);
        for (const char c : s) {
            if (c == q || c == '\\') out += '\\';
            if (c == '\n') {
                out += "\\n";
                continue;
            }
            if (c == '\t') {
                out += "\\t";
                continue;
            }
            if (c == '\r') {
                out += "\\r";
                continue;
            }
            out += c;
        }
        return out + q;
    }
    return py_str(v);
}

inline std::string py_str(const value& v) {
    if (is_undefined(v)) return "";
    if (v.is_string()) return v.get<std::string>();
    if (v.is_null()) return "None";
    if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
    if (v.is_number_integer()) return std::to_string(v.get<std::int64_t>());
    if (v.is_number_float()) {
        const double d = v.get<double>();
        if (std::isnan(d)) return "nan";
        if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
        char buf[64];
        const auto r = std::to_chars(buf, buf + sizeof buf, d);
        std::string s(buf, r.ptr);
        if (s.find_first_of(".eE") == std::string::npos) s += ".0";
        return s;
    }
    if (v.is_array()) {
        std::string out = "[";
        for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + py_repr(v[i]);
        return out + "]";
    }
    std::string out = "{";
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
        out += (first ? "" : ", ") + py_repr(value(it.key())) + ": " + py_repr(it.value());
        first = false;
    }
    return out + "}";
}

/// Python's json.dumps(v, ensure_ascii=False, indent, separators, sort_keys) (Transformers'
/// tojson): ", " and ": " between items unless indent is given (then "," and ": ").
inline std::string py_json(const value& v, int indent, int depth, bool sort_keys,
                           const std::string& item_sep, const std::string& key_sep) {
    if (is_undefined(v))
        throw error(errc::invalid_argument, "chat template", "tojson of undefined");
    if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
    if (v.is_null()) return "null";
    if (v.is_number_float()) {
        const double d = v.get<double>();
        if (std::isnan(d)) return "NaN";
        if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
        return py_str(v);
    }
    if (v.is_number()) return py_str(v);
    if (v.is_string()) {
        std::string out = "\"";
        for (const char c : v.get_ref<const std::string&>()) {
            const auto u = static_cast<unsigned char>(c);
            if (c == '"')
                out += "\\\"";
            else if (c == '\\')
                out += "\\\\";
            else if (c == '\n')
                out += "\\n";
            else if (c == '\r')
                out += "\\r";
            else if (c == '\t')
                out += "\\t";
            else if (c == '\b')
                out += "\\b";
            else if (c == '\f')
                out += "\\f";
            else if (u < 0x20) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", u);
                out += buf;
            } else
                out += c;
        }
        return out + "\"";
    }
    const bool arr = v.is_array();
    if (v.empty()) return arr ? "[]" : "{}";
    const std::string nl =
        indent >= 0 ? "\n" + std::string(std::size_t(indent * (depth + 1)), ' ') : std::string();
    const std::string end =
        indent >= 0 ? "\n" + std::string(std::size_t(indent * depth), ' ') : std::string();
    std::string out(1, arr ? '[' : '{');
    std::vector<std::string> keys;  // an object's keys in insertion order (or sorted)
    if (!arr) {
        for (auto it = v.begin(); it != v.end(); ++it)
            if (it.key() != "__namespace__") keys.push_back(it.key());
        if (sort_keys) std::sort(keys.begin(), keys.end());
    }
    for (std::size_t i = 0; i < (arr ? v.size() : keys.size()); ++i) {
        out += (i ? item_sep : "") + nl;
        if (arr)
            out += py_json(v[i], indent, depth + 1, sort_keys, item_sep, key_sep);
        else
            out += py_json(value(keys[i]), indent, depth + 1, sort_keys, item_sep, key_sep) +
                   key_sep + py_json(v[keys[i]], indent, depth + 1, sort_keys, item_sep, key_sep);
    }
    return out + end + (arr ? ']' : '}');
}

/// Python truthiness (undefined, none, false, 0, "" and empty containers are false).
inline bool truthy(const value& v) {
    if (is_undefined(v) || v.is_null()) return false;
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_number_integer()) return v.get<std::int64_t>() != 0;
    if (v.is_number()) return v.get<double>() != 0;
    if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
    return true;
}

/// The parser and evaluator of one template.
class engine {
  public:
    /// Parses source; `where` names the template in errors.
    engine(std::string_view source, std::string where) : where_(std::move(where)) {
        guarded([&] { parse(source); });
    }

    /// Renders with the given variables.
    chat_rendering render(const value& vars) const {
        chat_rendering out;
        guarded([&] {
            scope s{vars, nullptr};
            flow f = flow::normal;
            run(body_, s, out, f);
        });
        return out;
    }

  private:
    // runs f; what the JSON library or a number conversion throws becomes an ftune::error
    // naming the template
    template <class F>
    void guarded(F&& f) const {
        try {
            f();
        } catch (const error&) {
            throw;
        } catch (const std::exception& e) {
            throw error(errc::invalid_argument, where_,
                        std::string("cannot evaluate: ") + e.what());
        }
    }

    void parse(std::string_view source) {
        lex(source);
        std::size_t at = 0;
        body_ = parse_block(at, {});
        if (at != pieces_.size())
            fail(pieces_[at].line, std::string("unexpected {% ") + pieces_[at].text + " %}");
    }

    // ---- lexing: text, {{ expression }}, {% statement %} with Jinja's whitespace control ----
    struct piece {
        enum kind { raw, output, statement } k;  // text, {{ ... }}, {% ... %}
        std::string text;
        int line;
    };

    [[noreturn]] void fail(int line, const std::string& what) const {
        throw error(errc::unsupported, ftune::detail::cat(where_, ": line ", line), what);
    }

    void lex(std::string_view s) {
        std::size_t i = 0;
        int line = 1;
        bool strip_next = false, trim_next = false;  // a -%} / a block's %} before this text
        auto count_lines = [&](std::size_t a, std::size_t b) {
            line +=
                int(std::count(s.begin() + std::ptrdiff_t(a), s.begin() + std::ptrdiff_t(b), '\n'));
        };
        while (i <= s.size()) {
            std::size_t open = s.find('{', i);
            while (open != std::string_view::npos && open + 1 < s.size() && s[open + 1] != '{' &&
                   s[open + 1] != '%' && s[open + 1] != '#')
                open = s.find('{', open + 1);
            if (open + 1 >= s.size()) open = std::string_view::npos;
            std::string text(s.substr(i, open == std::string_view::npos ? s.size() - i : open - i));
            const char kind = open == std::string_view::npos ? 0 : s[open + 1];
            const bool minus = kind && open + 2 < s.size() && s[open + 2] == '-';
            const bool plus = kind && open + 2 < s.size() && s[open + 2] == '+';
            const char* ws = " \t\r\n\f\v";
            if (minus) {  // {%-: all trailing whitespace of the text before
                const std::size_t keep = text.find_last_not_of(ws);
                text.erase(keep == std::string::npos ? 0 : keep + 1);
            } else if (kind && kind != '{' && !plus) {
                // lstrip_blocks: spaces and tabs from the start of the line to a block tag
                const std::size_t nl = text.find_last_of('\n');
                const std::size_t from = nl == std::string::npos ? 0 : nl + 1;
                if ((nl != std::string::npos || i == 0) &&
                    text.find_first_not_of(" \t", from) == std::string::npos)
                    text.erase(from);
            }
            if (strip_next) {  // -%} before: all leading whitespace
                const std::size_t first = text.find_first_not_of(ws);
                text.erase(0, first == std::string::npos ? text.size() : first);
            } else if (trim_next && !text.empty()) {  // trim_blocks: one newline after a block
                if (text[0] == '\n')
                    text.erase(0, 1);
                else if (text.size() > 1 && text[0] == '\r' && text[1] == '\n')
                    text.erase(0, 2);
            }
            if (open == std::string_view::npos) {
                if (!text.empty()) pieces_.push_back({piece::raw, text, line});
                break;
            }
            if (!text.empty()) pieces_.push_back({piece::raw, text, line});
            count_lines(i, open);
            // the tag's end: }} or %} or #}, outside strings
            const char close = kind == '{' ? '}' : kind;
            std::size_t j = open + 2 + (minus || plus ? 1 : 0);
            char quote = 0;
            std::size_t end = std::string_view::npos;
            for (; j + 1 < s.size(); ++j) {
                const char c = s[j];
                if (kind != '#' && quote) {
                    if (c == '\\')
                        ++j;
                    else if (c == quote)
                        quote = 0;
                    continue;
                }
                if (kind != '#' && (c == '\'' || c == '"')) {
                    quote = c;
                    continue;
                }
                if (c == close && s[j + 1] == '}') {
                    end = j;
                    break;
                }
            }
            if (end == std::string_view::npos)
                fail(line, std::string("a tag opened with {") + kind + " is never closed");
            const bool end_minus = end > open + 2 && s[end - 1] == '-';
            const bool end_plus = end > open + 2 && s[end - 1] == '+';
            std::string inner(s.substr(
                open + 2 + (minus || plus ? 1 : 0),
                end - (end_minus || end_plus ? 1 : 0) - open - 2 - (minus || plus ? 1 : 0)));
            if (kind == '{') pieces_.push_back({piece::output, inner, line});
            if (kind == '%') pieces_.push_back({piece::statement, inner, line});
            count_lines(open, end + 2);
            i = end + 2;
            strip_next = end_minus;
            trim_next = kind != '{' && !end_plus;
        }
    }

    // ---- expressions ----
    struct tok {
        enum kind { name, number, string, op, end } k;
        std::string s;
        value v;
    };
    struct cursor {
        std::vector<tok> toks;
        std::size_t at = 0;
        int line = 0;
        int depth = 0;  // nesting of the expression being parsed
        const tok& peek(std::size_t ahead = 0) const {
            return toks[std::min(at + ahead, toks.size() - 1)];
        }
        bool is_op(const char* o) const { return peek().k == tok::op && peek().s == o; }
        bool is_name(const char* n) const { return peek().k == tok::name && peek().s == n; }
    };

    cursor tokenize(const std::string& src, int line) const {
        cursor c;
        c.line = line;
        std::size_t i = 0;
        while (i < src.size()) {
            const char ch = src[i];
            if (std::isspace(static_cast<unsigned char>(ch))) {
                ++i;
                continue;
            }
            if (std::isalpha(static_cast<unsigned char>(ch)) || ch == '_') {
                std::size_t j = i;
                while (j < src.size() &&
                       (std::isalnum(static_cast<unsigned char>(src[j])) || src[j] == '_'))
                    ++j;
                c.toks.push_back({tok::name, src.substr(i, j - i), {}});
                i = j;
                continue;
            }
            if (std::isdigit(static_cast<unsigned char>(ch))) {
                std::size_t j = i;
                bool real = false;
                while (j < src.size() && (std::isdigit(static_cast<unsigned char>(src[j])) ||
                                          (src[j] == '.' && !real && j + 1 < src.size() &&
                                           std::isdigit(static_cast<unsigned char>(src[j + 1])))))
                    real |= src[j++] == '.';
                const std::string num = src.substr(i, j - i);
                c.toks.push_back(
                    {tok::number, num, real ? value(std::stod(num)) : value(std::stoll(num))});
                i = j;
                continue;
            }
            if (ch == '\'' || ch == '"') {
                std::string out;
                std::size_t j = i + 1;
                for (; j < src.size() && src[j] != ch; ++j) {
                    if (src[j] != '\\' || j + 1 >= src.size()) {
                        out += src[j];
                        continue;
                    }
                    const char e = src[++j];
                    out += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
                }
                if (j >= src.size()) fail(line, "a string is never closed: " + src);
                c.toks.push_back({tok::string, out, value(out)});
                i = j + 1;
                continue;
            }
            static const char* ops[] = {"==", "!=", "<=", ">=", "//", "**", "+", "-", "*",
                                        "/",  "%",  "~",  "<",  ">",  "(",  ")", "[", "]",
                                        "{",  "}",  ".",  ",",  ":",  "|",  "="};
            bool found = false;
            for (const char* o : ops)
                if (src.compare(i, std::strlen(o), o) == 0) {
                    c.toks.push_back({tok::op, o, {}});
                    i += std::strlen(o);
                    found = true;
                    break;
                }
            if (!found) fail(line, std::string("unexpected character '") + ch + "' in " + src);
        }
        c.toks.push_back({tok::end, "", {}});
        return c;
    }

    void expect(cursor& c, const char* o) const {
        if (!c.is_op(o))
            fail(c.line, std::string("expected '") + o + "' before '" + c.peek().s + "'");
        ++c.at;
    }
    // gives e its next operand, keeping the tree's height bounded (a chain such as 1+1+...+1
    // is as deep as it is long, and evaluation recurses through it)
    void adopt(expr& e, expr_ptr child) const {
        if (child) e.height = std::max(e.height, child->height + 1);
        if (e.height > 4 * max_depth)
            fail(parse_line_,
                 ftune::detail::cat("an expression nested more than ", 4 * max_depth, " deep"));
        e.args.push_back(std::move(child));
    }
    static expr_ptr make(expr::kind k, std::string op = {}) {
        auto e = std::make_unique<expr>();
        e->k = k;
        e->op = std::move(op);
        return e;
    }

    // the parser recurses with the nesting: bounded, so that a hostile template cannot
    // exhaust the stack
    static constexpr int max_depth = 64;
    struct nested {
        int& depth;
        nested(int& d, int line, const engine& e) : depth(d) {
            if (++depth > max_depth)
                e.fail(line, ftune::detail::cat("nested more than ", max_depth, " deep"));
        }
        ~nested() { --depth; }
    };

    expr_ptr parse_expr(cursor& c) const {  // a if b else c
        const nested guard(c.depth, c.line, *this);
        auto e = parse_or(c);
        if (c.is_name("if")) {
            ++c.at;
            auto t = make(expr::ternary);
            auto cond = parse_or(c);
            adopt(*t, std::move(e));
            adopt(*t, std::move(cond));
            if (c.is_name("else")) {
                ++c.at;
                adopt(*t, parse_expr(c));
            }
            return t;
        }
        return e;
    }
    expr_ptr binary(std::string op, expr_ptr a, expr_ptr b) const {
        auto e = make(expr::binary, std::move(op));
        adopt(*e, std::move(a));
        adopt(*e, std::move(b));
        return e;
    }
    expr_ptr parse_or(cursor& c) const {
        auto e = parse_and(c);
        while (c.is_name("or")) ++c.at, e = binary("or", std::move(e), parse_and(c));
        return e;
    }
    expr_ptr parse_and(cursor& c) const {
        auto e = parse_not(c);
        while (c.is_name("and")) ++c.at, e = binary("and", std::move(e), parse_not(c));
        return e;
    }
    expr_ptr parse_not(cursor& c) const {
        const nested guard(c.depth, c.line, *this);
        if (c.is_name("not")) {
            ++c.at;
            auto e = make(expr::unary, "not");
            adopt(*e, parse_not(c));
            return e;
        }
        return parse_compare(c);
    }
    expr_ptr parse_compare(cursor& c) const {
        auto e = parse_add(c);
        for (;;) {
            const auto& t = c.peek();
            if (t.k == tok::op && (t.s == "==" || t.s == "!=" || t.s == "<" || t.s == ">" ||
                                   t.s == "<=" || t.s == ">=")) {
                const std::string op = t.s;
                ++c.at;
                e = binary(op, std::move(e), parse_add(c));
            } else if (c.is_name("in")) {
                ++c.at;
                e = binary("in", std::move(e), parse_add(c));
            } else if (c.is_name("not") && c.peek(1).k == tok::name && c.peek(1).s == "in") {
                c.at += 2;
                e = binary("not in", std::move(e), parse_add(c));
            } else {
                return e;
            }
        }
    }
    expr_ptr parse_add(cursor& c) const {
        auto e = parse_concat(c);
        while (c.is_op("+") || c.is_op("-")) {
            const std::string op = c.peek().s;
            ++c.at;
            e = binary(op, std::move(e), parse_concat(c));
        }
        return e;
    }
    expr_ptr parse_concat(cursor& c) const {
        auto e = parse_mul(c);
        while (c.is_op("~")) ++c.at, e = binary("~", std::move(e), parse_mul(c));
        return e;
    }
    expr_ptr parse_mul(cursor& c) const {
        auto e = parse_unary(c);
        while (c.is_op("*") || c.is_op("/") || c.is_op("//") || c.is_op("%")) {
            const std::string op = c.peek().s;
            ++c.at;
            e = binary(op, std::move(e), parse_unary(c));
        }
        return e;
    }
    expr_ptr parse_unary(cursor& c) const {
        const nested guard(c.depth, c.line, *this);
        if (c.is_op("-") || c.is_op("+")) {
            const std::string op = c.peek().s;
            ++c.at;
            auto e = make(expr::unary, op);
            adopt(*e, parse_unary(c));
            return e;
        }
        return parse_filtered(c);
    }
    // arguments of a call: (a, b, key=c)
    void parse_args(cursor& c, expr& e) const {
        expect(c, "(");
        while (!c.is_op(")")) {
            std::string key;
            if (c.peek().k == tok::name && c.peek(1).k == tok::op && c.peek(1).s == "=") {
                key = c.peek().s;
                c.at += 2;
            }
            e.keywords.push_back(key);
            e.args.push_back(parse_expr(c));
            if (!c.is_op(",")) break;
            ++c.at;
        }
        expect(c, ")");
    }
    expr_ptr parse_filtered(cursor& c) const {
        auto e = parse_postfix(c);
        for (;;) {
            if (c.is_op("|")) {
                ++c.at;
                if (c.peek().k != tok::name) fail(c.line, "expected a filter name after |");
                auto f = make(expr::filter, c.peek().s);
                if (!known("filter", f->op))
                    fail(c.line, "the filter '" + f->op + "' is not supported");
                ++c.at;
                adopt(*f, std::move(e));
                f->keywords.push_back("");
                if (c.is_op("(")) parse_args(c, *f);
                e = std::move(f);
            } else if (c.is_name("is")) {
                ++c.at;
                auto t = make(expr::test);
                if (c.is_name("not")) ++c.at, t->negate = true;
                if (c.peek().k != tok::name) fail(c.line, "expected a test name after is");
                t->op = c.peek().s;
                if (!known("test", t->op))
                    fail(c.line, "the test 'is " + t->op + "' is not supported");
                ++c.at;
                adopt(*t, std::move(e));
                t->keywords.push_back("");
                if (c.is_op("(")) parse_args(c, *t);
                e = std::move(t);
            } else {
                return e;
            }
        }
    }
    expr_ptr parse_postfix(cursor& c) const {
        auto e = parse_primary(c);
        for (;;) {
            if (c.is_op(".")) {
                ++c.at;
                if (c.peek().k != tok::name) fail(c.line, "expected an attribute name after .");
                auto a = make(expr::attr, c.peek().s);
                ++c.at;
                adopt(*a, std::move(e));
                e = std::move(a);
            } else if (c.is_op("[")) {
                ++c.at;
                expr_ptr parts[3];
                bool sliced = false;
                for (int p = 0; p < 3; ++p) {
                    if (!c.is_op(":") && !c.is_op("]")) parts[p] = parse_expr(c);
                    if (!c.is_op(":")) break;
                    sliced = true;
                    ++c.at;
                }
                expect(c, "]");
                if (!sliced && !parts[0]) fail(c.line, "an empty subscript []");
                auto s = make(sliced ? expr::slice : expr::item);
                adopt(*s, std::move(e));
                if (sliced)
                    for (auto& p : parts) adopt(*s, std::move(p));
                else
                    adopt(*s, std::move(parts[0]));
                e = std::move(s);
            } else if (c.is_op("(")) {
                if (e->k == expr::name && !known("function", e->op))
                    fail(c.line, "the function '" + e->op + "' is not supported");
                if (e->k == expr::attr && !known("method", e->op))
                    fail(c.line, "the method '" + e->op + "' is not supported");
                if (e->k != expr::name && e->k != expr::attr)
                    fail(c.line, "only functions and methods can be called");
                auto call = make(expr::call);
                adopt(*call, std::move(e));
                call->keywords.push_back("");
                parse_args(c, *call);
                e = std::move(call);
            } else {
                return e;
            }
        }
    }
    expr_ptr parse_primary(cursor& c) const {
        const tok t = c.peek();
        ++c.at;
        if (t.k == tok::number || t.k == tok::string) {
            auto e = make(expr::literal);
            e->lit = t.v;
            // adjacent strings join, as in Python
            while (t.k == tok::string && c.peek().k == tok::string) {
                e->lit = e->lit.get<std::string>() + c.peek().s;
                ++c.at;
            }
            return e;
        }
        if (t.k == tok::name) {
            auto e = make(expr::literal);
            if (t.s == "true" || t.s == "True")
                e->lit = true;
            else if (t.s == "false" || t.s == "False")
                e->lit = false;
            else if (t.s == "none" || t.s == "None")
                e->lit = nullptr;
            else
                return make(expr::name, t.s);
            return e;
        }
        if (t.k == tok::op && t.s == "(") {
            auto e = parse_expr(c);
            if (c.is_op(",")) {  // a tuple: a list here
                auto l = make(expr::list);
                adopt(*l, std::move(e));
                while (c.is_op(",")) {
                    ++c.at;
                    if (c.is_op(")")) break;
                    adopt(*l, parse_expr(c));
                }
                e = std::move(l);
            }
            expect(c, ")");
            return e;
        }
        if (t.k == tok::op && t.s == "[") {
            auto l = make(expr::list);
            while (!c.is_op("]")) {
                adopt(*l, parse_expr(c));
                if (!c.is_op(",")) break;
                ++c.at;
            }
            expect(c, "]");
            return l;
        }
        if (t.k == tok::op && t.s == "{") {
            auto d = make(expr::dict);
            while (!c.is_op("}")) {
                adopt(*d, parse_expr(c));
                expect(c, ":");
                adopt(*d, parse_expr(c));
                if (!c.is_op(",")) break;
                ++c.at;
            }
            expect(c, "}");
            return d;
        }
        fail(c.line, "unexpected '" + t.s + "' in an expression");
    }
    expr_ptr parse_whole(const std::string& src, int line) const {
        parse_line_ = line;
        auto c = tokenize(src, line);
        auto e = parse_expr(c);
        if (c.peek().k != tok::end) fail(line, "unexpected '" + c.peek().s + "' in " + src);
        return e;
    }

    // what the evaluator runs: other names are refused when the template is read
    static bool known(std::string_view kind, const std::string& name) {
        static const std::vector<std::string_view> filters = {
            "trim",       "striptags",  "length", "count",   "upper",    "lower",   "capitalize",
            "string",     "int",        "float",  "default", "d",        "first",   "last",
            "join",       "replace",    "list",   "items",   "dictsort", "reverse", "tojson",
            "selectattr", "rejectattr", "map",    "indent",  "safe",     "e",       "escape"};
        static const std::vector<std::string_view> tests = {
            "defined", "undefined", "none",    "string",   "number",   "integer",
            "float",   "boolean",   "mapping", "sequence", "iterable", "true",
            "false",   "odd",       "even",    "eq",       "equalto"};
        static const std::vector<std::string_view> functions = {"raise_exception", "namespace",
                                                                "range", "strftime_now", "dict"};
        static const std::vector<std::string_view> methods = {
            "strip",      "lstrip",     "rstrip",   "upper",  "lower",   "title",
            "capitalize", "startswith", "endswith", "split",  "replace", "find",
            "count",      "items",      "keys",     "values", "get"};
        const auto& list = kind == "filter"     ? filters
                           : kind == "test"     ? tests
                           : kind == "function" ? functions
                                                : methods;
        return std::find(list.begin(), list.end(), name) != list.end();
    }

    // ---- statements ----
    static std::string keyword(const std::string& stmt) {
        std::size_t b = stmt.find_first_not_of(" \t\r\n");
        if (b == std::string::npos) return {};
        std::size_t e = b;
        while (e < stmt.size() &&
               (std::isalnum(static_cast<unsigned char>(stmt[e])) || stmt[e] == '_'))
            ++e;
        return stmt.substr(b, e - b);
    }
    static std::string rest(const std::string& stmt) {
        const std::size_t b = stmt.find_first_not_of(" \t\r\n");
        std::size_t e = b;
        while (e < stmt.size() &&
               (std::isalnum(static_cast<unsigned char>(stmt[e])) || stmt[e] == '_'))
            ++e;
        return stmt.substr(e);
    }

    // statements until one whose keyword is in `ends` (left at `at`) or the end
    std::vector<node> parse_block(std::size_t& at, const std::vector<std::string>& ends) const {
        const nested guard(block_depth_, at < pieces_.size() ? pieces_[at].line : 0, *this);
        std::vector<node> out;
        while (at < pieces_.size()) {
            const piece& p = pieces_[at];
            node n;
            n.line = p.line;
            if (p.k == piece::raw) {
                n.k = node::text;
                n.text_ = p.text;
                out.push_back(std::move(n));
                ++at;
                continue;
            }
            if (p.k == piece::output) {
                n.k = node::output;
                n.e = parse_whole(p.text, p.line);
                out.push_back(std::move(n));
                ++at;
                continue;
            }
            const std::string kw = keyword(p.text);
            if (std::find(ends.begin(), ends.end(), kw) != ends.end()) return out;
            ++at;
            if (kw == "if") {
                n.k = node::if_;
                n.conds.push_back(parse_whole(rest(p.text), p.line));
                for (;;) {
                    n.bodies.push_back(parse_block(at, {"elif", "else", "endif"}));
                    if (at >= pieces_.size()) fail(p.line, "{% if %} without {% endif %}");
                    const std::string k = keyword(pieces_[at].text);
                    if (k == "elif") {
                        n.conds.push_back(parse_whole(rest(pieces_[at].text), pieces_[at].line));
                        ++at;
                        continue;
                    }
                    ++at;
                    if (k == "else") {
                        n.bodies.push_back(parse_block(at, {"endif"}));
                        if (at >= pieces_.size()) fail(p.line, "{% if %} without {% endif %}");
                        ++at;
                    }
                    break;
                }
            } else if (kw == "for") {
                n.k = node::for_;
                parse_line_ = p.line;
                auto c = tokenize(rest(p.text), p.line);
                while (c.peek().k == tok::name && c.peek().s != "in") {
                    n.targets.push_back(c.peek().s);
                    ++c.at;
                    if (!c.is_op(",")) break;
                    ++c.at;
                }
                if (n.targets.empty() || !c.is_name("in"))
                    fail(p.line,
                         std::string("expected {% for NAME in EXPR %}, got {% ") + p.text + " %}");
                ++c.at;
                n.e = parse_or(c);  // the iterable (a trailing `if` filters the loop)
                if (c.is_name("if")) {
                    ++c.at;
                    n.conds.push_back(parse_expr(c));
                }
                if (c.is_name("recursive")) fail(p.line, "recursive loops are not supported");
                if (c.peek().k != tok::end) fail(p.line, "unexpected '" + c.peek().s + "' in for");
                n.bodies.push_back(parse_block(at, {"else", "endfor"}));
                if (at >= pieces_.size()) fail(p.line, "{% for %} without {% endfor %}");
                if (keyword(pieces_[at].text) == "else") {
                    ++at;
                    n.bodies.push_back(parse_block(at, {"endfor"}));
                    if (at >= pieces_.size()) fail(p.line, "{% for %} without {% endfor %}");
                }
                ++at;
            } else if (kw == "set") {
                const std::string r = rest(p.text);
                const std::size_t eq = r.find('=');
                std::string target = r.substr(0, eq == std::string::npos ? r.size() : eq);
                target.erase(0, target.find_first_not_of(" \t"));
                target.erase(target.find_last_not_of(" \t") + 1);
                const std::size_t dot = target.find('.');
                n.targets.push_back(target.substr(0, dot));
                if (dot != std::string::npos) n.targets.push_back(target.substr(dot + 1));
                if (n.targets[0].empty() || !std::all_of(target.begin(), target.end(), [](char ch) {
                        return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' ||
                               ch == '.';
                    }))
                    fail(p.line, "unsupported assignment {% " + p.text + " %}");
                if (eq == std::string::npos) {  // {% set x %}...{% endset %}
                    n.k = node::set_block;
                    n.bodies.push_back(parse_block(at, {"endset"}));
                    if (at >= pieces_.size()) fail(p.line, "{% set %} without {% endset %}");
                    ++at;
                } else {
                    n.k = node::set;
                    n.e = parse_whole(r.substr(eq + 1), p.line);
                }
            } else if (kw == "generation") {
                n.k = node::generation;
                n.bodies.push_back(parse_block(at, {"endgeneration"}));
                if (at >= pieces_.size())
                    fail(p.line, "{% generation %} without {% endgeneration %}");
                ++at;
            } else if (kw == "break") {
                n.k = node::break_;
            } else if (kw == "continue") {
                n.k = node::continue_;
            } else {
                fail(p.line, "{% " + kw + " %} is not supported" +
                                 (kw.rfind("end", 0) == 0 || kw == "else" || kw == "elif"
                                      ? " here (no block opens it)"
                                      : " by ftune's chat templates"));
            }
            out.push_back(std::move(n));
        }
        return out;
    }

    // ---- evaluation ----
    struct scope {
        value vars;
        scope* parent;
        value* find(const std::string& name) {
            for (scope* s = this; s; s = s->parent)
                if (s->vars.is_object())
                    if (auto it = s->vars.find(name); it != s->vars.end()) return &*it;
            return nullptr;
        }
    };
    enum class flow { normal, break_, continue_ };

    void run(const std::vector<node>& body, scope& s, chat_rendering& out, flow& f) const {
        for (const node& n : body) {
            switch (n.k) {
                case node::text:
                    out.text += n.text_;
                    break;
                case node::output:
                    out.text += py_str(eval(*n.e, s, n.line));
                    break;
                case node::if_: {
                    std::size_t i = 0;
                    while (i < n.conds.size() && !truthy(eval(*n.conds[i], s, n.line))) ++i;
                    if (i < n.bodies.size()) run(n.bodies[i], s, out, f);
                    break;
                }
                case node::for_:
                    run_for(n, s, out);
                    break;
                case node::set:
                case node::set_block: {
                    value v;
                    if (n.k == node::set) {
                        v = eval(*n.e, s, n.line);
                    } else {
                        chat_rendering inner;
                        flow g = flow::normal;
                        run(n.bodies[0], s, inner, g);
                        v = inner.text;
                    }
                    if (n.targets.size() == 1) {
                        s.vars[n.targets[0]] = v;
                    } else {  // ns.attr = v: the namespace object, wherever it lives
                        value* ns = s.find(n.targets[0]);
                        if (!ns || !ns->is_object() || !ns->contains("__namespace__"))
                            fail(n.line, n.targets[0] + " is not a namespace()");
                        (*ns)[n.targets[1]] = v;
                    }
                    break;
                }
                case node::generation: {
                    const std::size_t begin = out.text.size();
                    run(n.bodies[0], s, out, f);
                    out.generation.emplace_back(begin, out.text.size());
                    break;
                }
                case node::break_:
                    f = flow::break_;
                    return;
                case node::continue_:
                    f = flow::continue_;
                    return;
            }
            if (double(out.text.size()) > max_text)
                fail(n.line, "the output is longer than the limit of 64 MiB");
            if (f != flow::normal) return;
        }
    }

    void run_for(const node& n, scope& s, chat_rendering& out) const {
        value seq = eval(*n.e, s, n.line);
        std::vector<value> items;
        if (seq.is_array()) {
            items.assign(seq.begin(), seq.end());
        } else if (seq.is_object()) {  // a dict iterates over its keys
            for (auto it = seq.begin(); it != seq.end(); ++it)
                if (it.key() != "__namespace__") items.push_back(it.key());
        } else if (seq.is_string()) {
            for (const char ch : seq.get<std::string>()) items.push_back(std::string(1, ch));
        } else if (!is_undefined(seq) && !seq.is_null()) {
            fail(n.line, "cannot loop over " + py_repr(seq));
        } else if (is_undefined(seq)) {
            items.clear();
        }
        if (!n.conds.empty()) {  // {% for x in xs if cond %}
            std::vector<value> kept;
            for (const auto& it : items) {
                scope inner{value::object(), &s};
                bind(n, inner, it);
                if (truthy(eval(*n.conds[0], inner, n.line))) kept.push_back(it);
            }
            items = std::move(kept);
        }
        if (items.empty()) {
            if (n.bodies.size() > 1) {
                flow f = flow::normal;
                run(n.bodies[1], s, out, f);
            }
            return;
        }
        for (std::size_t i = 0; i < items.size(); ++i) {
            scope inner{value::object(), &s};
            bind(n, inner, items[i]);
            const std::size_t len = items.size();
            value loop = {{"index", i + 1},          {"index0", i},   {"first", i == 0},
                          {"last", i + 1 == len},    {"length", len}, {"revindex", len - i},
                          {"revindex0", len - i - 1}};
            loop["previtem"] = i ? items[i - 1] : undefined();
            loop["nextitem"] = i + 1 < len ? items[i + 1] : undefined();
            inner.vars["loop"] = loop;
            flow f = flow::normal;
            run(n.bodies[0], inner, out, f);
            if (f == flow::break_) break;
        }
    }
    void bind(const node& n, scope& inner, const value& item) const {
        if (n.targets.size() == 1) {
            inner.vars[n.targets[0]] = item;
            return;
        }
        if (!item.is_array() || item.size() != n.targets.size())
            fail(n.line, ftune::detail::cat("cannot unpack ", py_repr(item), " into ",
                                            n.targets.size(), " names"));
        for (std::size_t k = 0; k < n.targets.size(); ++k) inner.vars[n.targets[k]] = item[k];
    }

    static double num(const value& v) {
        if (v.is_boolean()) return v.get<bool>() ? 1 : 0;
        return v.get<double>();
    }
    static bool both_ints(const value& a, const value& b) {
        return (a.is_number_integer() || a.is_boolean()) &&
               (b.is_number_integer() || b.is_boolean());
    }
    static std::int64_t to_int(const value& v) {
        return v.is_boolean() ? v.get<bool>() : v.get<std::int64_t>();
    }
    static bool equal(const value& a, const value& b) {
        if (is_undefined(a) || is_undefined(b)) return is_undefined(a) && is_undefined(b);
        if ((a.is_number() || a.is_boolean()) && (b.is_number() || b.is_boolean()))
            return num(a) == num(b);
        return a == b;
    }

    value eval(const expr& e, scope& s, int line) const {
        switch (e.k) {
            case expr::literal:
                return e.lit;
            case expr::name: {
                if (value* v = s.find(e.op)) return *v;
                return undefined();
            }
            case expr::list: {
                value l = value::array();
                for (const auto& a : e.args) l.push_back(eval(*a, s, line));
                return l;
            }
            case expr::dict: {
                value d = value::object();
                for (std::size_t i = 0; i + 1 < e.args.size(); i += 2) {
                    const value k = eval(*e.args[i], s, line);
                    if (!k.is_string()) fail(line, "dictionary keys must be strings");
                    d[k.get<std::string>()] = eval(*e.args[i + 1], s, line);
                }
                return d;
            }
            case expr::attr: {
                const value o = eval(*e.args[0], s, line);
                return member(o, e.op, line);
            }
            case expr::item: {
                const value o = eval(*e.args[0], s, line);
                const value k = eval(*e.args[1], s, line);
                if (o.is_object() && k.is_string()) {
                    const auto it = o.find(k.get<std::string>());
                    return it == o.end() ? undefined() : *it;
                }
                if ((o.is_array() || o.is_string()) && k.is_number_integer()) {
                    const auto n =
                        std::int64_t(o.is_array() ? o.size() : o.get<std::string>().size());
                    std::int64_t i = k.get<std::int64_t>();
                    if (i < 0) i += n;
                    if (i < 0 || i >= n) return undefined();
                    if (o.is_array()) return o[std::size_t(i)];
                    return std::string(1, o.get<std::string>()[std::size_t(i)]);
                }
                if (is_undefined(o)) fail(line, "subscript of an undefined value");
                return undefined();
            }
            case expr::slice: {
                const value o = eval(*e.args[0], s, line);
                auto part = [&](int p) -> std::optional<std::int64_t> {
                    if (!e.args[std::size_t(p)]) return std::nullopt;
                    const value v = eval(*e.args[std::size_t(p)], s, line);
                    if (v.is_null()) return std::nullopt;
                    if (!v.is_number_integer()) fail(line, "slice indices must be integers");
                    return v.get<std::int64_t>();
                };
                return slice(o, part(1), part(2), part(3), line);
            }
            case expr::unary: {
                const value v = eval(*e.args[0], s, line);
                if (e.op == "not") return !truthy(v);
                if (!v.is_number()) fail(line, "unary " + e.op + " of " + py_repr(v));
                if (e.op == "+") return v;
                return v.is_number_integer() ? value(-v.get<std::int64_t>())
                                             : value(-v.get<double>());
            }
            case expr::ternary: {
                if (truthy(eval(*e.args[1], s, line))) return eval(*e.args[0], s, line);
                return e.args.size() > 2 ? eval(*e.args[2], s, line) : undefined();
            }
            case expr::binary:
                return binary_op(e, s, line);
            case expr::test:
                return test(e, s, line);
            case expr::filter:
                return filter(e, s, line);
            case expr::call:
                return call(e, s, line);
        }
        return undefined();
    }

    value slice(const value& o, std::optional<std::int64_t> a, std::optional<std::int64_t> b,
                std::optional<std::int64_t> step, int line) const {
        if (!o.is_array() && !o.is_string()) fail(line, "cannot slice " + py_repr(o));
        const std::int64_t n = std::int64_t(o.is_array() ? o.size() : o.get<std::string>().size());
        const std::int64_t st = step.value_or(1);
        if (st == 0) fail(line, "slice step cannot be zero");
        auto clamp = [&](std::optional<std::int64_t> v, std::int64_t dflt) {
            if (!v) return dflt;
            std::int64_t x = *v < 0 ? *v + n : *v;
            if (st > 0) return std::clamp<std::int64_t>(x, 0, n);
            return std::clamp<std::int64_t>(x, -1, n - 1);
        };
        const std::int64_t from = clamp(a, st > 0 ? 0 : n - 1), to = clamp(b, st > 0 ? n : -1);
        value out = o.is_array() ? value::array() : value("");
        std::string str;
        for (std::int64_t i = from; st > 0 ? i < to : i > to; i += st) {
            if (o.is_array())
                out.push_back(o[std::size_t(i)]);
            else
                str += o.get<std::string>()[std::size_t(i)];
        }
        return o.is_array() ? out : value(str);
    }

    value binary_op(const expr& e, scope& s, int line) const {
        const std::string& op = e.op;
        if (op == "and") {
            value a = eval(*e.args[0], s, line);
            return truthy(a) ? eval(*e.args[1], s, line) : a;
        }
        if (op == "or") {
            value a = eval(*e.args[0], s, line);
            return truthy(a) ? a : eval(*e.args[1], s, line);
        }
        const value a = eval(*e.args[0], s, line), b = eval(*e.args[1], s, line);
        if (op == "==") return equal(a, b);
        if (op == "!=") return !equal(a, b);
        if (op == "in" || op == "not in") {
            bool found = false;
            if (b.is_string() && a.is_string())
                found = b.get<std::string>().find(a.get<std::string>()) != std::string::npos;
            else if (b.is_array())
                found =
                    std::any_of(b.begin(), b.end(), [&](const value& x) { return equal(x, a); });
            else if (b.is_object() && a.is_string())
                found = b.contains(a.get<std::string>());
            else if (!is_undefined(b) && !b.is_null())
                fail(line, "'in' needs a string, list or dict, not " + py_repr(b));
            else
                fail(line, "'in' of an undefined value");
            return op == "in" ? found : !found;
        }
        if (op == "~") return sized(py_str(a) + py_str(b), line);
        if (op == "<" || op == ">" || op == "<=" || op == ">=") {
            int c = 0;
            if (a.is_string() && b.is_string())
                c = a.get<std::string>().compare(b.get<std::string>());
            else if ((a.is_number() || a.is_boolean()) && (b.is_number() || b.is_boolean()))
                c = num(a) < num(b) ? -1 : num(a) > num(b) ? 1 : 0;
            else
                fail(line, "cannot compare " + py_repr(a) + " and " + py_repr(b));
            return op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0;
        }
        if (op == "+") {
            if (a.is_string() && b.is_string())
                return sized(a.get<std::string>() + b.get<std::string>(), line);
            if (a.is_array() && b.is_array()) {
                value r = a;
                for (const auto& x : b) r.push_back(x);
                return r;
            }
        }
        if (op == "*" && a.is_string() && b.is_number_integer()) {
            if (double(a.get<std::string>().size()) * double(b.get<std::int64_t>()) > max_text)
                fail(line, "a string longer than the limit of 64 MiB");
            std::string r;
            for (std::int64_t i = 0; i < b.get<std::int64_t>(); ++i) r += a.get<std::string>();
            return r;
        }
        if (!(a.is_number() || a.is_boolean()) || !(b.is_number() || b.is_boolean()))
            fail(line, "unsupported operands of " + op + ": " + py_repr(a) + " and " + py_repr(b));
        if (both_ints(a, b) && op != "/") {
            const std::int64_t x = to_int(a), y = to_int(b);
            if (op == "+") return x + y;
            if (op == "-") return x - y;
            if (op == "*") return x * y;
            if (y == 0) fail(line, "division by zero");
            if (op == "//") return x / y - ((x % y != 0) && ((x < 0) != (y < 0)));
            if (op == "%") return ((x % y) + y) % y;
        }
        const double x = num(a), y = num(b);
        if (op == "+") return x + y;
        if (op == "-") return x - y;
        if (op == "*") return x * y;
        if (y == 0) fail(line, "division by zero");
        if (op == "/") return x / y;
        if (op == "//") return std::floor(x / y);
        return x - std::floor(x / y) * y;
    }

    value test(const expr& e, scope& s, int line) const {
        const value v = eval(*e.args[0], s, line);
        const std::string& t = e.op;
        bool r;
        if (t == "defined")
            r = !is_undefined(v);
        else if (t == "undefined")
            r = is_undefined(v);
        else if (t == "none")
            r = v.is_null();
        else if (t == "string")
            r = v.is_string();
        else if (t == "number")
            r = v.is_number();
        else if (t == "integer")
            r = v.is_number_integer();
        else if (t == "float")
            r = v.is_number_float();
        else if (t == "boolean")
            r = v.is_boolean();
        else if (t == "mapping")
            r = v.is_object();
        else if (t == "sequence" || t == "iterable")
            r = v.is_array() || v.is_string() || v.is_object();
        else if (t == "true")
            r = v.is_boolean() && v.get<bool>();
        else if (t == "false")
            r = v.is_boolean() && !v.get<bool>();
        else if (t == "odd" || t == "even") {
            if (!v.is_number_integer()) fail(line, "is " + t + " of " + py_repr(v));
            r = (v.get<std::int64_t>() % 2 != 0) == (t == "odd");
        } else if (t == "eq" || t == "equalto" || t == "==") {
            if (e.args.size() < 2) fail(line, "is " + t + " needs a value");
            r = equal(v, eval(*e.args[1], s, line));
        } else {
            fail(line, "the test 'is " + t + "' is not supported");
        }
        return e.negate ? !r : r;
    }

    // positional argument i of a call or filter (after the object), or keyword `name`
    const expr* arg(const expr& e, std::size_t i, const char* name) const {
        std::size_t pos = 0;
        for (std::size_t k = 1; k < e.args.size(); ++k) {
            if (!e.keywords[k].empty()) {
                if (e.keywords[k] == name) return e.args[k].get();
                continue;
            }
            if (pos++ == i) return e.args[k].get();
        }
        return nullptr;
    }

    value filter(const expr& e, scope& s, int line) const {
        const value v = eval(*e.args[0], s, line);
        const std::string& f = e.op;
        auto a = [&](std::size_t i, const char* name) -> std::optional<value> {
            if (const expr* x = arg(e, i, name)) return eval(*x, s, line);
            return std::nullopt;
        };
        if (f == "trim" || f == "striptags") return strip(str_of(v, f, line), " \t\r\n\f\v", 3);
        if (f == "length" || f == "count") {
            if (v.is_string()) return utf8_length(v.get<std::string>());
            if (v.is_array() || v.is_object()) return v.size();
            fail(line, "length of " + py_repr(v));
        }
        if (f == "upper" || f == "lower") {
            std::string r = str_of(v, f, line);
            for (auto& ch : r)
                ch = char(f == "upper" ? std::toupper(static_cast<unsigned char>(ch))
                                       : std::tolower(static_cast<unsigned char>(ch)));
            return r;
        }
        if (f == "capitalize") {
            std::string r = str_of(v, f, line);
            for (std::size_t i = 0; i < r.size(); ++i)
                r[i] = char(i ? std::tolower(static_cast<unsigned char>(r[i]))
                              : std::toupper(static_cast<unsigned char>(r[i])));
            return r;
        }
        if (f == "string") return py_str(v);
        if (f == "int") {
            if (v.is_number()) return std::int64_t(num(v));
            if (v.is_string()) {
                try {
                    return std::stoll(v.get<std::string>());
                } catch (...) {
                    return 0;
                }
            }
            return 0;
        }
        if (f == "float") return v.is_number() ? num(v) : 0.0;
        if (f == "default" || f == "d") {
            const bool boolean = a(1, "boolean").value_or(false).get<bool>();
            if (is_undefined(v) || (boolean && !truthy(v)))
                return a(0, "default_value").value_or("");
            return v;
        }
        if (f == "first" || f == "last") {
            if (!v.is_array() || v.empty()) return undefined();
            return f == "first" ? v.front() : v.back();
        }
        if (f == "join") {
            const std::string sep = a(0, "d").value_or("").get<std::string>();
            if (!v.is_array()) fail(line, "join of " + py_repr(v));
            std::string r;
            for (std::size_t i = 0; i < v.size(); ++i) r += (i ? sep : "") + py_str(v[i]);
            return r;
        }
        if (f == "replace") {
            std::string r = str_of(v, f, line);
            const auto from = a(0, "old"), to = a(1, "new");
            if (!from || !to || !from->is_string() || !to->is_string())
                fail(line, "replace needs two strings");
            return replace_all(r, from->get<std::string>(), to->get<std::string>());
        }
        if (f == "list") {
            if (v.is_array()) return v;
            if (v.is_string()) {
                value l = value::array();
                for (const char ch : v.get<std::string>()) l.push_back(std::string(1, ch));
                return l;
            }
            fail(line, "list of " + py_repr(v));
        }
        if (f == "items" || f == "dictsort") {
            if (!v.is_object()) fail(line, f + " of " + py_repr(v));
            value l = value::array();
            for (auto it = v.begin(); it != v.end(); ++it) l.push_back({it.key(), it.value()});
            return l;
        }
        if (f == "reverse") {
            if (v.is_string()) {
                std::string r = v.get<std::string>();
                std::reverse(r.begin(), r.end());
                return r;
            }
            if (!v.is_array()) fail(line, "reverse of " + py_repr(v));
            value r = v;
            std::reverse(r.begin(), r.end());
            return r;
        }
        if (f == "tojson") {
            const auto indent = a(0, "indent");
            const auto seps = a(2, "separators");
            const int ind = indent && indent->is_number_integer() ? indent->get<int>() : -1;
            std::string item_sep = ind >= 0 ? "," : ", ", key_sep = ": ";
            if (seps && seps->is_array() && seps->size() == 2)
                item_sep = (*seps)[0].get<std::string>(), key_sep = (*seps)[1].get<std::string>();
            const bool sort = a(3, "sort_keys").value_or(false).get<bool>();
            return py_json(v, ind, 0, sort, item_sep, key_sep);
        }
        if (f == "selectattr" || f == "rejectattr") {
            if (!v.is_array()) fail(line, f + " of " + py_repr(v));
            const auto attr = a(0, "attribute");
            if (!attr || !attr->is_string()) fail(line, f + " needs an attribute name");
            const auto test_name = a(1, "test");
            const auto against = a(2, "value");
            value out = value::array();
            for (const auto& x : v) {
                const value m = member(x, attr->get<std::string>(), line);
                bool ok;
                if (!test_name)
                    ok = truthy(m);
                else if (test_name->get<std::string>() == "defined")
                    ok = !is_undefined(m);
                else if (test_name->get<std::string>() == "undefined")
                    ok = is_undefined(m);
                else if (test_name->get<std::string>() == "none")
                    ok = m.is_null();
                else if ((test_name->get<std::string>() == "equalto" ||
                          test_name->get<std::string>() == "eq") &&
                         against)
                    ok = equal(m, *against);
                else
                    fail(line, f + " with the test " + test_name->dump() + " is not supported");
                if (ok == (f == "selectattr")) out.push_back(x);
            }
            return out;
        }
        if (f == "map") {
            const auto attr = a(0, "attribute");
            if (!v.is_array() || !attr || !attr->is_string())
                fail(line, "map is supported as map(attribute='name') on a list");
            value out = value::array();
            for (const auto& x : v) out.push_back(member(x, attr->get<std::string>(), line));
            return out;
        }
        if (f == "indent") {
            const int width = a(0, "width").value_or(4).get<int>();
            const bool first = a(1, "first").value_or(false).get<bool>();
            const std::string pad(std::size_t(std::max(width, 0)), ' ');
            std::string r = str_of(v, f, line), out;
            for (std::size_t i = 0; i < r.size(); ++i) {
                out += r[i];
                if (r[i] == '\n' && i + 1 < r.size() && r[i + 1] != '\n') out += pad;
            }
            return first ? pad + out : out;
        }
        if (f == "safe" || f == "e" || f == "escape") return v;  // no autoescape in chat templates
        fail(line, "the filter '" + f + "' is not supported");
    }

    value call(const expr& e, scope& s, int line) const {
        const expr& callee = *e.args[0];
        auto a = [&](std::size_t i, const char* name) -> std::optional<value> {
            if (const expr* x = arg(e, i, name)) return eval(*x, s, line);
            return std::nullopt;
        };
        if (callee.k == expr::name) {
            const std::string& f = callee.op;
            if (f == "raise_exception")
                throw error(errc::invalid_argument, where_,
                            "the template raised: " + py_str(a(0, "message").value_or("")));
            if (f == "namespace") {
                value ns = value::object();
                ns["__namespace__"] = true;
                for (std::size_t k = 1; k < e.args.size(); ++k)
                    if (!e.keywords[k].empty()) ns[e.keywords[k]] = eval(*e.args[k], s, line);
                return ns;
            }
            if (f == "range") {
                std::vector<std::int64_t> p;
                for (std::size_t k = 1; k < e.args.size(); ++k) {
                    const value x = eval(*e.args[k], s, line);
                    if (!x.is_number_integer()) fail(line, "range needs integers");
                    p.push_back(x.get<std::int64_t>());
                }
                if (p.empty() || p.size() > 3) fail(line, "range takes 1 to 3 integers");
                const std::int64_t from = p.size() > 1 ? p[0] : 0, to = p.size() > 1 ? p[1] : p[0],
                                   step = p.size() > 2 ? p[2] : 1;
                if (step == 0) fail(line, "range step cannot be zero");
                if (std::abs(double(to) - double(from)) / double(std::abs(step)) > 1e6)
                    fail(line, "a range of more than a million numbers");
                value l = value::array();
                for (std::int64_t i = from; step > 0 ? i < to : i > to; i += step) l.push_back(i);
                return l;
            }
            if (f == "strftime_now") {
                const auto fmt = a(0, "format");
                if (!fmt || !fmt->is_string()) fail(line, "strftime_now needs a format string");
                const std::time_t now = std::time(nullptr);
                std::tm tm{};
                localtime_r(&now, &tm);
                char buf[256];
                const std::size_t n =
                    std::strftime(buf, sizeof buf, fmt->get<std::string>().c_str(), &tm);
                return std::string(buf, n);
            }
            if (f == "dict") {
                value d = value::object();
                for (std::size_t k = 1; k < e.args.size(); ++k)
                    if (!e.keywords[k].empty()) d[e.keywords[k]] = eval(*e.args[k], s, line);
                return d;
            }
            fail(line, "the function '" + f + "' is not supported");
        }
        if (callee.k != expr::attr) fail(line, "only functions and methods can be called");
        const value o = eval(*callee.args[0], s, line);
        const std::string& m = callee.op;
        if (o.is_string()) {
            const std::string& str = o.get_ref<const std::string&>();
            const auto chars = a(0, "chars");
            const std::string set = chars && chars->is_string() ? chars->get<std::string>()
                                                                : std::string(" \t\r\n\f\v");
            if (m == "strip") return strip(str, set, 3);
            if (m == "lstrip") return strip(str, set, 1);
            if (m == "rstrip") return strip(str, set, 2);
            if (m == "upper" || m == "lower") {
                std::string r = str;
                for (auto& ch : r)
                    ch = char(m == "upper" ? std::toupper(static_cast<unsigned char>(ch))
                                           : std::tolower(static_cast<unsigned char>(ch)));
                return r;
            }
            if (m == "title" || m == "capitalize") {
                std::string r = str;
                bool start = true;
                for (auto& ch : r) {
                    const bool alpha = std::isalpha(static_cast<unsigned char>(ch)) != 0;
                    ch = char(start ? std::toupper(static_cast<unsigned char>(ch))
                                    : std::tolower(static_cast<unsigned char>(ch)));
                    start = m == "title" ? !alpha : false;
                }
                return r;
            }
            if (m == "startswith" || m == "endswith") {
                const auto p = a(0, "prefix");
                if (!p || !p->is_string()) fail(line, m + " needs a string");
                const std::string& q = p->get_ref<const std::string&>();
                return m == "startswith" ? str.rfind(q, 0) == 0
                                         : str.size() >= q.size() &&
                                               str.compare(str.size() - q.size(), q.size(), q) == 0;
            }
            if (m == "split") {
                const auto sep = a(0, "sep");
                value l = value::array();
                if (!sep || sep->is_null()) {  // runs of whitespace
                    std::size_t i = 0;
                    while (true) {
                        i = str.find_first_not_of(" \t\r\n\f\v", i);
                        if (i == std::string::npos) break;
                        const std::size_t j = str.find_first_of(" \t\r\n\f\v", i);
                        l.push_back(
                            str.substr(i, j == std::string::npos ? std::string::npos : j - i));
                        if (j == std::string::npos) break;
                        i = j;
                    }
                    return l;
                }
                const std::string& d = sep->get_ref<const std::string&>();
                if (d.empty()) fail(line, "split with an empty separator");
                std::size_t i = 0;
                for (std::size_t j; (j = str.find(d, i)) != std::string::npos; i = j + d.size())
                    l.push_back(str.substr(i, j - i));
                l.push_back(str.substr(i));
                return l;
            }
            if (m == "replace") {
                const auto from = a(0, "old"), to = a(1, "new");
                if (!from || !to || !from->is_string() || !to->is_string())
                    fail(line, "replace needs two strings");
                return replace_all(str, from->get<std::string>(), to->get<std::string>());
            }
            if (m == "find" || m == "count") {
                const auto p = a(0, "sub");
                if (!p || !p->is_string()) fail(line, m + " needs a string");
                const std::string& q = p->get_ref<const std::string&>();
                if (m == "find") {
                    const std::size_t at = str.find(q);
                    return at == std::string::npos ? std::int64_t(-1) : std::int64_t(at);
                }
                std::int64_t c = 0;
                if (!q.empty())
                    for (std::size_t i = str.find(q); i != std::string::npos;
                         i = str.find(q, i + q.size()))
                        ++c;
                return c;
            }
            if (m == "format") fail(line, "str.format is not supported");
        }
        if (o.is_object()) {
            if (m == "items") {
                value l = value::array();
                for (auto it = o.begin(); it != o.end(); ++it)
                    if (it.key() != "__namespace__") l.push_back({it.key(), it.value()});
                return l;
            }
            if (m == "keys" || m == "values") {
                value l = value::array();
                for (auto it = o.begin(); it != o.end(); ++it)
                    if (it.key() != "__namespace__")
                        l.push_back(m == "keys" ? value(it.key()) : it.value());
                return l;
            }
            if (m == "get") {
                const auto k = a(0, "key");
                if (!k || !k->is_string()) fail(line, "get needs a string key");
                const auto it = o.find(k->get<std::string>());
                return it != o.end() ? *it : a(1, "default").value_or(nullptr);
            }
        }
        fail(line, "the method '" + m + "' of " + py_repr(o) + " is not supported");
    }

    value member(const value& o, const std::string& name, int line) const {
        if (is_undefined(o)) fail(line, "'" + name + "' of an undefined value");
        if (o.is_object()) {
            const auto it = o.find(name);
            return it == o.end() ? undefined() : *it;
        }
        return undefined();
    }

    std::string str_of(const value& v, const std::string& f, int line) const {
        if (is_undefined(v)) return "";
        if (!v.is_string()) {
            if (v.is_number() || v.is_boolean() || v.is_null()) return py_str(v);
            fail(line, f + " of " + py_repr(v));
        }
        return v.get<std::string>();
    }
    // strips chars of `set` from the start (bit 1) and the end (bit 2) of s
    // strings and the output stay below 64 MiB (a template doubling a string in a loop would
    // otherwise exhaust the memory)
    static constexpr double max_text = 64.0 * 1024 * 1024;
    std::string sized(std::string s, int line) const {
        if (double(s.size()) > max_text) fail(line, "a string longer than the limit of 64 MiB");
        return s;
    }
    static std::string strip(const std::string& s, const std::string& set, int sides) {
        std::size_t b = 0, e = s.size();
        if (sides & 1)
            while (b < e && set.find(s[b]) != std::string::npos) ++b;
        if (sides & 2)
            while (e > b && set.find(s[e - 1]) != std::string::npos) --e;
        return s.substr(b, e - b);
    }
    static std::string replace_all(std::string s, const std::string& from, const std::string& to) {
        if (from.empty()) return s;
        for (std::size_t i = 0; (i = s.find(from, i)) != std::string::npos; i += to.size())
            s.replace(i, from.size(), to);
        return s;
    }
    static std::int64_t utf8_length(const std::string& s) {
        std::int64_t n = 0;
        for (const char ch : s) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
        return n;
    }

    std::string where_;
    std::vector<piece> pieces_;
    std::vector<node> body_;
    mutable int block_depth_ = 0;  // nesting of the statement blocks being parsed
    mutable int parse_line_ = 0;   // the line of the expression being parsed
};

}  // namespace jinja_detail

/// A chat template, parsed once: render() applies it to conversations.
class chat_template {
  public:
    /// Parses the Jinja source; `name` names it in errors (the file or the model). Throws
    /// ftune::error naming the line and the construct when it uses Jinja ftune does not run.
    explicit chat_template(const std::string& source, std::string name = "chat template")
        : engine_(std::make_shared<jinja_detail::engine>(source, std::move(name))) {}

    /// The text of messages as the template renders them, with the generation prompt (the
    /// assistant's turn opened) when asked. `variables` adds or overrides what the template
    /// sees: bos_token, eos_token (Transformers passes the tokenizer's special tokens), tools...
    chat_rendering render(
        const std::vector<chat_message>& messages, bool add_generation_prompt,
        const nlohmann::ordered_json& variables = nlohmann::ordered_json::object()) const {
        nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
        for (const auto& m : messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
        return render_json(msgs, add_generation_prompt, variables);
    }

    /// render() for messages given as JSON objects (extra fields such as tool_calls kept).
    chat_rendering render_json(
        const nlohmann::ordered_json& messages, bool add_generation_prompt,
        const nlohmann::ordered_json& variables = nlohmann::ordered_json::object()) const {
        nlohmann::ordered_json vars = {{"messages", messages},
                                       {"add_generation_prompt", add_generation_prompt},
                                       {"tools", nullptr},
                                       {"documents", nullptr}};
        if (variables.is_object())
            for (auto it = variables.begin(); it != variables.end(); ++it)
                vars[it.key()] = it.value();
        return engine_->render(vars);
    }

  private:
    std::shared_ptr<const jinja_detail::engine> engine_;
};

}  // namespace text
FTUNE_NAMESPACE_END
