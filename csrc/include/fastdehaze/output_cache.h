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
// evicting the least recently cached blocks to make room. release_output_cache() frees every
// cached block. The tensors are ordinary (resizable storage of the default CPU allocator's kind).
#pragma once
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/Storage.h>

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <vector>

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
        for (auto o = order_.begin(); o != order_.end(); ++o)
          if (o->second == p) {
            order_.erase(o);
            break;
          }
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

  // Caches the block (evicting the least recently cached blocks to stay within the limit, so
  // that the cache follows the sizes in current use), or frees it when it alone exceeds the limit.
  void release(void* p, size_t nbytes) {
    std::vector<void*> evicted;
    bool cached = false;
    {
      std::lock_guard<std::mutex> g(m_);
      if (nbytes <= limit_) {
        while (held_ + nbytes > limit_ && !order_.empty()) {
          const auto [sz, q] = order_.front();
          order_.pop_front();
          auto range = free_.equal_range(sz);
          for (auto it = range.first; it != range.second; ++it)
            if (it->second == q) {
              free_.erase(it);
              break;
            }
          held_ -= sz;
          evicted.push_back(q);
        }
        free_.emplace(nbytes, p);
        order_.emplace_back(nbytes, p);
        held_ += nbytes;
        cached = true;
      }
    }
    for (void* q : evicted) std::free(q);
    if (!cached) std::free(p);
  }

  // Frees every cached block; returns the bytes freed.
  int64_t clear() {
    std::multimap<size_t, void*> f;
    {
      std::lock_guard<std::mutex> g(m_);
      f.swap(free_);
      order_.clear();
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
      if (end && end != e && *end == '\0' && v >= 0)
        mb = v;
      else
        TORCH_WARN("fastdehaze: FASTDEHAZE_CPU_CACHE_MB=", e,
                   " is not a whole number of megabytes >= 0; using the default, 512");
    }
    limit_ = static_cast<size_t>(mb) << 20;
  }
  std::mutex m_;
  std::multimap<size_t, void*> free_;         // rounded size -> block
  std::deque<std::pair<size_t, void*>> order_;  // the cached blocks, oldest first
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
  // A resizable storage like at::empty's: a resize moves the data to the default CPU allocator
  // and the block goes back to the cache through the deleter.
  struct Block {
    void* p;
    size_t n;
  };
  c10::DataPtr dp(p, new Block{p, rounded},
                  [](void* ctx) {
                    auto* b = static_cast<Block*>(ctx);
                    OutputCache::get().release(b->p, b->n);
                    delete b;
                  },
                  at::Device(at::kCPU));
  c10::Storage storage(c10::Storage::use_byte_size_t(), static_cast<size_t>(nbytes), std::move(dp),
                       c10::GetCPUAllocator(), /*resizable=*/true);
  return at::empty({0}, options).set_(storage, 0, sizes, strides);
}

// at::empty_like(t): the same sizes, strides (dense) and options, from the output cache when large.
inline at::Tensor cached_empty_like(const at::Tensor& t) {
  const auto meta = at::empty_like(t, t.options().device(at::kMeta));
  return cached_empty_strided(meta.sizes(), meta.strides(), t.options());
}

inline int64_t release_output_cache() { return OutputCache::get().clear(); }

}  // namespace fastdehaze
