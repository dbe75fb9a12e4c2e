#include "outrider/agent/telemetry_line.hpp"

#include <bit>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

// ---- Eight bytes at a time ----
// Names and numbers are scanned a word at a time where eight bytes of the line remain (never past its
// end), byte by byte otherwise. Words are read little-endian, so the first byte of the text is the
// lowest; a big-endian machine takes the byte loops only.
constexpr bool kWordScan = std::endian::native == std::endian::little;
constexpr std::uint64_t kOnes = 0x0101010101010101ull;
constexpr std::uint64_t kHighs = 0x8080808080808080ull;

std::uint64_t load64(const char* p) {
  std::uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

/// The top bit of each byte of `w` equal to `c`. The lowest flag is exact; a borrow may flag a byte
/// above a match, which is harmless since only the first match counts.
constexpr std::uint64_t bytesEqual(std::uint64_t w, unsigned char c) {
  const std::uint64_t x = w ^ (kOnes * c);
  return (x - kOnes) & ~x & kHighs;
}

/// Index of the first ',', ' ' or '\\' (and '=' when Eq) at or after `i`, or s.size().
template <bool Eq>
std::size_t findStop(std::string_view s, std::size_t i) {
  const std::size_t n = s.size();
  const char* p = s.data();
#if defined(__SSE2__)
  // Sixteen bytes at a time (x86-64 always has SSE2): nearly every name ends within the first sixteen,
  // so the loop's exit branch is well predicted, where eight at a time it is not.
  for (; i + 16 <= n; i += 16) {
    const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(w, _mm_set1_epi8(',')), _mm_cmpeq_epi8(w, _mm_set1_epi8(' '))),
                               _mm_cmpeq_epi8(w, _mm_set1_epi8('\\')));
    if constexpr (Eq) hit = _mm_or_si128(hit, _mm_cmpeq_epi8(w, _mm_set1_epi8('=')));
    if (const auto bits = static_cast<unsigned>(_mm_movemask_epi8(hit))) return i + static_cast<std::size_t>(std::countr_zero(bits));
  }
#endif
  if constexpr (kWordScan) {
    for (; i + 8 <= n; i += 8) {
      const std::uint64_t w = load64(p + i);
      std::uint64_t hit = bytesEqual(w, ',') | bytesEqual(w, ' ') | bytesEqual(w, '\\');
      if constexpr (Eq) hit |= bytesEqual(w, '=');
      if (hit) return i + static_cast<std::size_t>(std::countr_zero(hit)) / 8;
    }
  }
  constexpr unsigned char mask = Eq ? 2 : 1;
  while (i < n && !(kStops.t[static_cast<unsigned char>(p[i])] & mask)) ++i;
  return i;
}

/// Scan a name token from `i` up to an unescaped ',' or ' ' (and '=' when Eq); returns the end index.
template <bool Eq>
[[gnu::always_inline]] inline std::size_t scanName(std::string_view s, std::size_t i) {
  const std::size_t n = s.size();
  for (;;) {
    i = findStop<Eq>(s, i);
    if (i >= n || s[i] != '\\') return i < n ? i : n;
    i += 2;  // escapes one character (or is a trailing literal backslash)
  }
}

/// The top bit of each byte of `w` that is not an ASCII digit. The lowest flag is exact (carries and
/// borrows only run upward from a non-digit), which is all readDigits() needs.
constexpr std::uint64_t nonDigitBytes(std::uint64_t w) {
  return ((w + 0x4646464646464646ull) | (w - 0x3030303030303030ull)) & kHighs;
}

constexpr std::uint64_t kPow10Int[] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};

/// The value of eight ASCII digits, the first in the lowest byte.
constexpr std::uint32_t eightDigits(std::uint64_t w) {
  w -= 0x3030303030303030ull;
  w = w * 10 + (w >> 8);  // pairs of digits in every other byte
  w = (((w & 0x000000FF000000FFull) * (100 + (1000000ull << 32))) +
       (((w >> 16) & 0x000000FF000000FFull) * (1 + (10000ull << 32)))) >> 32;
  return static_cast<std::uint32_t>(w);
}

// ---- Number fast paths ----
// Most values are short decimals, integers and timestamps. These parse the simple forms in one pass and
// decline (return false) whatever is unusual or cannot be computed exactly; the caller then falls back to
// std::from_chars, so what is accepted or refused, and every value, stay exactly what from_chars gives.

constexpr bool isDigit(char c) { return static_cast<unsigned char>(c - '0') <= 9; }

/// Up to 19 decimal digits (always fit in uint64) from p, added to `m`; false when there are more.
/// `p` is left after the last digit.
inline bool readDigits(const char*& p, const char* end, std::uint64_t& m, int& count) {
  if constexpr (kWordScan) {
    // A word at a time: the digits at its start (k of them) are moved to its top and the bytes below
    // filled with '0', and eightDigits() reads them all at once, with no branch per digit.
    while (end - p >= 8) {
      std::uint64_t w = load64(p);
      const std::uint64_t nonDigits = nonDigitBytes(w);
      const int k = nonDigits ? std::countr_zero(nonDigits) / 8 : 8;
      if (count + k > 19) return false;
      if (k == 0) return true;
      if (k < 8) w = (w << (8 * (8 - k))) | (0x3030303030303030ull >> (8 * k));
      m = m * kPow10Int[k] + eightDigits(w);
      count += k;
      p += k;
      if (k < 8) return true;
    }
  }
  for (; p < end && isDigit(*p); ++p) {
    if (++count > 19) return false;
    m = m * 10 + static_cast<unsigned>(*p - '0');
  }
  return true;
}

/// An optional '-' and then 1 to 19 digits from p (left after them); false when there are none or more.
[[gnu::always_inline]] inline bool readSignedDigits(const char*& p, const char* end, bool& negative, std::uint64_t& m,
                                                    int& count) {
  negative = p < end && *p == '-';
  p += negative;
  m = 0;
  count = 0;
  return readDigits(p, end, m, count) && count > 0;
}

/// Magnitude `m` (at most 19 digits) with a sign, as an int64; false when it does not fit.
inline bool toInt64(std::uint64_t m, bool negative, std::int64_t& out) {
  constexpr std::uint64_t kMax = static_cast<std::uint64_t>(INT64_MAX);
  if (m > kMax + (negative ? 1 : 0)) return false;
  out = negative ? static_cast<std::int64_t>(0 - m) : static_cast<std::int64_t>(m);
  return true;
}

constexpr double kExactPow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                  1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/// A numeric field value from s[i]: [-]digits[.digits][(e|E)[+|-]digits] (a float), [-]digits'i' or
/// digits'u', ending at ',', ' ' or the end of the line. A float is taken only when its digits fit in
/// 2^53 and its decimal exponent in +-22: then digits and power of ten are exact doubles and one
/// multiplication or division rounds correctly, as from_chars does. `end` is where the value ends.
[[gnu::always_inline]] inline bool parseNumberFast(std::string_view s, std::size_t i, LineField& f, std::size_t& end) {
  const char* p = s.data() + i;
  const char* const e = s.data() + s.size();
  bool negative;
  std::uint64_t m;
  int digits;
  if (!readSignedDigits(p, e, negative, m, digits)) return false;
  const int intDigits = digits;
  if (p < e && (*p == 'i' || *p == 'u')) {
    const bool isInt = *p == 'i';
    ++p;
    if (p < e && *p != ',' && *p != ' ') return false;
    if (isInt) {
      std::int64_t n;
      if (!toInt64(m, negative, n)) return false;
      f.type = FieldType::Integer;
      f.value = static_cast<double>(n);
    } else {
      if (negative) return false;
      f.type = FieldType::Unsigned;
      f.value = static_cast<double>(m);
    }
    end = static_cast<std::size_t>(p - s.data());
    return true;
  }
  int exp10 = 0;
  if (p < e && *p == '.') {
    ++p;
    if (!readDigits(p, e, m, digits) || digits == intDigits) return false;
    exp10 = intDigits - digits;
  }
  if (p < e && (*p == 'e' || *p == 'E')) {
    ++p;
    const bool negExp = p < e && *p == '-';
    if (p < e && (*p == '-' || *p == '+')) ++p;
    int x = 0;
    const char* start = p;
    for (; p < e && isDigit(*p); ++p) {
      if (p - start >= 4) return false;  // long exponents are rare: from_chars sorts them out
      x = x * 10 + (*p - '0');
    }
    if (p == start) return false;
    exp10 += negExp ? -x : x;
  }
  if (p < e && *p != ',' && *p != ' ') return false;
  if (m > (std::uint64_t{1} << 53) || exp10 < -22 || exp10 > 22) return false;
  double d = static_cast<double>(m);
  d = exp10 < 0 ? d / kExactPow10[-exp10] : d * kExactPow10[exp10];
  f.type = FieldType::Float;
  f.value = negative ? -d : d;
  end = static_cast<std::size_t>(p - s.data());
  return true;
}

/// A timestamp from s[i]: [-]digits, at most 19 of them, up to a ' ' or the end of the line, which is
/// left in `end`; false for anything else (from_chars decides).
[[gnu::always_inline]] inline bool parseTimestampFast(std::string_view s, std::size_t i, std::int64_t& out, std::size_t& end) {
  const char* p = s.data() + i;
  const char* const e = s.data() + s.size();
  bool negative;
  std::uint64_t m;
  int digits;
  if (!readSignedDigits(p, e, negative, m, digits) || (p < e && *p != ' ') || !toInt64(m, negative, out)) return false;
  end = static_cast<std::size_t>(p - s.data());
  return true;
}

bool parseBool(std::string_view v, bool& out) {
  if (v == "t" || v == "T" || v == "true" || v == "True" || v == "TRUE") return out = true, true;
  if (v == "f" || v == "F" || v == "false" || v == "False" || v == "FALSE") return out = false, true;
  return false;
}

// ---- Simple lines ----
// Most lines have no escapes and no string values. In such a line every ',', ' ' and '=' is structure,
// so one pass can mark them all (a bit per byte), and each name or value then ends at the next marked
// byte: no scan per name. parseSimple() takes a line that is well-formed in the plain way, and declines
// anything else (a backslash or quote anywhere, an error, booleans, unusual numbers), which the general
// parser below then takes from the start. What it accepts, it parses as the general parser does.

constexpr std::size_t kSimpleMinBytes = 16;   // shorter lines are rare: the general parser takes them
constexpr std::size_t kSimpleMaxBytes = 256;  // longer ones too

/// The ',', ' ' and '=' of a line, a bit per byte.
class StopBits {
 public:
  /// False when the line has a '\\' or '"' (or is outside the sizes above).
  bool mark(std::string_view s);
  /// Index of the first stop at or after `i` (i <= size), or the size.
  std::size_t next(std::size_t i) const {
    std::size_t k = i >> 6;
    if (k >= words_) return n_;
    std::uint64_t m = bits_[k] & (~std::uint64_t{0} << (i & 63));
    while (m == 0) {
      if (++k == words_) return n_;
      m = bits_[k];
    }
    return (k << 6) + static_cast<std::size_t>(std::countr_zero(m));
  }

 private:
  /// Add the bits of a block at `at`, a multiple of its width (so the block is within one word).
  void add(std::size_t at, std::uint64_t bits) { bits_[at >> 6] |= bits << (at & 63); }

  static constexpr std::size_t kWords = kSimpleMaxBytes / 64;
  std::uint64_t bits_[kWords] = {};
  std::size_t words_ = 0;
  std::size_t n_ = 0;
};

#if defined(__SSE2__)
bool StopBits::mark(std::string_view s) {
  n_ = s.size();
  if (n_ < kSimpleMinBytes || n_ > kSimpleMaxBytes) return false;
  words_ = (n_ + 63) / 64;
  const char* p = s.data();
  unsigned special = 0;
  // Sixteen bytes at a time: stops, and backslashes and quotes.
  auto block = [&](const char* b) {
    const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
    const __m128i stop = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(w, _mm_set1_epi8(',')), _mm_cmpeq_epi8(w, _mm_set1_epi8(' '))),
                                      _mm_cmpeq_epi8(w, _mm_set1_epi8('=')));
    special |= static_cast<unsigned>(
        _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(w, _mm_set1_epi8('\\')), _mm_cmpeq_epi8(w, _mm_set1_epi8('"')))));
    return static_cast<unsigned>(_mm_movemask_epi8(stop));
  };
  std::size_t at = 0;
  for (; at + 16 <= n_; at += 16) add(at, block(p + at));
  // The rest: the sixteen bytes that end the line (never reading past it), shifted to start at `at`.
  if (at < n_) add(at, block(p + n_ - 16) >> (at + 16 - n_));
  return special == 0;
}
#else
/// A 0x80 in each byte of `w` equal to `c`, exactly (no borrow between bytes).
constexpr std::uint64_t bytesEqualExact(std::uint64_t w, unsigned char c) {
  constexpr std::uint64_t kLows = 0x7f7f7f7f7f7f7f7full;
  const std::uint64_t x = w ^ (kOnes * c);
  return ~(((x & kLows) + kLows) | x) & kHighs;
}

/// The top bits of the eight bytes of `m` (each 0x80 or 0) as eight bits, first byte lowest.
constexpr std::uint64_t gatherHighBits(std::uint64_t m) { return ((m >> 7) * 0x0102040810204080ull) >> 56; }

bool StopBits::mark(std::string_view s) {
  n_ = s.size();
  if (!kWordScan || n_ < kSimpleMinBytes || n_ > kSimpleMaxBytes) return false;
  words_ = (n_ + 63) / 64;
  const char* p = s.data();
  std::uint64_t special = 0;
  auto block = [&](const char* b) {
    const std::uint64_t w = load64(b);
    special |= bytesEqualExact(w, '\\') | bytesEqualExact(w, '"');
    return gatherHighBits(bytesEqualExact(w, ',') | bytesEqualExact(w, ' ') | bytesEqualExact(w, '='));
  };
  std::size_t at = 0;
  for (; at + 8 <= n_; at += 8) add(at, block(p + at));
  if (at < n_) add(at, block(p + n_ - 8) >> (at + 8 - n_));
  return special == 0;
}
#endif

/// See above: true when `s` was parsed into `out`, false to leave it to the general parser.
bool parseSimple(std::string_view s, ParsedLine& out) {
  StopBits stops;
  if (!stops.mark(s)) return false;
  const std::size_t n = s.size();
  const char* p = s.data();
  // Measurement (ends at ',' or ' '; an '=' in it is left to the general parser).
  std::size_t i = stops.next(0);
  if (i == 0 || i == n || p[i] == '=') return false;
  out.measurement = {p, i};
  // Tags: key '=' value, each non-empty, the value ending at ',' or ' '.
  while (p[i] == ',') {
    const std::size_t k = i + 1;
    const std::size_t ke = stops.next(k);
    if (ke == k || ke == n || p[ke] != '=') return false;
    const std::size_t ve = stops.next(ke + 1);
    if (ve == ke + 1 || ve == n || p[ve] == '=') return false;
    out.tags.push_back({{p + k, ke - k}, {p + ke + 1, ve - ke - 1}});
    i = ve;
  }
  // Fields, after one or more spaces.
  while (i < n && p[i] == ' ') ++i;
  for (;;) {
    const std::size_t ke = stops.next(i);
    if (ke == i || ke == n || p[ke] != '=') return false;
    LineField& f = out.fields.emplace_back();
    f.key = {p + i, ke - i};
    if (!parseNumberFast(s, ke + 1, f, i)) return false;
    if (i == n || p[i] != ',') break;
    ++i;
  }
  // Timestamp.
  while (i < n && p[i] == ' ') ++i;
  if (i == n) return true;
  if (!parseTimestampFast(s, i, out.timestampNs, i)) return false;
  out.hasTimestamp = true;
  while (i < n && p[i] == ' ') ++i;
  return i == n;
}

/// Any line (see parseLine()).
const char* parseGeneral(std::string_view s, ParsedLine& out) {
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
    } else if (std::size_t fastEnd; parseNumberFast(s, i, f, fastEnd)) {  // the common numbers
      i = fastEnd;
    } else {  // everything else, as the line protocol and std::from_chars have it
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
    std::size_t te;
    std::int64_t ts;
    if (!parseTimestampFast(s, i, ts, te)) {
      te = i;
      while (te < s.size() && s[te] != ' ') ++te;
      auto r = std::from_chars(s.data() + i, s.data() + te, ts);
      if (r.ec != std::errc{} || r.ptr != s.data() + te) return "bad timestamp";
    }
    out.hasTimestamp = true;
    out.timestampNs = ts;
    i = te;
    while (i < s.size() && s[i] == ' ') ++i;
    if (i < s.size()) return "trailing data";
  }
  return nullptr;
}

}  // namespace

const char* parseLine(std::string_view s, ParsedLine& out) {
  out.clear();
  if (parseSimple(s, out)) return nullptr;
  return parseGeneral(s, out);
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
