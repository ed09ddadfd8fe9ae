//! Process memory: the peak resident set size the pipeline reports, and the allocator setting
//! that keeps calibration's large buffers from being returned to the kernel between uses.
//!
//! Calibration allocates and frees buffers of tens of megabytes many times per block (layer
//! inputs and outputs of a batch, bf16 operand tiles). glibc's `malloc` serves such sizes with
//! fresh `mmap`s, or trims them off the heap top when they are freed, so every reuse costs page
//! faults and the kernel's zeroing of each page (`clear_page_erms` was 7% of the CPU samples of
//! a SmolLM2 GPTQ run). [`retain_freed_buffers`] raises glibc's thresholds so freed buffers stay
//! in the heap for the next allocation; measured in docs/quantization.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Peak resident set size of this process (Linux `VmHWM`), if available.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `src` rounded to bf16 (nearest even) in memory of its own: an anonymous memory map, not the
/// heap, returned as tensor bytes (flex tensors use them in place). For activations that live
/// long among short-lived buffers — the calibration pipeline's stored block inputs, contexts and
/// residuals, tens of megabytes each, allocated between the per-batch temporaries — so that
/// they do not fragment the heap and keep it at its high-water mark (measured in
/// docs/quantization.md); the map is unmapped when the tensor is dropped. `None` if the map
/// cannot be made.
pub fn bf16_mapped(src: &[f32]) -> Option<burn::tensor::Bytes> {
    if src.is_empty() {
        return None;
    }
    let mut map = memmap2::MmapOptions::new()
        .len(src.len() * 2)
        .populate()
        .map_anon()
        .ok()?;
    let dst: &mut [u16] = bytemuck_u16(&mut map);
    compress_kernels::dense::slice_to_bf16(src, dst);
    let bytes = bytes::Bytes::from_owner(map.make_read_only().ok()?);
    Some(burn::tensor::Bytes::from_shared(
        bytes,
        burn::tensor::AllocationProperty::Other,
    ))
}

/// A page-aligned byte map as `u16`s.
fn bytemuck_u16(map: &mut memmap2::MmapMut) -> &mut [u16] {
    let (pre, mid, post) = {
        // SAFETY: any bit pattern is a valid u16; the map is page-aligned, so `pre` is empty.
        unsafe { map.align_to_mut::<u16>() }
    };
    debug_assert!(pre.is_empty() && post.is_empty());
    mid
}

/// Resident set size of this process now (Linux `VmRSS`), if available.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting the bytes it has handed out and not yet been given back, so
/// a program can tell live heap memory from what the resident set also holds (buffers the
/// allocator keeps after they were freed, fragmentation, memory-mapped files). Install it in a
/// binary with `#[global_allocator]`; [`live_heap_bytes`] and [`take_peak_heap_bytes`] read
/// the counts (both stay 0 while it is not installed). Each allocation costs two atomic
/// updates.
///
/// ```
/// use compress_core::memory::{live_heap_bytes, CountingAllocator};
///
/// // In a binary: #[global_allocator] static ALLOC: CountingAllocator = CountingAllocator;
/// let _ = CountingAllocator;
/// assert_eq!(live_heap_bytes(), 0); // not installed in this doctest
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

impl CountingAllocator {
    fn grew(by: usize) {
        let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; only the counters are updated.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                Self::grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Heap bytes allocated through [`CountingAllocator`] and not yet freed (0 when it is not the
/// global allocator).
pub fn live_heap_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The most [`live_heap_bytes`] reached since the previous call (or the start), and restarts
/// that peak from the current value.
pub fn take_peak_heap_bytes() -> usize {
    PEAK.swap(LIVE.load(Ordering::Relaxed), Ordering::Relaxed)
}

/// Asks the allocator to keep freed large buffers for reuse instead of unmapping or trimming
/// them; returns whether it was applied (glibc on Linux only; elsewhere a no-op returning
/// `false`). Called by [`crate::pipeline::Pipeline::run`]; process-wide and idempotent.
///
/// With glibc it sets `M_MMAP_THRESHOLD` to 1 GiB (32 MiB where glibc refuses more), so buffers
/// below it come from the heap, and `M_TRIM_THRESHOLD` to its maximum, so freed memory at the
/// heap top is not returned. The resident set then stays at its high-water mark instead of
/// falling between uses; on a SmolLM2 GPTQ run (32 × 512 calibration tokens) the peak moved
/// from 509 to 513 MiB while the pipeline went from 50.0 s to 45.4 s (docs/quantization.md).
///
/// It also sets `M_ARENA_MAX` to 1, so threads share one heap: the pipeline runs two
/// calibration batches side by side, and a second arena held ~37 MiB more at the peak of a
/// SmolLM2 run (128 × 512). Threads that already allocated keep the arena they had; call this
/// at the start of `main` to cover them too.
///
/// Setting the environment variable `COMPRESS_RETAIN_FREED=0` leaves glibc's defaults (for
/// measuring what the setting costs in memory).
pub fn retain_freed_buffers() -> bool {
    static APPLIED: OnceLock<bool> = OnceLock::new();
    *APPLIED.get_or_init(|| std::env::var("COMPRESS_RETAIN_FREED").as_deref() != Ok("0") && apply())
}

/// What glibc's allocator holds (`mallinfo2`): bytes in use and free in its heaps (all arenas),
/// and bytes in chunks it mapped separately. `None` on other allocators or platforms.
pub fn allocator_stats() -> Option<AllocatorStats> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        Some(AllocatorStats {
            heap_in_use: m.uordblks as u64,
            heap_free: m.fordblks as u64,
            mapped: m.hblkhd as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// glibc allocator counters ([`allocator_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes of heap chunks in use.
    pub heap_in_use: u64,
    /// Free bytes kept in the heaps (resident if they were touched and not trimmed).
    pub heap_free: u64,
    /// Bytes of chunks mapped on their own (large allocations; returned when freed).
    pub mapped: u64,
}

/// Returns the allocator's free memory to the kernel (glibc's `malloc_trim`, which releases
/// whole free pages inside every arena's heap, not only at its top); a no-op elsewhere. With
/// [`retain_freed_buffers`] the heap otherwise stays resident at its high-water mark, and a
/// heap that mixes long-lived and short-lived buffers fragments well above what is live. The
/// pipeline calls it at the start, after each stage's statistics and after each block; the
/// pages it returns are faulted in again when reused (measured in docs/quantization.md).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; live allocations are untouched.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes glibc's malloc parameters; any value is accepted or refused.
    unsafe {
        let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1
            || libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1;
        let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1;
        // One heap for every thread: calibration batches and layers run two at a time on the
        // pool's threads, and memory one thread frees is then reused by the other instead of
        // sitting in a second arena.
        let arenas = libc::mallopt(libc::M_ARENA_MAX, 1) == 1;
        mmap && trim && arenas
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().unwrap() > 0);
        }
    }

    #[test]
    fn counting_allocator_counts_what_it_hands_out() {
        let a = CountingAllocator;
        let before = live_heap_bytes();
        let layout = Layout::from_size_align(1 << 20, 64).unwrap();
        // SAFETY: a non-zero layout; the pointer is freed with the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            // Other tests may allocate concurrently through the same counters only if the
            // allocator were global; it is not in this test binary.
            assert_eq!(live_heap_bytes(), before + (1 << 20));
            assert!(take_peak_heap_bytes() >= before + (1 << 20));
            let p = a.realloc(p, layout, 3 << 20);
            assert_eq!(live_heap_bytes(), before + (3 << 20));
            a.dealloc(p, Layout::from_size_align(3 << 20, 64).unwrap());
        }
        assert_eq!(live_heap_bytes(), before);
        assert!(rss_bytes().is_some() == cfg!(target_os = "linux"));
    }

    #[test]
    fn allocator_setting_applies_on_glibc_and_is_idempotent() {
        let first = retain_freed_buffers();
        assert_eq!(first, cfg!(all(target_os = "linux", target_env = "gnu")));
        assert_eq!(retain_freed_buffers(), first);
        // Allocations still work after the change, large and small.
        let big = vec![1u8; 64 << 20];
        assert_eq!(big.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
    }
}
