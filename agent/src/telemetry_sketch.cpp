#include "outrider/agent/telemetry_sketch.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace outrider::agent {

SketchMapping::SketchMapping(double relativeAccuracy)
    : accuracy_(relativeAccuracy),
      gamma_((1 + relativeAccuracy) / (1 - relativeAccuracy)),
      invLogGamma_(1.0 / std::log(gamma_)),
      logGamma_(std::log(gamma_)) {}

double SketchMapping::value(std::int32_t i) const {
  return 2.0 * std::exp(static_cast<double>(i) * logGamma_) / (gamma_ + 1.0);
}

// ---- BucketStore ----

void BucketStore::add(std::int32_t index, std::uint64_t count, std::size_t maxBuckets) {
  if (counts_.empty()) {
    offset_ = index;
    counts_.assign(1, count);
    return;
  }
  const std::int32_t top = offset_ + static_cast<std::int32_t>(counts_.size()) - 1;
  if (index >= offset_ && index <= top) {
    counts_[static_cast<std::size_t>(index - offset_)] += count;
    return;
  }
  std::int32_t lo = std::min(offset_, index);
  const std::int32_t hi = std::max(top, index);
  if (static_cast<std::size_t>(hi - lo + 1) > maxBuckets) lo = hi - static_cast<std::int32_t>(maxBuckets) + 1;
  if (lo == offset_) {  // grows upward only
    counts_.resize(static_cast<std::size_t>(hi - lo + 1), 0);
  } else {
    std::vector<std::uint64_t> next(static_cast<std::size_t>(hi - lo + 1), 0);
    for (std::size_t j = 0; j < counts_.size(); ++j) {
      std::int32_t idx = std::max(offset_ + static_cast<std::int32_t>(j), lo);
      next[static_cast<std::size_t>(idx - lo)] += counts_[j];
    }
    counts_ = std::move(next);
    offset_ = lo;
  }
  counts_[static_cast<std::size_t>(std::max(index, lo) - lo)] += count;
}

std::uint64_t BucketStore::total() const {
  std::uint64_t t = 0;
  for (auto c : counts_) t += c;
  return t;
}

// ---- DDSketch ----

DDSketch::DDSketch(double relativeAccuracy, std::size_t maxBuckets)
    : mapping_(relativeAccuracy), maxBuckets_(std::max<std::size_t>(maxBuckets, 16)) {}

void DDSketch::add(double v, std::uint64_t count) {
  if (count == 0 || !std::isfinite(v)) return;
  if (v >= kMinIndexable)
    pos_.add(mapping_.index(v), count, maxBuckets_);
  else if (v <= -kMinIndexable)
    neg_.add(mapping_.index(-v), count, maxBuckets_);
  else
    zero_ += count;
  count_ += count;
}

bool DDSketch::merge(const DDSketch& other) {
  if (other.mapping_.accuracy() != mapping_.accuracy()) return false;
  auto mergeStore = [this](BucketStore& into, const BucketStore& from) {
    const auto& c = from.counts();
    for (std::size_t j = 0; j < c.size(); ++j)
      if (c[j]) into.add(from.offset() + static_cast<std::int32_t>(j), c[j], maxBuckets_);
  };
  mergeStore(pos_, other.pos_);
  mergeStore(neg_, other.neg_);
  zero_ += other.zero_;
  count_ += other.count_;
  return true;
}

double DDSketch::quantile(double q) const {
  if (count_ == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(count_ - 1));
  std::uint64_t seen = 0;
  // Most negative first: the negative store from its highest index down.
  const auto& nc = neg_.counts();
  for (std::size_t j = nc.size(); j-- > 0;) {
    seen += nc[j];
    if (seen > rank) return -mapping_.value(neg_.offset() + static_cast<std::int32_t>(j));
  }
  seen += zero_;
  if (seen > rank) return 0;
  const auto& pc = pos_.counts();
  for (std::size_t j = 0; j < pc.size(); ++j) {
    seen += pc[j];
    if (seen > rank) return mapping_.value(pos_.offset() + static_cast<std::int32_t>(j));
  }
  return pc.empty() ? 0 : mapping_.value(pos_.offset() + static_cast<std::int32_t>(pc.size()) - 1);
}

void DDSketch::toProto(v1::TelemetrySketch& out) const {
  out.Clear();
  out.set_relative_accuracy(mapping_.accuracy());
  out.set_pos_offset(pos_.offset());
  out.mutable_pos_counts()->Add(pos_.counts().begin(), pos_.counts().end());
  out.set_neg_offset(neg_.offset());
  out.mutable_neg_counts()->Add(neg_.counts().begin(), neg_.counts().end());
  out.set_zero_count(zero_);
}

bool DDSketch::fromProto(const v1::TelemetrySketch& in) {
  const double a = in.relative_accuracy();
  if (!(a >= 1e-4 && a <= 0.5)) return false;
  if (static_cast<std::size_t>(in.pos_counts_size()) > maxBuckets_ ||
      static_cast<std::size_t>(in.neg_counts_size()) > maxBuckets_)
    return false;
  mapping_ = SketchMapping(a);
  pos_.assign(in.pos_offset(), {in.pos_counts().begin(), in.pos_counts().end()});
  neg_.assign(in.neg_offset(), {in.neg_counts().begin(), in.neg_counts().end()});
  zero_ = in.zero_count();
  count_ = zero_ + pos_.total() + neg_.total();
  return true;
}

// ---- BucketPool ----

std::uint32_t BucketPool::allocate(unsigned log2) {
  auto& fl = free_[log2];
  if (!fl.empty()) {
    auto off = fl.back();
    fl.pop_back();
    return off;
  }
  const std::uint32_t size = 1u << log2;
  if (chunks_.empty() || used_ + size > (1u << kChunkLog2)) {
    // The unused tail of the previous chunk (< one block) is left; waste is bounded by 1/16.
    chunks_.push_back(std::make_unique<std::uint32_t[]>(std::size_t{1} << kChunkLog2));
    used_ = 0;
  }
  const std::uint32_t off = (static_cast<std::uint32_t>(chunks_.size() - 1) << kChunkLog2) + used_;
  used_ += size;
  return off;
}

void BucketPool::release(std::uint32_t offset, unsigned log2) { free_[log2].push_back(offset); }

void BucketPool::reset() {
  // Keep one chunk for the next window; give the rest back.
  if (chunks_.size() > 1) chunks_.resize(1);
  chunks_.shrink_to_fit();
  used_ = 0;
  for (auto& f : free_) {
    f.clear();
    f.shrink_to_fit();
  }
}

// ---- CompactStore / CompactSketch ----

void CompactStore::grow(std::int32_t index, BucketPool& pool, std::size_t maxBuckets) {
  // `offset` is the bucket index of the block's first slot; the block has slack on the side the range
  // last grew, so a spreading series reallocates O(log range) times, not once per new bucket.
  if (!allocated) {
    capLog2 = 0;
    block = pool.allocate(0);
    allocated = 1;
    offset = index;
    n = 1;
    pool.at(block)[0] = 1;
    return;
  }
  std::uint32_t* c = pool.at(block);
  const std::uint32_t cap = 1u << capLog2;
  if (index >= offset && index < offset + static_cast<std::int32_t>(cap)) {
    ++c[index - offset];
    return;
  }
  // The used range: first and last non-zero buckets (counts only grow, so they bound everything).
  std::uint32_t first = 0, last = cap - 1;
  while (first < cap && c[first] == 0) ++first;
  while (last > first && c[last] == 0) --last;
  std::int32_t lo = std::min(offset + static_cast<std::int32_t>(first), index);
  const std::int32_t hi = std::max(offset + static_cast<std::int32_t>(last), index);
  if (static_cast<std::size_t>(hi - lo + 1) > maxBuckets) lo = hi - static_cast<std::int32_t>(maxBuckets) + 1;
  const auto span = static_cast<std::uint32_t>(hi - lo + 1);
  unsigned newLog2 = 0;
  while ((1u << newLog2) < 2 * span && newLog2 < BucketPool::kMaxLog2) ++newLog2;
  while ((1u << newLog2) < span) ++newLog2;  // span <= maxBuckets <= 1 << kMaxLog2
  const std::uint32_t newCap = 1u << newLog2;
  // Slack below when growing downward, above when growing upward.
  std::int32_t newOffset = index < offset ? hi - static_cast<std::int32_t>(newCap) + 1 : lo;
  std::uint32_t saved[64];
  std::vector<std::uint32_t> big;
  std::uint32_t* old = saved;
  if (cap > 64) {
    big.assign(c, c + cap);
    old = big.data();
  } else {
    std::memcpy(saved, c, cap * sizeof(std::uint32_t));
  }
  std::uint32_t target = block;
  if (newLog2 != capLog2) target = pool.allocate(newLog2);
  std::uint32_t* dst = pool.at(target);
  std::memset(dst, 0, newCap * sizeof(std::uint32_t));
  for (std::uint32_t j = first; j <= last && j < cap; ++j)
    if (old[j]) dst[std::max(offset + static_cast<std::int32_t>(j), lo) - newOffset] += old[j];
  dst[std::max(index, lo) - newOffset] += 1;
  if (target != block) pool.release(block, capLog2);
  block = target;
  capLog2 = static_cast<std::uint8_t>(newLog2);
  offset = newOffset;
  n = static_cast<std::uint16_t>(std::min<std::uint32_t>(span, 0xffff));
}

void CompactStore::exportTo(BucketStore& out, BucketPool& pool) const {
  if (!allocated) return;
  const std::uint32_t* c = pool.at(block);
  const std::uint32_t cap = 1u << capLog2;
  std::uint32_t first = 0, last = cap - 1;
  while (first < cap && c[first] == 0) ++first;
  while (last > first && c[last] == 0) --last;
  if (first == cap) return;
  out.assign(offset + static_cast<std::int32_t>(first), std::vector<std::uint64_t>(c + first, c + last + 1));
}

DDSketch CompactSketch::toSketch(const SketchMapping& m, BucketPool& pool, std::size_t maxBuckets) const {
  DDSketch s(m.accuracy(), maxBuckets);
  pos.exportTo(s.pos_, pool);
  neg.exportTo(s.neg_, pool);
  s.zero_ = zero;
  s.count_ = s.zero_ + s.pos_.total() + s.neg_.total();
  return s;
}

}  // namespace outrider::agent
