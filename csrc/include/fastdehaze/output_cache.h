// A bounded cache of large CPU output buffers (host only), for ops whose big outputs come back
// with the same sizes every training step (the contrastive loss's anchor gradients and packed
// signs).
//
// Why: a fresh buffer of 32 MiB or more is mmap'd by glibc on every allocation (its mmap
// threshold stops at 32 MiB), and first touch then costs a page fault per 4 KiB page: on the
// 2-core VMs measured, filling a fresh 64 MiB float32 tensor took 24 ms against 1.8 ms for one
// already touched, more than the kernel that writes it. Transparent huge pages (asked for with
// madvise) cut the fault count but not the zeroing, and are not always available.
//
// How: cached_empty_like(t) returns a tensor with the sizes and strides at::empty_like(t) would
// give, backed by a 2 MiB-aligned block (huge pages requested) taken from the cache when a
// block of the same rounded size is free there, else newly allocated. When the tensor's storage
// is freed, its block goes back to the cache if the cache then holds at most
// FASTDEHAZE_CPU_CACHE_MB megabytes (default 512; 0 disables the cache: every block is freed),
// else it is freed. release_output_cache() frees every cached block. The storages are not
// resizable (at::from_blob); everything else about the tensors is ordinary.
#pragma once
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/from_blob.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastdehaze {

class OutputCache {
 public:
  static OutputCache& get() {
    static OutputCache* c = new OutputCache();  // never destroyed: deleters may run at exit
    return *c;
  }

  void* acquire(size_t nbytes) {
    {
      std::lock_guard<std::mutex> g(m_);
      auto it = free_.find(nbytes);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        held_ -= nbytes;
        return p;
      }
    }
    void* p = std::aligned_alloc(kAlign, nbytes);
    TORCH_CHECK(p != nullptr, "fastdehaze: out of memory allocating ", nbytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    (void)madvise(p, nbytes, MADV_HUGEPAGE);  // a hint: failure is harmless
#endif
    return p;
  }

  void release(void* p, size_t nbytes) {
    {
      std::lock_guard<std::mutex> g(m_);
      if (held_ + nbytes <= limit_) {
        free_.emplace(nbytes, p);
        held_ += nbytes;
        return;
      }
    }
    std::free(p);
  }

  // Frees every cached block; returns the bytes freed.
  int64_t clear() {
    std::multimap<size_t, void*> f;
    {
      std::lock_guard<std::mutex> g(m_);
      f.swap(free_);
      held_ = 0;
    }
    int64_t n = 0;
    for (auto& [sz, p] : f) {
      n += static_cast<int64_t>(sz);
      std::free(p);
    }
    return n;
  }

  static constexpr size_t kAlign = size_t(2) << 20;

 private:
  OutputCache() {
    const char* e = std::getenv("FASTDEHAZE_CPU_CACHE_MB");
    long long mb = 512;
    if (e && *e) {
      char* end = nullptr;
      const long long v = std::strtoll(e, &end, 10);
      if (end && *end == '\0' && v >= 0) mb = v;
    }
    limit_ = static_cast<size_t>(mb) << 20;
  }
  std::mutex m_;
  std::multimap<size_t, void*> free_;  // rounded size -> block
  size_t held_ = 0, limit_ = 0;
};

// Outputs smaller than this are left to the default allocator (glibc recycles them).
constexpr int64_t kCachedOutputMin = int64_t(4) << 20;

// An uninitialised CPU tensor of these sizes and strides (dense), from the output cache when large.
inline at::Tensor cached_empty_strided(at::IntArrayRef sizes, at::IntArrayRef strides,
                                       const at::TensorOptions& options) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const int64_t nbytes = numel * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  if (nbytes < kCachedOutputMin) return at::empty_strided(sizes, strides, options);
  const size_t rounded = (static_cast<size_t>(nbytes) + OutputCache::kAlign - 1) & ~(OutputCache::kAlign - 1);
  void* p = OutputCache::get().acquire(rounded);
  return at::from_blob(
      p, sizes, strides, [rounded](void* q) { OutputCache::get().release(q, rounded); }, options);
}

// at::empty_like(t): the same sizes, strides (dense) and options, from the output cache when large.
inline at::Tensor cached_empty_like(const at::Tensor& t) {
  const auto meta = at::empty_like(t, t.options().device(at::kMeta));
  return cached_empty_strided(meta.sizes(), meta.strides(), t.options());
}

inline int64_t release_output_cache() { return OutputCache::get().clear(); }

}  // namespace fastdehaze
