//! `.tursync/leaves.sum`: what the working copy's table leaves held when it last held exactly
//! the base's rows (the snapshot a push read and then moved the base to), one [`Leaf`] per leaf
//! page: number, hash of its bytes, first and last rowid. With it a diff reads only the working
//! copy's pages, decodes only the leaves whose bytes changed, and reads from the base only the
//! rows of the leaves that changed or went (by rowid range), so a small push into a large
//! database does not walk the base at all ([`crate::diff`]).
//!
//! The file is a cache that can only ever be ignored: it counts only while `sync.json` names
//! its id (a hash of its whole content, so a file cut short, damaged, or from another push does
//! not match) and the base still has the stamp it records. Every move of the base forgets the id
//! first ([`crate::workspace::Workspace::update_base`]), so the file is never synced: a crash
//! leaves at worst a file nobody names, and the diff walks both files as before.
//!
//! ```text
//! push: diff reads the working copy's leaves -> base moves by the changeset
//!       -> leaves.sum {base stamp, page size, per table: leaves} ; sync.json {leaves: id}
//! next diff: leaf 812 same bytes -> its rows are the base's, passed over
//!            leaf 813 new bytes  -> decoded; base rows 40001..40080 read and compared
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::pages::{page_sum, Leaf, Stamp};
use crate::{Context, Result};

pub const FILE: &str = "leaves.sum";
const MAGIC: &[u8] = b"tursync leaf sums 1\n";

/// The leaves of the working copy's tables at one snapshot, and the base they stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSums {
    pub head: Head,
    /// Per table, every leaf of its B-tree in key order. Only tables whose every leaf was
    /// read are here: a table left out has no summary and is walked in full.
    pub tables: BTreeMap<String, Vec<Leaf>>,
}

/// What the leaves stand for: the base with this stamp, and a file of this page layout.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    pub base: Stamp,
    pub page_size: u32,
    pub usable: u32,
}

/// The leaves a diff read, before the base they stand for is known: a push moves the base
/// after its diff ([`Walked::standing_for`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walked {
    pub page_size: u32,
    pub usable: u32,
    pub tables: BTreeMap<String, Vec<Leaf>>,
}

impl Walked {
    /// The summary of these leaves for a base with stamp `base`, which holds their rows.
    pub fn standing_for(self, base: Stamp) -> LeafSums {
        LeafSums {
            head: Head {
                base,
                page_size: self.page_size,
                usable: self.usable,
            },
            tables: self.tables,
        }
    }
}

impl LeafSums {
    fn encode(&self) -> Result<Vec<u8>> {
        let head = serde_json::to_vec(&self.head)?;
        let leaves: usize = self.tables.values().map(Vec::len).sum();
        let mut out = Vec::with_capacity(64 + head.len() + 29 * leaves);
        out.extend_from_slice(MAGIC);
        put_len(&mut out, head.len());
        out.extend_from_slice(&head);
        put_len(&mut out, self.tables.len());
        for (name, leaves) in &self.tables {
            put_len(&mut out, name.len());
            out.extend_from_slice(name.as_bytes());
            put_len(&mut out, leaves.len());
            for l in leaves {
                out.extend_from_slice(&l.pgno.to_le_bytes());
                out.extend_from_slice(&l.sum.to_le_bytes());
                let (first, last) = l.rows.unwrap_or((0, 0));
                out.push(u8::from(l.rows.is_some()) | (u8::from(l.spills) << 1));
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&last.to_le_bytes());
            }
        }
        Ok(out)
    }

    fn decode(b: &[u8]) -> Option<LeafSums> {
        let mut r = Reader { b, at: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return None;
        }
        let n = r.len()?;
        let head: Head = serde_json::from_slice(r.take(n)?).ok()?;
        let mut tables = BTreeMap::new();
        for _ in 0..r.len()? {
            let n = r.len()?;
            let name = String::from_utf8(r.take(n)?.to_vec()).ok()?;
            let count = r.len()?;
            let mut leaves = Vec::with_capacity(count.min(b.len() / 29));
            for _ in 0..count {
                let pgno = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
                let sum = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
                let flags = r.take(1)?[0];
                let first = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
                let last = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
                leaves.push(Leaf {
                    pgno,
                    sum,
                    rows: (flags & 1 != 0).then_some((first, last)),
                    spills: flags & 2 != 0,
                });
            }
            tables.insert(name, leaves);
        }
        (r.at == b.len()).then_some(LeafSums { head, tables })
    }

    /// Writes the file into `dir` and returns its id, for `sync.json`. Neither synced nor
    /// built aside (see the module doc): the old file is removed and the new one written in its
    /// place, since a rename over a file or a truncation makes ext4 flush the new data at once.
    pub fn save(&self, dir: &Path) -> Result<u64> {
        let mut bytes = self.encode()?;
        let id = page_sum(&bytes);
        bytes.extend_from_slice(&id.to_le_bytes());
        let path = dir.join(FILE);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).during("removing", path.display())
            }
            _ => {}
        }
        fs::write(&path, &bytes).during("writing", path.display())?;
        Ok(id)
    }

    /// The file in `dir` if it is whole and the one with id `id`; `None` otherwise (missing,
    /// cut short, damaged, another push's), which only costs the diff a full walk.
    pub fn load(dir: &Path, id: u64) -> Option<LeafSums> {
        let bytes = fs::read(dir.join(FILE)).ok()?;
        let (body, tail) = bytes.split_at_checked(bytes.len().checked_sub(8)?)?;
        if u64::from_le_bytes(tail.try_into().ok()?) != id || page_sum(body) != id {
            return None;
        }
        LeafSums::decode(body)
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(u64::from_le_bytes(self.take(8)?.try_into().ok()?)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LeafSums {
        let stamp: Stamp = serde_json::from_str(
            r#"{"change_counter":3,"schema_cookie":1,"pages":9,"free_pages":0}"#,
        )
        .unwrap();
        let leaves = vec![
            Leaf {
                pgno: 2,
                sum: 7,
                rows: Some((1, 40)),
                spills: false,
            },
            Leaf {
                pgno: 5,
                sum: u64::MAX,
                rows: None,
                spills: true,
            },
        ];
        LeafSums {
            head: Head {
                base: stamp,
                page_size: 4096,
                usable: 4096,
            },
            tables: BTreeMap::from([("t".to_owned(), leaves)]),
        }
    }

    #[test]
    fn reads_back_only_the_file_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let sums = sample();
        let id = sums.save(dir.path()).unwrap();
        assert_eq!(LeafSums::load(dir.path(), id), Some(sums.clone()));
        assert_eq!(LeafSums::load(dir.path(), id ^ 1), None, "another id");
        let path = dir.path().join(FILE);
        let whole = fs::read(&path).unwrap();
        for cut in [0, 1, MAGIC.len(), whole.len() / 2, whole.len() - 1] {
            fs::write(&path, &whole[..cut]).unwrap();
            assert_eq!(LeafSums::load(dir.path(), id), None, "cut at {cut}");
        }
        for at in [0, MAGIC.len() + 9, whole.len() - 20, whole.len() - 1] {
            let mut bad = whole.clone();
            bad[at] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            assert_eq!(LeafSums::load(dir.path(), id), None, "byte {at} changed");
        }
        fs::remove_file(&path).unwrap();
        assert_eq!(LeafSums::load(dir.path(), id), None, "missing");
    }
}
