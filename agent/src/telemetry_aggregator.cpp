#include "outrider/agent/telemetry_aggregator.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>

namespace outrider::agent {
namespace {

constexpr unsigned kSlotChunkLog2 = 10;  // 1024 slots per chunk
constexpr unsigned kKeyChunkLog2 = 16;   // 64 KiB of key bytes per chunk
constexpr std::uint32_t kNoHint = ~std::uint32_t{0};  // find(): no slot to try first

std::uint64_t load64(const char* p) {
  std::uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

std::uint32_t load32(const char* p) {
  std::uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

/// Whether n bytes at a and b are equal. Keys are tens of bytes: word compares inline beat a memcmp call.
bool sameBytes(const char* a, const char* b, std::size_t n) {
  if (n >= 8) {
    const char* const lastA = a + n - 8;
    for (; a < lastA; a += 8, b += 8)
      if (load64(a) != load64(b)) return false;
    return load64(lastA) == load64(b + (lastA - a));
  }
  if (n >= 4) return load32(a) == load32(b) && load32(a + n - 4) == load32(b + n - 4);
  for (std::size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) return false;
  return true;
}

std::uint64_t hashBytes(std::string_view s, std::uint64_t seed = 0) {
  std::uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size() ^ (seed << 48);
  const char* p = s.data();
  std::size_t n = s.size();
  // The tail is read with fixed-size loads (a memcpy of a variable size is a call).
  std::uint64_t w = 0;
  if (n > 8) {
    for (; n > 8; p += 8, n -= 8) {
      h = (h ^ load64(p)) * 0xBF58476D1CE4E5B9ull;
      h ^= h >> 29;
    }
    w = load64(p + n - 8);  // the last 8 bytes, overlapping some already mixed in
  } else if (n >= 4) {
    w = load32(p) | std::uint64_t{load32(p + n - 4)} << 32;
  } else if (n > 0) {
    w = static_cast<unsigned char>(p[0]) | static_cast<unsigned>(static_cast<unsigned char>(p[n / 2])) << 8 |
        static_cast<unsigned>(static_cast<unsigned char>(p[n - 1])) << 16;
  }
  h = (h ^ w) * 0x94D049BB133111EBull;
  h ^= h >> 32;
  h *= 0xBF58476D1CE4E5B9ull;
  return h ^ (h >> 31);
}

/// Split an escaped name list at an unescaped separator.
std::size_t findUnescaped(std::string_view s, std::size_t from, char c) {
  for (std::size_t i = from; i < s.size(); ++i) {
    if (s[i] == '\\') {
      ++i;
      continue;
    }
    if (s[i] == c) return i;
  }
  return std::string_view::npos;
}

/// Tag keys in order (equal keys allowed), as `a.key < b.key` sorts them; compares inline, since tag
/// keys mostly differ in their first byte.
bool tagsSorted(const std::vector<LineTag>& tags) {
  for (std::size_t i = 1; i < tags.size(); ++i) {
    const std::string_view a = tags[i - 1].key, b = tags[i].key;
    const std::size_t n = std::min(a.size(), b.size());
    std::size_t j = 0;
    while (j < n && a[j] == b[j]) ++j;
    const bool less = j < n ? static_cast<unsigned char>(b[j]) < static_cast<unsigned char>(a[j]) : b.size() < a.size();
    if (less) return false;
  }
  return true;
}

/// A series' hash: the prefix (stream, measurement, tags) hashed once per line, then each field key.
std::uint64_t seriesHash(std::uint64_t prefixHash, std::string_view field) {
  std::uint64_t h = hashBytes(field) ^ (prefixHash * 0x9E3779B97F4A7C15ull);
  h ^= h >> 31;
  return h * 0xBF58476D1CE4E5B9ull;
}

}  // namespace

/// A series key in its parts. It is stored as one string, stream digit + head + ' ' + field (closeWindow
/// splits it back into names), but looked up by parts: a line whose tags are already in order uses its
/// own bytes as the head, so most lines copy nothing to find their series.
struct Aggregator::Key {
  char stream;
  std::string_view head;   // escaped measurement and tags, tags sorted by key: "m,a=1,b=2"
  std::string_view field;  // escaped
  std::size_t size() const { return head.size() + field.size() + 2; }
};

struct Aggregator::Slot {
  std::uint32_t keyOff;
  std::uint16_t keyLen;
  std::uint8_t sameHead;  // created for the same line as the slot before it: same stream and head
  std::uint32_t hash32;
  std::uint32_t count;
  double sum, min, max, last;
  CompactSketch sketch;
};

Aggregator::Aggregator(AggregatorLimits limits) : limits_(limits), mapping_(limits.relativeAccuracy) {
  static_assert(sizeof(Slot) <= 80, "most of the memory per series");
  limits_.maxBuckets = std::clamp<std::size_t>(limits_.maxBuckets, 16, std::size_t{1} << BucketPool::kMaxLog2);
  limits_.maxKeyBytes = std::min<std::size_t>(limits_.maxKeyBytes, 60'000);
  index_.assign(64, 0);
}

Aggregator::~Aggregator() = default;

// Defined inline: under -fPIC, GCC does not inline a non-inline function that could be interposed.
inline Aggregator::Slot& Aggregator::slot(std::uint32_t i) {
  return slots_[i >> kSlotChunkLog2][i & ((1u << kSlotChunkLog2) - 1)];
}

inline std::string_view Aggregator::keyAt(const Slot& s) const {
  return {keys_[s.keyOff >> kKeyChunkLog2].get() + (s.keyOff & ((1u << kKeyChunkLog2) - 1)), s.keyLen};
}

std::uint32_t Aggregator::storeKey(const Key& key) {
  if (keys_.empty() || keysUsed_ + key.size() > (1u << kKeyChunkLog2)) {
    keys_.push_back(std::make_unique<char[]>(std::size_t{1} << kKeyChunkLog2));
    keysUsed_ = 0;
  }
  const auto off = (static_cast<std::uint32_t>(keys_.size() - 1) << kKeyChunkLog2) + keysUsed_;
  char* p = keys_.back().get() + keysUsed_;
  p[0] = key.stream;
  std::memcpy(p + 1, key.head.data(), key.head.size());
  p[1 + key.head.size()] = ' ';
  std::memcpy(p + 2 + key.head.size(), key.field.data(), key.field.size());
  keysUsed_ += static_cast<std::uint32_t>(key.size());
  return off;
}

void Aggregator::grow() {
  std::vector<std::uint32_t> next(index_.size() * 2, 0);
  const std::size_t mask = next.size() - 1;
  for (std::uint32_t i = 0; i < size_; ++i) {
    std::size_t pos = slot(i).hash32 & mask;
    while (next[pos]) pos = (pos + 1) & mask;
    next[pos] = i + 1;
  }
  index_ = std::move(next);
}

/// The slot of `key`: found, or created when `create` and under the cap, else nullptr. `hint` is a slot
/// number to try before the index, and is set to the one after the slot returned: a line's fields were
/// mostly created one after another, so the next field's slot is usually the next one, and it is next to
/// this one in memory (slot and key), where the index would cost a cache miss or two.
Aggregator::Slot* Aggregator::find(const Key& key, std::uint64_t hash, bool create, std::uint32_t& hint) {
  const auto h32 = static_cast<std::uint32_t>(hash);
  const std::size_t hs = key.head.size();
  auto matches = [&](const Slot& s) {
    if (s.hash32 != h32 || s.keyLen != key.size()) return false;
    const char* k = keyAt(s).data();
    return k[0] == key.stream && k[1 + hs] == ' ' && sameBytes(k + 1, key.head.data(), hs) &&
           sameBytes(k + 2 + hs, key.field.data(), key.field.size());
  };
  if (hint < size_) {
    // The slot before this one matched the line's previous field: when this one was created for the
    // same line, its stream and head are the line's too, and only the field needs comparing.
    Slot& s = slot(hint);
    const bool match = s.sameHead ? s.hash32 == h32 && s.keyLen == key.size() &&
                                        sameBytes(keyAt(s).data() + 2 + hs, key.field.data(), key.field.size())
                                  : matches(s);
    if (match) {
      ++hint;
      return &s;
    }
  }
  std::size_t mask = index_.size() - 1;
  std::size_t pos = h32 & mask;
  while (std::uint32_t e = index_[pos]) {
    Slot& s = slot(e - 1);
    if (matches(s)) {
      hint = e;
      return &s;
    }
    pos = (pos + 1) & mask;
  }
  if (!create || size_ >= limits_.maxSeries) return nullptr;
  if ((size_ + 1) * 2 > index_.size()) {
    grow();
    mask = index_.size() - 1;
    pos = h32 & mask;
    while (index_[pos]) pos = (pos + 1) & mask;
  }
  const auto n = static_cast<std::uint32_t>(size_);
  if ((n >> kSlotChunkLog2) >= slots_.size()) slots_.push_back(std::make_unique<Slot[]>(std::size_t{1} << kSlotChunkLog2));
  Slot& s = slot(n);
  s = Slot{};
  s.keyOff = storeKey(key);
  s.keyLen = static_cast<std::uint16_t>(key.size());
  s.sameHead = hint == n;  // the line's previous field is in slot n - 1
  s.hash32 = h32;
  s.min = std::numeric_limits<double>::infinity();
  s.max = -std::numeric_limits<double>::infinity();
  index_[pos] = n + 1;
  ++size_;
  hint = n + 1;
  return &s;
}

/// Add a value to its series; `bucket` is CompactSketch::bucketOf(v).
inline void Aggregator::update(Slot& s, double v, std::int32_t bucket) {
  ++s.count;
  s.sum += v;
  if (v < s.min) s.min = v;
  if (v > s.max) s.max = v;
  s.last = v;
  s.sketch.add(v, bucket, pool_, limits_.maxBuckets);
  ++counters_.samples;
}

void Aggregator::addValue(const Key& key, std::uint64_t hash, double v, std::uint32_t& hint) {
  Slot* s = find(key, hash, true, hint);
  if (!s) {
    ++counters_.overCapSamples;
    return;
  }
  update(*s, v, CompactSketch::bucketOf(v, mapping_));
}

bool Aggregator::isNumericSeries(const Key& key, std::uint64_t hash, std::uint32_t& hint) {
  return find(key, hash, false, hint) != nullptr;
}

std::string_view Aggregator::buildHead(std::string_view measurement, const std::vector<LineTag>& tags, bool sorted) {
  key_.clear();
  key_.append(measurement);
  const std::vector<LineTag>* t = &tags;
  if (!sorted) {
    sorted_ = tags;
    std::sort(sorted_.begin(), sorted_.end(), [](const LineTag& a, const LineTag& b) { return a.key < b.key; });
    t = &sorted_;
  }
  for (const auto& tag : *t) {
    key_.push_back(',');
    key_.append(tag.key);
    key_.push_back('=');
    key_.append(tag.value);
  }
  return key_;
}

void Aggregator::addLine(const ParsedLine& line, v1::TelemetryStream stream) { addFields(line, stream, false); }

void Aggregator::addFields(const ParsedLine& line, v1::TelemetryStream stream, bool contiguous) {
  // `contiguous`: the names are views into one line as parseLine leaves them, measurement then
  // ",key=value" per tag, so with the tags in order that stretch of the line is the head itself.
  std::string_view head;
  const bool sorted = tagsSorted(line.tags);
  if (contiguous && sorted) {
    const std::string_view last = line.tags.empty() ? line.measurement : line.tags.back().value;
    head = {line.measurement.data(), static_cast<std::size_t>(last.data() + last.size() - line.measurement.data())};
  } else {
    head = buildHead(line.measurement, line.tags, sorted);
  }
  std::size_t longest = 0;
  for (const auto& f : line.fields) longest = std::max(longest, f.key.size());
  if (head.size() + 2 + longest > limits_.maxKeyBytes) {
    ++counters_.malformedLines;
    return;
  }
  ++counters_.lines;
  const char streamDigit = static_cast<char>('0' + static_cast<int>(stream));
  const std::uint64_t ph = hashBytes(head, static_cast<unsigned char>(streamDigit));
  // Two passes: find (or create) the series of every field, in order, and prefetch the sketch count each
  // value will increment; then update them, in order. The counts are mostly not in cache (the sketches
  // of a few thousand series are megabytes), and this way their misses overlap instead of coming one
  // after another. Nothing else changes: a series is created at the same point, as lookups do not
  // depend on what updates do, and the updates come in the same order.
  struct Pending {
    Slot* slot;
    double value;
    std::int32_t bucket;
  };
  Pending pending[16];
  std::size_t n = 0;
  auto flush = [&] {
    for (std::size_t j = 0; j < n; ++j) update(*pending[j].slot, pending[j].value, pending[j].bucket);
    n = 0;
  };
  std::uint32_t hint = kNoHint;
  for (const auto& f : line.fields) {
    const Key key{streamDigit, head, f.key};
    const std::uint64_t h = seriesHash(ph, f.key);
    if (f.type == FieldType::String || f.type == FieldType::Boolean) {
      if (isNumericSeries(key, h, hint))
        ++counters_.typeConflicts;
      else
        ++counters_.nonNumeric;
      continue;
    }
    if (!f.numericOk) {
      ++counters_.nanOrInf;
      continue;
    }
    Slot* s = find(key, h, true, hint);
    if (!s) {
      ++counters_.overCapSamples;
      continue;
    }
    const std::int32_t bucket = CompactSketch::bucketOf(f.value, mapping_);
    s->sketch.prefetch(f.value, bucket, pool_);
    pending[n++] = {s, f.value, bucket};
    if (n == std::size(pending)) flush();
  }
  flush();
}

void Aggregator::ingest(std::string_view buffer, v1::TelemetryStream stream) {
  forEachLine(buffer, [&](std::string_view line) {
    if (parseLine(line, line_) != nullptr) {
      ++counters_.malformedLines;
      return;
    }
    addFields(line_, stream, true);
  });
}

void Aggregator::add(const Sample& s) {
  if (!std::isfinite(s.value)) {
    ++counters_.nanOrInf;
    return;
  }
  key_.clear();
  appendEscaped(key_, s.measurement, true);
  auto tags = s.tags;
  std::sort(tags.begin(), tags.end());
  for (const auto& [k, v] : tags) {
    key_.push_back(',');
    appendEscaped(key_, k, false);
    key_.push_back('=');
    appendEscaped(key_, v, false);
  }
  const std::size_t headLen = key_.size();
  appendEscaped(key_, s.field, false);
  if (s.measurement.empty() || s.field.empty() || key_.size() + 2 > limits_.maxKeyBytes) {
    ++counters_.malformedLines;
    return;
  }
  const std::string_view k(key_);
  const char streamDigit = static_cast<char>('0' + static_cast<int>(s.stream));
  const Key key{streamDigit, k.substr(0, headLen), k.substr(headLen)};
  std::uint32_t hint = kNoHint;
  addValue(key, seriesHash(hashBytes(key.head, static_cast<unsigned char>(streamDigit)), key.field), s.value, hint);
}

std::uint64_t Aggregator::closeWindow(v1::TelemetryWindow& out) {
  std::uint64_t samples = 0;
  out.mutable_series()->Reserve(static_cast<int>(size_));
  for (std::uint32_t i = 0; i < size_; ++i) {
    Slot& sl = slot(i);
    if (sl.count == 0) continue;
    auto* ps = out.add_series();
    std::string_view key = keyAt(sl);
    ps->set_stream(static_cast<v1::TelemetryStream>(key[0] - '0'));
    key.remove_prefix(1);
    const std::size_t space = findUnescaped(key, 0, ' ');
    std::string_view head = key.substr(0, space);
    ps->set_field(unescapeName(key.substr(space + 1)));
    std::size_t comma = findUnescaped(head, 0, ',');
    ps->set_measurement(unescapeName(head.substr(0, comma)));
    while (comma != std::string_view::npos) {
      std::size_t next = findUnescaped(head, comma + 1, ',');
      std::string_view kv = head.substr(comma + 1, next == std::string_view::npos ? std::string_view::npos : next - comma - 1);
      std::size_t eq = findUnescaped(kv, 0, '=');
      auto* t = ps->add_tags();
      t->set_key(unescapeName(kv.substr(0, eq)));
      t->set_value(unescapeName(kv.substr(eq + 1)));
      comma = next;
    }
    ps->set_count(sl.count);
    ps->set_sum(sl.sum);
    ps->set_min(sl.min);
    ps->set_max(sl.max);
    ps->set_last(sl.last);
    DDSketch sk = sl.sketch.toSketch(mapping_, pool_, limits_.maxBuckets);
    sk.toProto(*ps->mutable_sketch());
    setQuantiles(*ps, sk);
    samples += sl.count;
  }
  // Reset, keeping a little capacity for the next window.
  size_ = 0;
  if (slots_.size() > 1) slots_.resize(1);
  if (keys_.size() > 1) keys_.resize(1);
  keysUsed_ = 0;
  if (index_.size() > 4096) {
    index_.assign(64, 0);
    index_.shrink_to_fit();
  } else {
    std::fill(index_.begin(), index_.end(), 0);
  }
  pool_.reset();
  return samples;
}

void setQuantiles(v1::TelemetrySeries& s, const DDSketch& sk) {
  // The sketch is within 1 % of the true quantile; clamping to the exact min/max keeps it inside them.
  auto q = [&](double p) { return std::clamp(sk.quantile(p), s.min(), s.max()); };
  s.set_p50(q(0.50));
  s.set_p90(q(0.90));
  s.set_p99(q(0.99));
}

std::int64_t rollupDurationMs(v1::TelemetryRollup level, std::int64_t rawMs) {
  switch (level) {
    case v1::TELEMETRY_ROLLUP_15M: return std::max<std::int64_t>(rawMs, 15 * 60 * 1000);
    case v1::TELEMETRY_ROLLUP_1H:
    case v1::TELEMETRY_ROLLUP_1H_NO_SKETCH: return std::max<std::int64_t>(rawMs, 60 * 60 * 1000);
    default: return rawMs;
  }
}

std::vector<v1::TelemetryWindow> rollupWindows(const std::vector<const v1::TelemetryWindow*>& in,
                                               v1::TelemetryRollup level, std::int64_t rawMs) {
  struct Acc {
    v1::TelemetrySeries series;
    std::unique_ptr<DDSketch> sketch;
    std::int64_t lastStart = std::numeric_limits<std::int64_t>::min();
    bool merged = false;
  };
  const std::int64_t len = rollupDurationMs(level, rawMs);
  const bool keepSketch = level != v1::TELEMETRY_ROLLUP_1H_NO_SKETCH;
  std::map<std::int64_t, std::map<std::string, Acc>> byStart;
  std::string key;
  for (const auto* w : in) {
    std::int64_t start = w->start_ms() - ((w->start_ms() % len) + len) % len;
    auto& window = byStart[start];
    for (const auto& s : w->series()) {
      key.clear();
      key += static_cast<char>('0' + s.stream());
      key += s.measurement();
      for (const auto& t : s.tags()) {
        key += '\0';
        key += t.key();
        key += '\0';
        key += t.value();
      }
      key += '\1';
      key += s.field();
      auto [it, fresh] = window.try_emplace(key);
      Acc& a = it->second;
      if (fresh) {
        a.series = s;
        a.series.clear_sketch();
        a.lastStart = w->start_ms();
        if (keepSketch && s.has_sketch()) {
          a.sketch = std::make_unique<DDSketch>(s.sketch().relative_accuracy());
          if (!a.sketch->fromProto(s.sketch())) a.sketch.reset();
        }
        continue;
      }
      a.merged = true;
      a.series.set_count(a.series.count() + s.count());
      a.series.set_sum(a.series.sum() + s.sum());
      a.series.set_min(std::min(a.series.min(), s.min()));
      a.series.set_max(std::max(a.series.max(), s.max()));
      if (w->start_ms() >= a.lastStart) {
        a.series.set_last(s.last());
        a.lastStart = w->start_ms();
      }
      if (a.sketch && keepSketch && s.has_sketch()) {
        DDSketch other(s.sketch().relative_accuracy());
        if (!other.fromProto(s.sketch()) || !a.sketch->merge(other)) a.sketch.reset();
      } else {
        a.sketch.reset();  // a part without a sketch makes the merged one meaningless
      }
    }
  }
  std::vector<v1::TelemetryWindow> out;
  for (auto& [start, series] : byStart) {
    v1::TelemetryWindow w;
    w.set_start_ms(start);
    w.set_duration_ms(len);
    w.set_rollup(level);
    for (auto& [k, a] : series) {
      auto* s = w.add_series();
      *s = std::move(a.series);
      if (a.sketch) {
        a.sketch->toProto(*s->mutable_sketch());
        setQuantiles(*s, *a.sketch);
      } else if (!keepSketch || a.merged) {
        s->clear_p50();
        s->clear_p90();
        s->clear_p99();
      }
    }
    out.push_back(std::move(w));
  }
  return out;
}

}  // namespace outrider::agent
