#pragma once
// A small JSON writer (for OCI config.json) and reader (for OCI image layouts, and tests reading back
// what the writer made). Only what those documents need: objects keep insertion order, numbers are
// doubles or 64-bit integers.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "outrider/common/result.hpp"

namespace outrider::vmm::json {

/// Escape a string for a JSON string literal (without the quotes).
std::string escape(std::string_view s);

/// Streaming writer with pretty indentation. Calls must nest properly; key() precedes each member.
class Writer {
 public:
  Writer& beginObject();
  Writer& endObject();
  Writer& beginArray();
  Writer& endArray();
  Writer& key(std::string_view k);
  Writer& value(std::string_view s);
  Writer& value(const char* s) { return value(std::string_view(s)); }
  Writer& value(const std::string& s) { return value(std::string_view(s)); }
  Writer& value(std::int64_t n);
  Writer& value(std::uint64_t n);
  Writer& value(int n) { return value(static_cast<std::int64_t>(n)); }
  Writer& value(unsigned n) { return value(static_cast<std::uint64_t>(n)); }
  Writer& value(bool b);
  Writer& strings(const std::vector<std::string>& list);
  std::string str() const { return out_ + "\n"; }

 private:
  void prefix();
  void newline();
  std::string out_;
  std::vector<bool> first_;  // per open container: no member written yet
  bool afterKey_ = false;
};

struct Value;
using Object = std::vector<std::pair<std::string, Value>>;
using Array = std::vector<Value>;

struct Value {
  std::variant<std::nullptr_t, bool, double, std::string, std::shared_ptr<Array>, std::shared_ptr<Object>> v;

  bool isNull() const { return v.index() == 0; }
  bool isBool() const { return v.index() == 1; }
  bool isNumber() const { return v.index() == 2; }
  bool isString() const { return v.index() == 3; }
  bool isArray() const { return v.index() == 4; }
  bool isObject() const { return v.index() == 5; }
  bool boolean() const { return isBool() && std::get<1>(v); }
  double number() const { return isNumber() ? std::get<2>(v) : 0; }
  const std::string& string() const;
  const Array& array() const;
  const Object& object() const;
  /// Member of an object, or a null Value when absent or not an object.
  const Value& operator[](std::string_view key) const;
  /// Element of an array, or a null Value.
  const Value& operator[](std::size_t i) const;
  std::size_t size() const;
};

/// Parse a whole document; errors name the byte offset.
Result<Value> parse(std::string_view text);

}  // namespace outrider::vmm::json
