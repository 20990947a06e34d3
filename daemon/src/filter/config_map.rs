//! The program's configuration, mapped into this process's memory.
//!
//! A map update through the bpf syscall copies the value with `memcpy`,
//! which does not promise that an 8-byte word is written in one store. The
//! flip of [`Config::epoch`] (table buffer and exact generation) must be one
//! store, so the configuration map is `BPF_F_MMAPABLE` and written here
//! directly: the epoch with one atomic store, the other fields one by one
//! (each is a setting of its own; none of them must change together).

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::{self, NonNull},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;
use rampart_common::{Config, MAP_CONFIG, epoch};

use super::FilterError;

pub(crate) struct ConfigMap {
    /// Keeps the map's file descriptor for as long as the mapping.
    _map: MapData,
    value: NonNull<Config>,
    len: usize,
}

// SAFETY: the mapping is memory of this process that only this value
// refers to; writes take `&mut self`, reads are volatile or atomic.
unsafe impl Send for ConfigMap {}
// SAFETY: as above; `&self` methods only read.
unsafe impl Sync for ConfigMap {}

impl ConfigMap {
    pub(crate) fn new(map: MapData) -> Result<Self, FilterError> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = std::mem::size_of::<Config>().div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's value area (element 0
        // at offset 0 for BPF_F_MMAPABLE arrays); the result is checked.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        let value = (p != libc::MAP_FAILED)
            .then(|| NonNull::new(p.cast::<Config>()))
            .flatten()
            .ok_or_else(|| FilterError::MapMemory {
                name: MAP_CONFIG,
                source: std::io::Error::last_os_error(),
            })?;
        Ok(Self {
            _map: map,
            value,
            len,
        })
    }

    fn epoch_word(&self) -> &AtomicU64 {
        // SAFETY: the epoch is the first field of a page-aligned value, so
        // aligned for an AtomicU64, and the mapping outlives `self`.
        unsafe { AtomicU64::from_ptr(self.value.as_ptr().cast::<u64>()) }
    }

    /// The configuration as the program reads it now.
    pub(crate) fn read(&self) -> Config {
        // SAFETY: a valid mapping of one Config (integers only).
        let mut cfg = unsafe { ptr::read_volatile(self.value.as_ptr()) };
        cfg.epoch = self.epoch_word().load(Ordering::Acquire);
        cfg
    }

    /// Writes every field but the epoch.
    pub(crate) fn write_settings(&mut self, cfg: &Config) {
        let p = self.value.as_ptr();
        // SAFETY: in-bounds, aligned fields of the mapped value.
        unsafe {
            ptr::addr_of_mut!((*p).flags).write_volatile(cfg.flags);
            ptr::addr_of_mut!((*p).flood_v6_prefix).write_volatile(cfg.flood_v6_prefix);
            ptr::addr_of_mut!((*p).flood_interval_ns).write_volatile(cfg.flood_interval_ns);
            ptr::addr_of_mut!((*p).flood_tolerance_ns).write_volatile(cfg.flood_tolerance_ns);
            ptr::addr_of_mut!((*p).event_interval_ns).write_volatile(cfg.event_interval_ns);
            ptr::addr_of_mut!((*p).event_tolerance_ns).write_volatile(cfg.event_tolerance_ns);
        }
    }

    pub(crate) fn set_flags(&mut self, flags: u32) {
        let p = self.value.as_ptr();
        // SAFETY: an in-bounds, aligned field of the mapped value.
        unsafe { ptr::addr_of_mut!((*p).flags).write_volatile(flags) };
    }

    /// Makes table buffer `active` and exact generation `exact_gen` the
    /// ones in force, with one store.
    pub(crate) fn flip(&mut self, active: u32, exact_gen: u32) {
        self.epoch_word()
            .store(epoch(active, exact_gen), Ordering::SeqCst);
    }
}

impl Drop for ConfigMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.value.as_ptr().cast(), self.len) };
    }
}
