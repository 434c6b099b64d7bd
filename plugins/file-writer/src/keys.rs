//! The dedupe keys: the text forms of a row's key columns, hashed to 128 bits.
//!
//! A key is the key columns' text forms (see [`encode`](crate::encode)), each
//! preceded by its length (so that `("ab", "c")` and `("a", "bc")` differ), hashed
//! with SipHash-1-3 in its 128-bit variant under a random key drawn by each
//! instance. The same key comes out of a row being written (its values) and of a
//! line read back from a file (its fields' texts): the dedupe set holds both.

use std::hash::{BuildHasher, RandomState};

use siphasher::sip128::SipHasher13;
use sluice_plugin_sdk::rows::Value;

use crate::encode;

/// SipHash-1-3 with a 128-bit result, under a key drawn at random.
#[derive(Clone, Copy, Debug)]
pub struct KeyHasher {
    sip: SipHasher13,
}

impl KeyHasher {
    /// A hasher with a random key (std's hash map keys, which the host draws from
    /// its real random source).
    pub fn random() -> KeyHasher {
        KeyHasher::with_key(
            RandomState::new().hash_one(0x6b30_u64),
            RandomState::new().hash_one(0x6b31_u64),
        )
    }

    fn with_key(k0: u64, k1: u64) -> KeyHasher {
        KeyHasher {
            sip: SipHasher13::new_with_keys(k0, k1),
        }
    }

    /// The hash of a key built with [`push_text`] and [`push_value`].
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u128 {
        self.sip.hash(key).into()
    }
}

/// Appends one key column's text, length first.
#[inline]
pub fn push_text(key: &mut Vec<u8>, text: &[u8]) {
    encode::put(key, &(text.len() as u64).to_le_bytes());
    encode::put(key, text);
}

/// Appends one key column's value as its text form, length first (null: an
/// empty text).
#[inline]
pub fn push_value(key: &mut Vec<u8>, value: Value<'_>) {
    match value {
        Value::Text(v) | Value::Numeric(v) => push_text(key, v.as_bytes()),
        _ => {
            let at = key.len();
            key.extend_from_slice(&[0; 8]);
            encode::text(&value, key);
            let len = (key.len() - at - 8) as u64;
            key[at..at + 8].copy_from_slice(&len.to_le_bytes());
        }
    }
}

/// The dedupe set: key hashes, each with the id of the file it is in.
///
/// The keys are kept in a list, in the order they came (the whole 128-bit hash
/// and the file id, 20 bytes each), indexed by an open-addressing table with
/// linear probing whose slots are 8 bytes: the hash's low 32 bits as a tag
/// (its home slot is the tag's low bits) and the key's place in the list plus
/// one (0 marks an empty slot). A new key, the common case (every new row),
/// touches one slot of the table, which is small enough to stay in the caches
/// far more often than whole entries would, and is appended to the list, whose
/// writes are sequential; the list is read only where a tag matches. Looking up
/// and inserting each row's key into a table of millions was the writer's
/// costliest step (a cache miss or two per row). Growing the table reads only
/// the old slots, in order, and each lands at or just after its old place or
/// that plus the old size, so those writes are nearly sequential too. At most
/// 13/16 of the slots are used; with the list's spare capacity (it grows by
/// doubling), a key takes 30 to 60 bytes.
pub struct KeySet {
    /// Tag (high 32 bits) and place in `keys` plus one (low 32 bits); 0: empty.
    slots: Vec<u64>,
    keys: Vec<Entry>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Entry {
    hash: [u32; 4],
    file: u32,
}

impl Entry {
    fn new(hash: u128, file: u32) -> Entry {
        Entry {
            hash: [
                hash as u32,
                (hash >> 32) as u32,
                (hash >> 64) as u32,
                (hash >> 96) as u32,
            ],
            file,
        }
    }

    /// Its tag and its home slot in a table of `mask + 1` slots.
    #[inline]
    fn tag_and_home(&self, mask: usize) -> (u32, usize) {
        (self.hash[0], self.hash[0] as usize & mask)
    }
}

/// A slot's tag, its home (in a table of `mask + 1` slots) and its key's place
/// in the list.
#[inline]
fn slot_parts(slot: u64, mask: usize) -> (u32, usize, usize) {
    let tag = (slot >> 32) as u32;
    (tag, tag as usize & mask, (slot as u32 - 1) as usize)
}

/// The slot of the key at `place` in the list.
#[inline]
fn slot(tag: u32, place: usize) -> u64 {
    u64::from(tag) << 32 | (place as u64 + 1)
}

/// Whether a table of `slots` slots may hold `len` keys.
fn fits(len: usize, slots: usize) -> bool {
    len * 16 <= slots * 13
}

const MIN_SLOTS: usize = 1024;

impl Default for KeySet {
    fn default() -> Self {
        KeySet {
            slots: vec![0; MIN_SLOTS],
            keys: Vec::new(),
        }
    }
}

impl KeySet {
    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot of `entry`'s hash, or the empty slot where it would go.
    #[inline]
    fn find(&self, entry: &Entry) -> (usize, bool) {
        let mask = self.mask();
        let (tag, mut i) = entry.tag_and_home(mask);
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return (i, false);
            }
            let (slot_tag, _, place) = slot_parts(slot, mask);
            if slot_tag == tag && self.keys[place].hash == entry.hash {
                return (i, true);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `hash` for `file` unless it is there: whether it was added.
    #[inline]
    pub fn insert_new(&mut self, hash: u128, file: u32) -> bool {
        let entry = Entry::new(hash, file);
        let (i, found) = self.find(&entry);
        if found {
            return false;
        }
        let (tag, _) = entry.tag_and_home(0);
        self.slots[i] = slot(tag, self.keys.len());
        self.keys.push(entry);
        if !fits(self.keys.len(), self.slots.len()) {
            self.grow(self.slots.len() * 2);
        }
        true
    }

    /// Adds each of `hashes` for `file` unless it is there already (or earlier
    /// in `hashes`); `added[i]` tells whether `hashes[i]` was added.
    ///
    /// A batch's keys go in together because of the cache: in a table of
    /// millions of keys nearly every new key's slot is a cache miss, and taken
    /// one at a time each miss is waited for alone. Here a first sweep loads
    /// every key's home slot; those loads do not depend on each other, so the
    /// CPU overlaps their misses, and the inserts after it find the slots
    /// cached. The table is grown for the whole batch first, so that both see
    /// the same slots.
    pub fn insert_all(&mut self, hashes: &[u128], file: u32, added: &mut Vec<bool>) {
        let mut size = self.slots.len();
        while !fits(self.keys.len() + hashes.len(), size) {
            size *= 2;
        }
        if size != self.slots.len() {
            self.grow(size);
        }
        let mask = self.mask();
        let mut sweep = 0;
        for &hash in hashes {
            sweep ^= self.slots[Entry::new(hash, file).tag_and_home(mask).1];
        }
        // Used, so that the compiler keeps the loads.
        std::hint::black_box(sweep);
        added.clear();
        added.extend(hashes.iter().map(|&hash| self.insert_new(hash, file)));
    }

    /// Adds `hash` for `file`, or moves it to `file` if it is there (a key in
    /// two files is forgotten with the one read or written last).
    pub fn insert(&mut self, hash: u128, file: u32) {
        let entry = Entry::new(hash, file);
        match self.find(&entry) {
            (i, true) => self.keys[slot_parts(self.slots[i], 0).2].file = file,
            (_, false) => {
                self.insert_new(hash, file);
            }
        }
    }

    /// Whether `hash` is there.
    #[cfg(test)]
    pub fn contains(&self, hash: u128) -> bool {
        self.find(&Entry::new(hash, 0)).1
    }

    /// Takes `hash` out (nothing if it is not there).
    pub fn remove(&mut self, hash: u128) {
        let (mut hole, found) = self.find(&Entry::new(hash, 0));
        if !found {
            return;
        }
        let mask = self.mask();
        let (_, _, place) = slot_parts(self.slots[hole], mask);
        // Backward shift: move up each later slot of the run whose home is not
        // between the hole and it, so that no probe stops early at the hole.
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let slot = self.slots[j];
            if slot == 0 {
                break;
            }
            let (_, home, _) = slot_parts(slot, mask);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = slot;
                hole = j;
            }
        }
        self.slots[hole] = 0;
        // The list's last key takes the removed one's place.
        let last = self.keys.len() - 1;
        if place != last {
            let moved = self.keys[last];
            let (i, found) = self.find(&moved);
            debug_assert!(found);
            self.slots[i] = slot(slot_parts(self.slots[i], mask).0, place);
            self.keys[place] = moved;
        }
        self.keys.pop();
    }

    /// Keeps the keys whose file `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        let before = self.keys.len();
        self.keys.retain(|e| keep(e.file));
        if self.keys.len() == before {
            return;
        }
        let mut size = MIN_SLOTS;
        while !fits(self.keys.len(), size) {
            size *= 2;
        }
        self.slots = vec![0; size];
        let mask = size - 1;
        for place in 0..self.keys.len() {
            let (tag, home) = self.keys[place].tag_and_home(mask);
            self.put_slot(slot(tag, place), home);
        }
    }

    /// Moves the slots into a table of `size` slots (a power of two, larger):
    /// the old slots are read in order, and each goes to its home in the new
    /// table (its old home, or that plus the old size) or just after.
    #[cold]
    fn grow(&mut self, size: usize) {
        let old = std::mem::replace(&mut self.slots, vec![0; size]);
        let mask = size - 1;
        for s in old.into_iter().filter(|&s| s != 0) {
            self.put_slot(s, slot_parts(s, mask).1);
        }
    }

    /// Puts `slot` in the first empty slot from `home` on.
    #[inline]
    fn put_slot(&mut self, slot: u64, home: usize) {
        let mask = self.mask();
        let mut i = home;
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference implementation's key, 00 01 .. 0f.
    const K0: u64 = 0x0706_0504_0302_0100;
    const K1: u64 = 0x0f0e_0d0c_0b0a_0908;

    /// The outputs of the hand-written SipHash-1-3-128 this writer used before
    /// the `siphasher` crate, for the messages 00 01 .. (n-1): the crate computes
    /// the same hashes, with the halves in the same places.
    #[test]
    fn siphash_1_3_128_as_before() {
        let message: Vec<u8> = (0..64).collect();
        let hasher = KeyHasher::with_key(K0, K1);
        for (n, expected) in [
            (0, 0x013030dd6adb62fdbea58827b2bc7ee7_u128),
            (1, 0x63f02f2bcc73055ea8edd36004376ffc),
            (7, 0x77ab4808c82e2fa6c3e0aaf223b98410),
            (8, 0x99c7f935ab164f72b4dae3d5e1fe12aa),
            (15, 0x09017e1eeccd21296c52bdb205557ec1),
            (16, 0x93179e3df8b013b5eb8e511557d9a8d0),
            (63, 0xad6052a70a6b9f076f42fe4ee300584c),
        ] {
            assert_eq!(hasher.hash(&message[..n]), expected, "{n} bytes");
        }
    }

    #[test]
    fn the_key_set_finds_adds_moves_and_forgets() {
        let mut set = KeySet::default();
        // Hashes that share their home slot (the low bits) and their tag, to
        // exercise probing and the backward shift.
        let hash = |i: u64| u128::from((i + 1) << 20 | (i % 7)) | (u128::from(i % 3) << 96);
        let n = 5000;
        for i in 0..n {
            assert!(set.insert_new(hash(i), (i % 3) as u32));
            assert!(!set.insert_new(hash(i), 9));
        }
        // All 128 bits are compared: 1 << 96 has 0's tag and home.
        assert!(set.insert_new(0, 7) && set.contains(0) && !set.contains(1 << 96));
        set.remove(0);
        assert_eq!(set.len(), n as usize);
        // Remove every fifth, twice; the others stay findable.
        for i in (0..n).filter(|i| i % 5 == 0) {
            set.remove(hash(i));
            set.remove(hash(i));
        }
        for i in 0..n {
            assert_eq!(set.contains(hash(i)), i % 5 != 0, "{i}");
        }
        assert_eq!(set.len(), n as usize - (n as usize).div_ceil(5));
        // Move some to file 3, then forget files 0 and 1.
        for i in (0..n).filter(|i| i % 5 != 0 && i % 2 == 0) {
            set.insert(hash(i), 3);
        }
        set.retain(|file| file >= 2);
        for i in 0..n {
            let kept = i % 5 != 0 && (i % 2 == 0 || i % 3 == 2);
            assert_eq!(set.contains(hash(i)), kept, "{i}");
        }
        set.retain(|_| false);
        assert_eq!(set.len(), 0);
        assert!(!set.contains(hash(1)));
    }

    #[test]
    fn keys_of_values_and_of_texts_agree() {
        let h = KeyHasher::with_key(1, 2);
        let key = |parts: &[Value<'_>]| {
            let mut k = Vec::new();
            for p in parts {
                push_value(&mut k, *p);
            }
            h.hash(&k)
        };
        let texts = |parts: &[&str]| {
            let mut k = Vec::new();
            for p in parts {
                push_text(&mut k, p.as_bytes());
            }
            h.hash(&k)
        };
        assert_eq!(key(&[Value::Text("c-1")]), texts(&["c-1"]));
        assert_eq!(
            key(&[Value::Int64(-42), Value::Timestamp(0), Value::Null]),
            texts(&["-42", "1970-01-01T00:00:00.000000Z", ""])
        );
        assert_ne!(texts(&["ab", "c"]), texts(&["a", "bc"]));
        assert_ne!(
            KeyHasher::random().hash(b"x"),
            KeyHasher::random().hash(b"x")
        );
    }
}
