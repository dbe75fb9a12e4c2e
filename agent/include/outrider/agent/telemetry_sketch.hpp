#pragma once
// DDSketch-style quantile sketches with a relative-accuracy guarantee.
//
// With gamma = (1 + a) / (1 - a) a positive value v lands in bucket i = ceil(log_gamma(v)), and the bucket
// is represented by 2 gamma^i / (gamma + 1), which is within a relative error of a of every value in it.
// Negative values use a second store on |v|; values with |v| < kMinIndexable count as zero. When more
// than maxBuckets buckets are in use, the lowest buckets are collapsed into the lowest kept one, which
// keeps the upper quantiles accurate. Two sketches with the same accuracy merge by adding counts.
//
// DDSketch is the general, mergeable form (rollups, merges, the wire form). CompactSketch is the
// per-series form used while a window aggregates: its buckets live in a shared BucketPool so a series
// costs a few bytes until it actually has spread-out values.
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "outrider/v1/telemetry.pb.h"

namespace outrider::agent {

inline constexpr double kMinIndexable = 1e-9;

/// The bucket mapping shared by both forms.
class SketchMapping {
 public:
  explicit SketchMapping(double relativeAccuracy = 0.01);
  double accuracy() const { return accuracy_; }
  /// Bucket index of a value > 0 (ceil(log_gamma(v))). Inline: it runs for every sample.
  std::int32_t index(double v) const { return static_cast<std::int32_t>(std::ceil(std::log(v) * invLogGamma_)); }
  /// Representative value of bucket i.
  double value(std::int32_t i) const;

 private:
  double accuracy_;
  double gamma_;
  double invLogGamma_;
  double logGamma_;
};

/// Dense bucket counts from an offset, with a bound on the number of buckets.
class BucketStore {
 public:
  void add(std::int32_t index, std::uint64_t count, std::size_t maxBuckets);
  bool empty() const { return counts_.empty(); }
  std::int32_t offset() const { return offset_; }
  const std::vector<std::uint64_t>& counts() const { return counts_; }
  void assign(std::int32_t offset, std::vector<std::uint64_t> counts) {
    offset_ = offset;
    counts_ = std::move(counts);
  }
  std::uint64_t total() const;

 private:
  std::int32_t offset_ = 0;
  std::vector<std::uint64_t> counts_;
};

class DDSketch {
 public:
  explicit DDSketch(double relativeAccuracy = 0.01, std::size_t maxBuckets = 2048);
  void add(double v, std::uint64_t count = 1);
  /// Add every bucket of `other`; false (and nothing changed) when the accuracies differ.
  bool merge(const DDSketch& other);
  std::uint64_t count() const { return count_; }
  /// Value at quantile q in [0, 1] (rank floor(q * (count - 1))); 0 for an empty sketch.
  double quantile(double q) const;
  void toProto(v1::TelemetrySketch& out) const;
  /// False when the proto is not a valid sketch (accuracy out of range, too many buckets).
  bool fromProto(const v1::TelemetrySketch& in);
  const SketchMapping& mapping() const { return mapping_; }
  std::size_t maxBuckets() const { return maxBuckets_; }

 private:
  friend struct CompactSketch;
  SketchMapping mapping_;
  std::size_t maxBuckets_;
  BucketStore pos_, neg_;
  std::uint64_t zero_ = 0;
  std::uint64_t count_ = 0;
};

/// Blocks of uint32 counts in 1<<k sizes, in 256 KiB chunks, with a free list per size. Offsets, not
/// pointers, so a series slot stays small. reset() frees everything at once (end of a window).
class BucketPool {
 public:
  static constexpr unsigned kMaxLog2 = 12;  // up to 4096 buckets per block
  std::uint32_t allocate(unsigned log2);
  void release(std::uint32_t offset, unsigned log2);
  std::uint32_t* at(std::uint32_t offset) { return chunks_[offset >> kChunkLog2].get() + (offset & kChunkMask); }
  void reset();
  std::size_t bytes() const { return chunks_.size() * (std::size_t{1} << kChunkLog2) * sizeof(std::uint32_t); }

 private:
  static constexpr unsigned kChunkLog2 = 16;  // 64 Ki uint32 per chunk
  static constexpr std::uint32_t kChunkMask = (1u << kChunkLog2) - 1;
  std::vector<std::unique_ptr<std::uint32_t[]>> chunks_;
  std::uint32_t used_ = 0;  // in the last chunk
  std::vector<std::uint32_t> free_[kMaxLog2 + 1];
};

/// A bucket store of 12 bytes whose counts live in a BucketPool.
struct CompactStore {
  std::uint32_t block = 0;
  std::int32_t offset = 0;   // bucket index of the block's first count
  std::uint16_t n = 0;       // span of the buckets in use (informational)
  std::uint8_t capLog2 = 0;  // block holds 1 << capLog2 counts
  std::uint8_t allocated = 0;
  void add(std::int32_t index, BucketPool& pool, std::size_t maxBuckets) {
    if (allocated && index >= offset && index - offset < (std::int32_t{1} << capLog2)) {
      ++pool.at(block)[index - offset];  // the common case, inline
      return;
    }
    grow(index, pool, maxBuckets);
  }
  void exportTo(BucketStore& out, BucketPool& pool) const;
  /// Start loading the count that add(index) increments, when it is in the block.
  void prefetch(std::int32_t index, BucketPool& pool) const {
    if (allocated && index >= offset && index - offset < (std::int32_t{1} << capLog2))
      __builtin_prefetch(pool.at(block) + (index - offset), 1);
  }

 private:
  void grow(std::int32_t index, BucketPool& pool, std::size_t maxBuckets);
};

/// The per-series sketch of the aggregator: 28 bytes plus pooled buckets.
struct CompactSketch {
  CompactStore pos, neg;
  std::uint32_t zero = 0;
  void add(double v, const SketchMapping& m, BucketPool& pool, std::size_t maxBuckets) {
    add(v, bucketOf(v, m), pool, maxBuckets);
  }
  // add() in steps (inline: they run for every sample), for a caller that has other work to do while
  // the count comes into the cache: the bucket index of v (0 for a value counted as zero), a prefetch of
  // its count, then the add itself.
  static std::int32_t bucketOf(double v, const SketchMapping& m) {
    return v >= kMinIndexable ? m.index(v) : v <= -kMinIndexable ? m.index(-v) : 0;
  }
  void prefetch(double v, std::int32_t bucket, BucketPool& pool) const {
    if (v >= kMinIndexable)
      pos.prefetch(bucket, pool);
    else if (v <= -kMinIndexable)
      neg.prefetch(bucket, pool);
  }
  void add(double v, std::int32_t bucket, BucketPool& pool, std::size_t maxBuckets) {
    if (v >= kMinIndexable)
      pos.add(bucket, pool, maxBuckets);
    else if (v <= -kMinIndexable)
      neg.add(bucket, pool, maxBuckets);
    else
      ++zero;
  }
  DDSketch toSketch(const SketchMapping& m, BucketPool& pool, std::size_t maxBuckets) const;
};

}  // namespace outrider::agent
