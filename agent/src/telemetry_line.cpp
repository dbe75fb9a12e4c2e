#include "outrider/agent/telemetry_line.hpp"

#include <charconv>
#include <cmath>
#include <cstring>

namespace outrider::agent {
namespace {

/// Characters that end or escape a name: bit 1 without '=', bit 2 with it.
struct StopTable {
  unsigned char t[256] = {};
  constexpr StopTable() {
    t[static_cast<unsigned char>(',')] = 3;
    t[static_cast<unsigned char>(' ')] = 3;
    t[static_cast<unsigned char>('\\')] = 3;
    t[static_cast<unsigned char>('=')] = 2;
  }
};
constexpr StopTable kStops;

/// Scan a name token from `i` up to an unescaped ',' or ' ' (and '=' when Eq); returns the end index.
template <bool Eq>
std::size_t scanName(std::string_view s, std::size_t i) {
  constexpr unsigned char mask = Eq ? 2 : 1;
  const std::size_t n = s.size();
  const char* p = s.data();
  for (;;) {
    while (i < n && !(kStops.t[static_cast<unsigned char>(p[i])] & mask)) ++i;
    if (i >= n || p[i] != '\\') return i < n ? i : n;
    i += 2;  // escapes one character (or is a trailing literal backslash)
  }
}

bool parseBool(std::string_view v, bool& out) {
  if (v == "t" || v == "T" || v == "true" || v == "True" || v == "TRUE") return out = true, true;
  if (v == "f" || v == "F" || v == "false" || v == "False" || v == "FALSE") return out = false, true;
  return false;
}

}  // namespace

const char* parseLine(std::string_view s, ParsedLine& out) {
  out.clear();
  if (s.size() > kMaxLineBytes) return "line too long";
  std::size_t i = 0;
  // Measurement: up to an unescaped ',' or ' '.
  std::size_t e = scanName<false>(s, 0);
  if (e == 0) return "missing measurement";
  out.measurement = s.substr(0, e);
  i = e;
  // Tags.
  while (i < s.size() && s[i] == ',') {
    ++i;
    std::size_t ke = scanName<true>(s, i);
    if (ke == i || ke >= s.size() || s[ke] != '=') return "bad tag key";
    std::size_t ve = scanName<true>(s, ke + 1);
    if (ve == ke + 1) return "empty tag value";
    if (ve < s.size() && s[ve] == '=') return "unescaped '=' in tag value";
    out.tags.push_back({s.substr(i, ke - i), s.substr(ke + 1, ve - ke - 1)});
    i = ve;
  }
  if (i >= s.size() || s[i] != ' ') return "missing fields";
  while (i < s.size() && s[i] == ' ') ++i;
  // Fields.
  for (;;) {
    std::size_t ke = scanName<true>(s, i);
    if (ke == i || ke >= s.size() || s[ke] != '=') return "bad field key";
    LineField f;
    f.key = s.substr(i, ke - i);
    i = ke + 1;
    if (i >= s.size()) return "missing field value";
    if (s[i] == '"') {
      ++i;
      while (i < s.size() && s[i] != '"') i += s[i] == '\\' ? 2 : 1;
      if (i >= s.size()) return "unterminated string";
      ++i;
      f.type = FieldType::String;
    } else {
      std::size_t ve = i;
      while (ve < s.size() && s[ve] != ',' && s[ve] != ' ') ++ve;
      std::string_view v = s.substr(i, ve - i);
      if (v.empty()) return "missing field value";
      char last = v.back();
      bool b;
      if (last == 'i' || last == 'u') {
        std::string_view digits = v.substr(0, v.size() - 1);
        if (last == 'i') {
          std::int64_t n;
          auto r = std::from_chars(digits.data(), digits.data() + digits.size(), n);
          if (r.ec != std::errc{} || r.ptr != digits.data() + digits.size()) return "bad integer";
          f.type = FieldType::Integer;
          f.value = static_cast<double>(n);
        } else {
          std::uint64_t n;
          auto r = std::from_chars(digits.data(), digits.data() + digits.size(), n);
          if (r.ec != std::errc{} || r.ptr != digits.data() + digits.size()) return "bad unsigned";
          f.type = FieldType::Unsigned;
          f.value = static_cast<double>(n);
        }
      } else if (parseBool(v, b)) {
        f.type = FieldType::Boolean;
        f.value = b ? 1 : 0;
      } else {
        double d;
        auto r = std::from_chars(v.data(), v.data() + v.size(), d);
        if (r.ptr != v.data() + v.size() || v.front() == '+') return "bad float";
        if (r.ec == std::errc::result_out_of_range) {
          // Overflow is an infinity (refused as such); underflow is a zero.
          bool negExp = v.find("e-") != std::string_view::npos || v.find("E-") != std::string_view::npos;
          f.numericOk = negExp;
          d = 0;
        } else if (r.ec != std::errc{}) {
          return "bad float";
        }
        if (!std::isfinite(d)) f.numericOk = false;
        f.value = d;
      }
      i = ve;
    }
    out.fields.push_back(f);
    if (i < s.size() && s[i] == ',') {
      ++i;
      continue;
    }
    break;
  }
  // Timestamp.
  while (i < s.size() && s[i] == ' ') ++i;
  if (i < s.size()) {
    std::size_t te = i;
    while (te < s.size() && s[te] != ' ') ++te;
    std::int64_t ts;
    auto r = std::from_chars(s.data() + i, s.data() + te, ts);
    if (r.ec != std::errc{} || r.ptr != s.data() + te) return "bad timestamp";
    out.hasTimestamp = true;
    out.timestampNs = ts;
    i = te;
    while (i < s.size() && s[i] == ' ') ++i;
    if (i < s.size()) return "trailing data";
  }
  return nullptr;
}

std::string unescapeName(std::string_view e) {
  std::string out;
  out.reserve(e.size());
  for (std::size_t i = 0; i < e.size(); ++i) {
    if (e[i] == '\\' && i + 1 < e.size() && (e[i + 1] == ',' || e[i + 1] == ' ' || e[i + 1] == '=')) ++i;
    out.push_back(e[i]);
  }
  return out;
}

void appendEscaped(std::string& out, std::string_view plain, bool measurement) {
  for (char c : plain) {
    if (c == ',' || c == ' ' || (!measurement && c == '=')) out.push_back('\\');
    out.push_back(c);
  }
}

}  // namespace outrider::agent
