//! Giving back the resident pages of a memory-mapped weight file once a tensor was copied out.
//!
//! The loaders read weights from read-only shared maps of the file (GGUF, safetensors). Each
//! page a tensor's bytes were read through stays in the process's resident set until the
//! kernel needs the memory, so a model copied out of its file would otherwise count twice:
//! once as the copy and once as the file's pages. [`release`] tells the kernel that the pages
//! lying wholly inside a tensor's bytes are not needed (`madvise(MADV_DONTNEED)`); a later read
//! faults the same bytes back in from the file (the file's page cache usually still has them).

use memmap2::Mmap;

/// Page size assumed for the alignment of released ranges. A smaller real page size only
/// leaves a few more pages resident; a larger one makes `madvise` refuse the range (ignored).
const PAGE: usize = 4096;

/// The page-aligned sub-range `[first, end)` (offsets into a map of `map_len` bytes at
/// address `map_start`) of the pages wholly inside the `len` bytes at address `addr`; `None`
/// when no whole page lies inside or the bytes are not all inside the map.
fn whole_pages(
    map_start: usize,
    map_len: usize,
    addr: usize,
    len: usize,
) -> Option<(usize, usize)> {
    let start = addr.checked_sub(map_start)?;
    let stop = start.checked_add(len)?;
    if stop > map_len {
        return None;
    }
    let (first, end) = (start.div_ceil(PAGE) * PAGE, stop / PAGE * PAGE);
    (end > first).then_some((first, end))
}

/// Drops the resident pages of `map` that lie wholly inside `bytes` (a slice of `map`).
/// Advisory: a slice outside the map, a range with no whole page, platforms without `madvise`
/// and refusals by the kernel are all ignored.
pub(crate) fn release(map: &Mmap, bytes: &[u8]) {
    let (map_start, addr) = (map.as_ptr() as usize, bytes.as_ptr() as usize);
    let Some((first, end)) = whole_pages(map_start, map.len(), addr, bytes.len()) else {
        return;
    };
    #[cfg(unix)]
    {
        // SAFETY: the map is a read-only shared mapping of a file: dropping its pages only
        // makes later reads fault them in again from the file, with the same contents; no
        // Rust reference sees the memory change. The range is page aligned and inside the map.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first)
        };
    }
    #[cfg(not(unix))]
    let _ = (first, end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_pages_inside_the_slice_are_chosen() {
        let (base, len) = (10 * PAGE, 8 * PAGE);
        let at = |off: usize, n: usize| whole_pages(base, len, base + off, n);
        assert_eq!(at(0, 8 * PAGE), Some((0, 8 * PAGE)));
        assert_eq!(at(100, 3 * PAGE), Some((PAGE, 3 * PAGE)));
        // Less than a page, or straddling one boundary only: nothing whole inside.
        assert_eq!(at(100, PAGE), None);
        // Past the end of the map, or before its start.
        assert_eq!(at(7 * PAGE, 2 * PAGE), None);
        assert_eq!(whole_pages(base + PAGE, len, base, PAGE), None);
    }

    /// The resident bytes of the mapping that starts at `addr`, from `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    fn resident_kib(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut lines = smaps.lines();
        while let Some(line) = lines.next() {
            let range = line.split_whitespace().next()?;
            let Some((lo, _)) = range.split_once('-') else {
                continue;
            };
            if usize::from_str_radix(lo, 16).ok() == Some(addr) {
                for l in lines.by_ref() {
                    if let Some(v) = l.strip_prefix("Rss:") {
                        return v.trim().trim_end_matches("kB").trim().parse().ok();
                    }
                }
            }
        }
        None
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_pages_leave_the_resident_set_and_read_back_unchanged() {
        use std::io::Write;
        let pages = 64;
        let data: Vec<u8> = (0..pages * PAGE).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        // SAFETY: a private temporary file nobody else writes.
        let map = unsafe { Mmap::map(&file).unwrap() };
        let sum = |m: &Mmap| m.iter().map(|&b| u64::from(b)).sum::<u64>();
        let want = sum(&map); // touches every page
        let before = resident_kib(map.as_ptr() as usize).expect("the map is in smaps");
        assert_eq!(before, (pages * PAGE / 1024) as u64);
        // Bytes 100 .. 100 + 40 pages: pages 1..=39 are wholly inside (39 pages).
        release(&map, &map[100..100 + 40 * PAGE]);
        let after = resident_kib(map.as_ptr() as usize).unwrap();
        assert_eq!(after, before - (39 * PAGE / 1024) as u64);
        // Reading again faults the same bytes back in.
        assert_eq!(sum(&map), want);
        assert_eq!(&map[..], &data[..]);
    }
}
