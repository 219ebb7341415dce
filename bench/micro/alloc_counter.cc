// The counting operator new and delete of imgw-bench-micro (see alloc_counter.h). Every
// replaceable form is defined here (plain, array, nothrow, aligned, sized and aligned delete), so
// that no allocation bypasses the count and no delete meets memory from another allocator. They
// sit on malloc/free; malloc calls that C libraries make directly are not counted.
//
// The counters are thread-local plain integers: no atomics on the path being measured, no
// dynamic initialisation (so allocations made before main() are safe), and each benchmark
// thread sees only its own allocations.

#include "bench/micro/alloc_counter.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace imgw::bench {
namespace {

thread_local uint64_t thread_allocs = 0;
thread_local uint64_t thread_bytes = 0;

void Count(std::size_t size) {
  ++thread_allocs;
  thread_bytes += size;
}

// operator new's contract: never null; on failure call the new-handler until it gives up.
void* Allocate(std::size_t size) {
  Count(size);
  if (size == 0) size = 1;
  for (;;) {
    if (void* p = std::malloc(size)) return p;
    std::new_handler handler = std::get_new_handler();
    if (handler == nullptr) throw std::bad_alloc();
    handler();
  }
}

void* AllocateAligned(std::size_t size, std::align_val_t alignment) {
  Count(size);
  const std::size_t align = static_cast<std::size_t>(alignment);
  // aligned_alloc wants a size that is a multiple of the alignment.
  const std::size_t rounded = size == 0 ? align : (size + align - 1) / align * align;
  for (;;) {
    if (void* p = std::aligned_alloc(align, rounded)) return p;
    std::new_handler handler = std::get_new_handler();
    if (handler == nullptr) throw std::bad_alloc();
    handler();
  }
}

void* AllocateNoThrow(std::size_t size) noexcept {
  try {
    return Allocate(size);
  } catch (...) {
    return nullptr;
  }
}

void* AllocateAlignedNoThrow(std::size_t size, std::align_val_t alignment) noexcept {
  try {
    return AllocateAligned(size, alignment);
  } catch (...) {
    return nullptr;
  }
}

}  // namespace

AllocStats ThreadAllocStats() { return {thread_allocs, thread_bytes}; }

void CountAllocs::Report() {
  const AllocStats now = ThreadAllocStats();
  // Taken before the counters are written: inserting them allocates.
  const double allocs = static_cast<double>(now.allocs - start_.allocs);
  const double bytes = static_cast<double>(now.bytes - start_.bytes);
  state_.counters["allocs/iter"] = benchmark::Counter(allocs, benchmark::Counter::kAvgIterations);
  state_.counters["alloc_bytes/iter"] =
      benchmark::Counter(bytes, benchmark::Counter::kAvgIterations);
}

}  // namespace imgw::bench

// The replaceable global allocation functions ([new.delete]).
void* operator new(std::size_t size) { return imgw::bench::Allocate(size); }
void* operator new[](std::size_t size) { return imgw::bench::Allocate(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  return imgw::bench::AllocateNoThrow(size);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  return imgw::bench::AllocateNoThrow(size);
}
void* operator new(std::size_t size, std::align_val_t alignment) {
  return imgw::bench::AllocateAligned(size, alignment);
}
void* operator new[](std::size_t size, std::align_val_t alignment) {
  return imgw::bench::AllocateAligned(size, alignment);
}
void* operator new(std::size_t size, std::align_val_t alignment, const std::nothrow_t&) noexcept {
  return imgw::bench::AllocateAlignedNoThrow(size, alignment);
}
void* operator new[](std::size_t size, std::align_val_t alignment, const std::nothrow_t&) noexcept {
  return imgw::bench::AllocateAlignedNoThrow(size, alignment);
}

void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
