#pragma once
// InfluxDB line protocol, parsed without copying:
//   measurement[,tag=value...] field=value[,field=value...] [timestamp]
// Field values: float (1.5, -2e3), integer (12i), unsigned (12u), string ("..."), boolean (t, T, true,
// True, TRUE, f, F, false, False, FALSE). Escapes: in measurements "\," and "\ "; in tag keys, tag values
// and field keys "\,", "\=" and "\ "; in string values "\"" and "\\". A backslash before any other
// character is a literal backslash. The timestamp is an integer in nanoseconds. Lines are separated by
// "\n" ("\r\n" is accepted); empty lines and lines starting with '#' are skipped.
//
// Names keep their escaped form (the series identity); unescape() gives the plain text.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace outrider::agent {

enum class FieldType : std::uint8_t { Float, Integer, Unsigned, String, Boolean };

struct LineField {
  std::string_view key;  // escaped
  FieldType type = FieldType::Float;
  double value = 0;  // numeric types (integers converted; exact up to 2^53)
  bool numericOk = true;  // false for a float that is NaN or infinite (or out of range)
};

struct LineTag {
  std::string_view key;  // escaped
  std::string_view value;
};

struct ParsedLine {
  std::string_view measurement;  // escaped
  std::vector<LineTag> tags;     // as they came
  std::vector<LineField> fields;
  bool hasTimestamp = false;
  std::int64_t timestampNs = 0;
  void clear() {
    tags.clear();
    fields.clear();
    hasTimestamp = false;
    timestampNs = 0;
  }
};

/// Longest line accepted (a UDP datagram cannot carry more).
inline constexpr std::size_t kMaxLineBytes = 64 * 1024;

/// Parse one line (without its newline). Returns nullptr on success, or a short static reason.
const char* parseLine(std::string_view line, ParsedLine& out);

/// Call `onLine(std::string_view line)` for each non-empty, non-comment line of a buffer.
template <class F>
void forEachLine(std::string_view buf, F&& onLine) {
  while (!buf.empty()) {
    std::size_t nl = buf.find('\n');
    std::string_view line = buf.substr(0, nl);
    buf = nl == std::string_view::npos ? std::string_view{} : buf.substr(nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    std::size_t i = 0;
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    if (i == line.size() || line[i] == '#') continue;
    onLine(line);
  }
}

/// Remove escapes of a measurement, tag key/value or field key.
std::string unescapeName(std::string_view escaped);
/// Escape a plain name for use as a measurement ("," and " ") or as a tag key/value or field key
/// ("," "=" and " "); `measurement` selects which.
void appendEscaped(std::string& out, std::string_view plain, bool measurement);

}  // namespace outrider::agent
