//! The owner's side of fingerprints: it reads the program's FEATURES ring buffer, keeps each
//! source's [`Evidence`], and publishes what it makes of it in FINGERPRINTS, where every
//! portguard process reads it (`stats`, `top`, `capture`, the metrics).
//!
//! Bounded whatever a flood does: a drain reads at most `MAX_PER_DRAIN` records (the rest wait
//! in the ring buffer, and past its size the program counts them lost), and evidence is kept
//! for at most FINGERPRINT_CAPACITY sources, those SOURCES still holds: a source the table
//! forgets is forgotten here too, its published fingerprint with it.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use portguard_common::{FINGERPRINT_CAPACITY, FeatureEvent, SourceKey, map_names};

use super::{Evidence, Features, Fingerprinter, Label};
use crate::{maps::Maps, wire};

/// Records one drain reads at most (the daemon drains every 100 ms).
pub const MAX_PER_DRAIN: usize = 2_000;

#[derive(Default)]
struct Entry {
    evidence: Evidence,
    /// What FINGERPRINTS holds for it, as last written.
    shown: Option<Label>,
}

pub struct Feed {
    ring: RingBuf<MapData>,
    sources: HashMap<SourceKey, Entry>,
    /// Records read.
    pub read: u64,
    /// Records set aside: unreadable, or for a new source while evidence is kept for as many
    /// sources as it can be.
    pub skipped: u64,
}

impl Feed {
    /// Reads `maps`' FEATURES. The caller is the guard's owner: a ring buffer has one reader
    /// position, and the owner is the one reader of FEATURES.
    pub fn new(maps: &Maps) -> Result<Feed> {
        Ok(Feed {
            ring: maps.ring(map_names::FEATURES)?,
            sources: HashMap::new(),
            read: 0,
            skipped: 0,
        })
    }

    /// Classifies what the ring buffer holds (at most MAX_PER_DRAIN records) and publishes the
    /// fingerprints that changed. Returns the records read.
    pub fn drain(&mut self, fp: &Fingerprinter, maps: &mut Maps) -> usize {
        let mut changed = HashSet::new();
        let mut n = 0;
        while n < MAX_PER_DRAIN {
            let ev = {
                let Some(item) = self.ring.next() else { break };
                if item.len() < size_of::<FeatureEvent>() {
                    None
                } else {
                    // SAFETY: FeatureEvent is plain integers; the record holds one.
                    Some(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const FeatureEvent) })
                }
            };
            n += 1;
            match ev {
                Some(ev) if self.observe(fp, &ev) => {
                    changed.insert(ev.key);
                }
                Some(_) => {}
                None => self.skipped += 1,
            }
        }
        self.read += n as u64;
        for key in changed {
            let Some(e) = self.sources.get_mut(&key) else { continue };
            let Some(label) = &e.shown else { continue };
            if let Err(err) = maps.set_fingerprint(&key, &wire::fingerprint(label)) {
                log::debug!("publishing a fingerprint: {err:#}");
            }
        }
        n
    }

    /// One record; true when the source's label changed.
    fn observe(&mut self, fp: &Fingerprinter, ev: &FeatureEvent) -> bool {
        let addr = wire::source_addr(&ev.key);
        let Ok(f) = Features::from_raw(addr.ip, &ev.raw) else {
            self.skipped += 1;
            return false;
        };
        if !self.sources.contains_key(&ev.key)
            && self.sources.len() >= FINGERPRINT_CAPACITY as usize
        {
            self.skipped += 1;
            return false;
        }
        let e = self.sources.entry(ev.key).or_default();
        e.evidence.observe(fp, &f);
        let Some(summary) = e.evidence.summary() else { return false };
        let label = Label::of(&summary, f.ttl);
        if e.shown.as_ref() == Some(&label) {
            return false;
        }
        e.shown = Some(label);
        true
    }

    /// Forgets the sources SOURCES no longer holds (`present` says which it does), here and in
    /// FINGERPRINTS (`published`: the keys it holds, some perhaps from a previous owner).
    pub fn retain<'a>(
        &mut self,
        maps: &mut Maps,
        present: &HashSet<SourceKey>,
        published: impl IntoIterator<Item = &'a SourceKey>,
    ) {
        self.sources.retain(|k, _| present.contains(k));
        for k in published {
            if !present.contains(k) {
                maps.remove_fingerprint(k);
            }
        }
    }

    /// Sources with evidence.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}
