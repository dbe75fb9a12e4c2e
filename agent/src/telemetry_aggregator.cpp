#include "outrider/agent/telemetry_aggregator.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

namespace outrider::agent {
namespace {

constexpr unsigned kSlotChunkLog2 = 10;  // 1024 slots per chunk
constexpr unsigned kKeyChunkLog2 = 16;   // 64 KiB of key bytes per chunk

std::uint64_t hashBytes(std::string_view s) {
  std::uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
  const char* p = s.data();
  std::size_t n = s.size();
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  std::uint64_t w = 0;
  std::memcpy(&w, p, n);
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

/// A series' hash: the prefix (stream, measurement, tags) hashed once per line, then each field key.
std::uint64_t seriesHash(std::uint64_t prefixHash, std::string_view field) {
  std::uint64_t h = hashBytes(field) ^ (prefixHash * 0x9E3779B97F4A7C15ull);
  h ^= h >> 31;
  return h * 0xBF58476D1CE4E5B9ull;
}

}  // namespace

struct Aggregator::Slot {
  std::uint32_t keyOff;
  std::uint16_t keyLen;
  std::uint32_t hash32;
  std::uint32_t count;
  double sum, min, max, last;
  CompactSketch sketch;
};

Aggregator::Aggregator(AggregatorLimits limits) : limits_(limits), mapping_(limits.relativeAccuracy) {
  limits_.maxBuckets = std::clamp<std::size_t>(limits_.maxBuckets, 16, std::size_t{1} << BucketPool::kMaxLog2);
  limits_.maxKeyBytes = std::min<std::size_t>(limits_.maxKeyBytes, 60'000);
  index_.assign(64, 0);
}

Aggregator::~Aggregator() = default;

Aggregator::Slot& Aggregator::slot(std::uint32_t i) {
  return slots_[i >> kSlotChunkLog2][i & ((1u << kSlotChunkLog2) - 1)];
}

std::string_view Aggregator::keyAt(const Slot& s) const {
  return {keys_[s.keyOff >> kKeyChunkLog2].get() + (s.keyOff & ((1u << kKeyChunkLog2) - 1)), s.keyLen};
}

std::uint32_t Aggregator::storeKey(std::string_view key) {
  if (keys_.empty() || keysUsed_ + key.size() > (1u << kKeyChunkLog2)) {
    keys_.push_back(std::make_unique<char[]>(std::size_t{1} << kKeyChunkLog2));
    keysUsed_ = 0;
  }
  const auto off = (static_cast<std::uint32_t>(keys_.size() - 1) << kKeyChunkLog2) + keysUsed_;
  std::memcpy(keys_.back().get() + keysUsed_, key.data(), key.size());
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

Aggregator::Slot* Aggregator::find(std::string_view key, std::uint64_t hash, bool create, bool& overCap) {
  overCap = false;
  const auto h32 = static_cast<std::uint32_t>(hash);
  std::size_t mask = index_.size() - 1;
  std::size_t pos = h32 & mask;
  while (std::uint32_t e = index_[pos]) {
    Slot& s = slot(e - 1);
    if (s.hash32 == h32 && keyAt(s) == key) return &s;
    pos = (pos + 1) & mask;
  }
  if (!create) return nullptr;
  if (size_ >= limits_.maxSeries) {
    overCap = true;
    return nullptr;
  }
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
  s.hash32 = h32;
  s.min = std::numeric_limits<double>::infinity();
  s.max = -std::numeric_limits<double>::infinity();
  index_[pos] = n + 1;
  ++size_;
  return &s;
}

void Aggregator::addValue(std::string_view key, std::uint64_t hash, double v) {
  bool overCap;
  Slot* s = find(key, hash, true, overCap);
  if (!s) {
    ++counters_.overCapSamples;
    return;
  }
  ++s->count;
  s->sum += v;
  if (v < s->min) s->min = v;
  if (v > s->max) s->max = v;
  s->last = v;
  s->sketch.add(v, mapping_, pool_, limits_.maxBuckets);
  ++counters_.samples;
}

bool Aggregator::isNumericSeries(std::string_view key, std::uint64_t hash) {
  bool overCap;
  return find(key, hash, false, overCap) != nullptr;
}

void Aggregator::buildPrefix(v1::TelemetryStream stream, std::string_view measurement,
                             const std::vector<LineTag>& tags) {
  key_.clear();
  key_.push_back(static_cast<char>('0' + static_cast<int>(stream)));
  key_.append(measurement);
  const std::vector<LineTag>* t = &tags;
  bool sorted = true;
  for (std::size_t i = 1; i < tags.size() && sorted; ++i) sorted = !(tags[i].key < tags[i - 1].key);
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
  key_.push_back(' ');
}

void Aggregator::addLine(const ParsedLine& line, v1::TelemetryStream stream) {
  buildPrefix(stream, line.measurement, line.tags);
  const std::size_t prefix = key_.size();
  std::size_t longest = 0;
  for (const auto& f : line.fields) longest = std::max(longest, f.key.size());
  if (prefix + longest > limits_.maxKeyBytes) {
    ++counters_.malformedLines;
    return;
  }
  ++counters_.lines;
  const std::uint64_t ph = hashBytes(key_);
  for (const auto& f : line.fields) {
    key_.resize(prefix);
    key_.append(f.key);
    const std::uint64_t h = seriesHash(ph, f.key);
    if (f.type == FieldType::String || f.type == FieldType::Boolean) {
      if (isNumericSeries(key_, h))
        ++counters_.typeConflicts;
      else
        ++counters_.nonNumeric;
      continue;
    }
    if (!f.numericOk) {
      ++counters_.nanOrInf;
      continue;
    }
    addValue(key_, h, f.value);
  }
}

void Aggregator::ingest(std::string_view buffer, v1::TelemetryStream stream) {
  forEachLine(buffer, [&](std::string_view line) {
    if (parseLine(line, line_) != nullptr) {
      ++counters_.malformedLines;
      return;
    }
    addLine(line_, stream);
  });
}

void Aggregator::add(const Sample& s) {
  if (!std::isfinite(s.value)) {
    ++counters_.nanOrInf;
    return;
  }
  key_.clear();
  key_.push_back(static_cast<char>('0' + static_cast<int>(s.stream)));
  appendEscaped(key_, s.measurement, true);
  auto tags = s.tags;
  std::sort(tags.begin(), tags.end());
  for (const auto& [k, v] : tags) {
    key_.push_back(',');
    appendEscaped(key_, k, false);
    key_.push_back('=');
    appendEscaped(key_, v, false);
  }
  key_.push_back(' ');
  const std::size_t prefix = key_.size();
  appendEscaped(key_, s.field, false);
  if (s.measurement.empty() || s.field.empty() || key_.size() > limits_.maxKeyBytes) {
    ++counters_.malformedLines;
    return;
  }
  const std::string_view k(key_);
  addValue(k, seriesHash(hashBytes(k.substr(0, prefix)), k.substr(prefix)), s.value);
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
