#include "outrider/vmm/ct_json.hpp"

#include <fmt/format.h>

#include <cctype>

#include <cmath>
#include <cstdlib>

namespace outrider::vmm::json {

std::string escape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20)
          out += fmt::format("\\u{:04x}", c);
        else
          out += static_cast<char>(c);
    }
  }
  return out;
}

void Writer::newline() {
  out_ += '\n';
  out_.append(first_.size() * 2, ' ');
}

void Writer::prefix() {
  if (afterKey_) {
    afterKey_ = false;
    return;
  }
  if (!first_.empty()) {
    if (!first_.back()) out_ += ',';
    first_.back() = false;
    newline();
  }
}

Writer& Writer::beginObject() {
  prefix();
  out_ += '{';
  first_.push_back(true);
  return *this;
}

Writer& Writer::endObject() {
  bool empty = first_.back();
  first_.pop_back();
  if (!empty) newline();
  out_ += '}';
  return *this;
}

Writer& Writer::beginArray() {
  prefix();
  out_ += '[';
  first_.push_back(true);
  return *this;
}

Writer& Writer::endArray() { return endObject(), out_.back() = ']', *this; }

Writer& Writer::key(std::string_view k) {
  prefix();
  out_ += '"';
  out_ += escape(k);
  out_ += "\": ";
  afterKey_ = true;
  return *this;
}

Writer& Writer::value(std::string_view s) {
  prefix();
  out_ += '"';
  out_ += escape(s);
  out_ += '"';
  return *this;
}

Writer& Writer::value(std::int64_t n) {
  prefix();
  out_ += std::to_string(n);
  return *this;
}

Writer& Writer::value(std::uint64_t n) {
  prefix();
  out_ += std::to_string(n);
  return *this;
}

Writer& Writer::value(bool b) {
  prefix();
  out_ += b ? "true" : "false";
  return *this;
}

Writer& Writer::strings(const std::vector<std::string>& list) {
  beginArray();
  for (auto& s : list) value(s);
  return endArray();
}

namespace {

const Value& nullValue() {
  static const Value v;
  return v;
}

class Parser {
 public:
  explicit Parser(std::string_view t) : t_(t) {}

  Result<Value> document() {
    auto v = parseValue(0);
    if (!v) return v;
    ws();
    if (i_ != t_.size()) return fail("trailing data");
    return v;
  }

 private:
  Error fail(std::string_view what) const { return Error{fmt::format("JSON: {} at offset {}", what, i_)}; }
  void ws() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\n' || t_[i_] == '\t' || t_[i_] == '\r')) ++i_;
  }
  bool lit(std::string_view w) {
    if (t_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }

  Result<std::string> parseString() {
    if (i_ >= t_.size() || t_[i_] != '"') return fail("expected a string");
    ++i_;
    std::string out;
    while (i_ < t_.size()) {
      char c = t_[i_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) return fail("control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= t_.size()) break;
      char e = t_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (i_ + 4 > t_.size()) return fail("short \\u escape");
          unsigned cp = std::strtoul(std::string(t_.substr(i_, 4)).c_str(), nullptr, 16);
          i_ += 4;
          // Surrogate pairs are rare in these documents; encode each unit as UTF-8 on its own.
          if (cp < 0x80) {
            out += static_cast<char>(cp);
          } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
          } else {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
          }
          break;
        }
        default: return fail("bad escape");
      }
    }
    return fail("unterminated string");
  }

  Result<Value> parseValue(int depth) {
    if (depth > 64) return fail("nesting too deep");
    ws();
    if (i_ >= t_.size()) return fail("unexpected end");
    char c = t_[i_];
    Value v;
    if (c == '{') {
      ++i_;
      auto obj = std::make_shared<Object>();
      ws();
      if (i_ < t_.size() && t_[i_] == '}') {
        ++i_;
        v.v = obj;
        return v;
      }
      for (;;) {
        ws();
        auto k = parseString();
        if (!k) return k.error();
        ws();
        if (i_ >= t_.size() || t_[i_] != ':') return fail("expected ':'");
        ++i_;
        auto m = parseValue(depth + 1);
        if (!m) return m;
        obj->emplace_back(std::move(*k), std::move(*m));
        ws();
        if (i_ < t_.size() && t_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < t_.size() && t_[i_] == '}') {
          ++i_;
          break;
        }
        return fail("expected ',' or '}'");
      }
      v.v = obj;
      return v;
    }
    if (c == '[') {
      ++i_;
      auto arr = std::make_shared<Array>();
      ws();
      if (i_ < t_.size() && t_[i_] == ']') {
        ++i_;
        v.v = arr;
        return v;
      }
      for (;;) {
        auto m = parseValue(depth + 1);
        if (!m) return m;
        arr->push_back(std::move(*m));
        ws();
        if (i_ < t_.size() && t_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < t_.size() && t_[i_] == ']') {
          ++i_;
          break;
        }
        return fail("expected ',' or ']'");
      }
      v.v = arr;
      return v;
    }
    if (c == '"') {
      auto s = parseString();
      if (!s) return s.error();
      v.v = std::move(*s);
      return v;
    }
    if (lit("true")) return v.v = true, v;
    if (lit("false")) return v.v = false, v;
    if (lit("null")) return v;
    std::size_t start = i_;
    while (i_ < t_.size() && (std::isdigit(static_cast<unsigned char>(t_[i_])) || t_[i_] == '-' || t_[i_] == '+' ||
                              t_[i_] == '.' || t_[i_] == 'e' || t_[i_] == 'E'))
      ++i_;
    if (start == i_) return fail("unexpected character");
    std::string num(t_.substr(start, i_ - start));
    char* end = nullptr;
    double d = std::strtod(num.c_str(), &end);
    if (!end || *end != '\0') return fail("bad number");
    v.v = d;
    return v;
  }

  std::string_view t_;
  std::size_t i_ = 0;
};

}  // namespace

const std::string& Value::string() const {
  static const std::string empty;
  return isString() ? std::get<3>(v) : empty;
}
const Array& Value::array() const {
  static const Array empty;
  return isArray() ? *std::get<4>(v) : empty;
}
const Object& Value::object() const {
  static const Object empty;
  return isObject() ? *std::get<5>(v) : empty;
}
const Value& Value::operator[](std::string_view key) const {
  for (auto& [k, m] : object())
    if (k == key) return m;
  return nullValue();
}
const Value& Value::operator[](std::size_t i) const {
  auto& a = array();
  return i < a.size() ? a[i] : nullValue();
}
std::size_t Value::size() const { return isArray() ? array().size() : object().size(); }

Result<Value> parse(std::string_view text) { return Parser(text).document(); }

}  // namespace outrider::vmm::json
