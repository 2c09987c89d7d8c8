//! The on-disk snapshot: the table and the last feed ID, so that a restart blocks at once even
//! while APIBAN is down.
//!
//! Format (little endian): magic `APIBANSN`, version u32, reserved u32, last_id u64, saved_at u64,
//! n4 u64, n6 u64, then n4 × (address u32, listed_at u32), n6 × (address u128, listed_at u32),
//! then an FNV-1a 64 checksum of everything before it. Written to a temporary file in the same
//! directory, fsynced, renamed over the old one, and the directory fsynced: a crash leaves the old
//! snapshot or the new one, never a mix. Anything that does not verify is refused whole.

use crate::addr::Key;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"APIBANSN";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 4 + 8 + 8 + 8 + 8;

#[derive(Debug, Default, PartialEq)]
pub struct Snapshot {
    pub last_id: u64,
    pub saved_at: u64,
    /// Address and the time its batch listed it.
    pub entries: Vec<(Key, u32)>,
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn encode(s: &Snapshot) -> Vec<u8> {
    let v4: Vec<_> = s.entries.iter().filter_map(|&(k, t)| if let Key::V4(a) = k { Some((a, t)) } else { None }).collect();
    let v6: Vec<_> = s.entries.iter().filter_map(|&(k, t)| if let Key::V6(a) = k { Some((a, t)) } else { None }).collect();
    let mut out = Vec::with_capacity(HEADER + v4.len() * 8 + v6.len() * 20 + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&s.last_id.to_le_bytes());
    out.extend_from_slice(&s.saved_at.to_le_bytes());
    out.extend_from_slice(&(v4.len() as u64).to_le_bytes());
    out.extend_from_slice(&(v6.len() as u64).to_le_bytes());
    for (a, t) in v4 {
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&t.to_le_bytes());
    }
    for (a, t) in v6 {
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&t.to_le_bytes());
    }
    seal(out)
}

/// Appends the checksum that `decode` verifies.
pub fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let sum = fnv1a(&body);
    body.extend_from_slice(&sum.to_le_bytes());
    body
}

/// Verifies and decodes; `max_entries` bounds what a file can make us allocate.
pub fn decode(data: &[u8], max_entries: usize) -> Result<Snapshot, String> {
    if data.len() < HEADER + 8 {
        return Err(format!("too short ({} bytes)", data.len()));
    }
    if &data[..8] != MAGIC {
        return Err("not an apiban snapshot".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
    let version = u32_at(8);
    if version != VERSION {
        return Err(format!("format version {version}, this module reads {VERSION}"));
    }
    if u32_at(12) != 0 {
        return Err("reserved header field is not zero".into());
    }
    let (n4, n6) = (u64_at(32), u64_at(40));
    if n4.saturating_add(n6) > 2 * max_entries as u64 {
        return Err(format!("{} entries, more than max_entries allows", n4.saturating_add(n6)));
    }
    let expect = n4
        .checked_mul(8)
        .zip(n6.checked_mul(20))
        .and_then(|(a, b)| a.checked_add(b))
        .and_then(|x| x.checked_add(HEADER as u64 + 8))
        .ok_or("entry counts overflow")?;
    if data.len() as u64 != expect {
        return Err(format!("truncated or padded ({} bytes, expected {expect})", data.len()));
    }
    let body = data.len() - 8;
    if fnv1a(&data[..body]) != u64_at(body) {
        return Err("checksum mismatch".into());
    }
    let mut entries = Vec::with_capacity((n4 + n6) as usize);
    let mut o = HEADER;
    for _ in 0..n4 {
        entries.push((Key::V4(u32_at(o)), u32_at(o + 4)));
        o += 8;
    }
    for _ in 0..n6 {
        let a = u128::from_le_bytes(data[o..o + 16].try_into().unwrap());
        entries.push((Key::V6(a), u32_at(o + 16)));
        o += 20;
    }
    Ok(Snapshot { last_id: u64_at(16), saved_at: u64_at(24), entries })
}

/// Checks at start that `save` can work: the snapshot's directory exists and this process's user
/// can create a file in it, tried the way `save` does it (a temporary file, removed at once).
/// Debian's service runs the server as `kamailio` from its first instruction, so mod_init's user
/// is the refresher's. The error names the directory, the user and what to do.
pub fn check_dir(path: &Path) -> Result<(), String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (name, uid) = crate::os::effective_user();
    let who = match &name {
        Some(n) => format!("user {n} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    // Debian's system users have a group of their own name (adduser --system --group).
    let owner = name.map_or(format!("{uid}"), |n| format!("{n} -g {n}"));
    let fix = format!("create it writable by {who}: install -d -o {owner} -m 0750 {}", dir.display());
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory; no snapshot can be written", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("directory {} does not exist, so no snapshot can be written: {fix}", dir.display()))
        }
        Err(e) => return Err(format!("cannot reach directory {}: {e}; {fix}", dir.display())),
    }
    let probe = dir.join(format!(".apiban-write-check.{}", std::process::id()));
    match File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!("{who} cannot write in directory {}: {e}; {fix}", dir.display())),
    }
}


pub fn save(path: &Path, s: &Snapshot) -> std::io::Result<()> {
    write_durably(path, &encode(s))
}

/// Whether `Writer::save` wrote the file.
#[derive(Debug, PartialEq)]
pub enum Saved {
    Written,
    /// The file holds that content already: not written.
    Unchanged,
}

/// Which file is at a path, and as what: (device, inode, size, modification time in ns).
type FileId = (u64, u64, u64, i128);

fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128))
}

/// Writes the snapshot only when what a restart reads of it would change: its entries (each
/// address and its listing time) or its last ID, told by a digest of both that the caller
/// computes. `saved_at` alone does not count: after an unchanged sync the file keeps the time
/// of the write that made it, and a restart then schedules its full resync from that earlier
/// time, so at worst sooner, never later. The file is written again as well when it is not the
/// one this writer last wrote or read (removed, replaced, touched), or when the last write
/// failed.
#[derive(Default)]
pub struct Writer {
    saved: Option<(u64, FileId)>,
}

impl Writer {
    /// The file at `path` holds the content of `digest` (the snapshot read at start).
    pub fn known(&mut self, path: &Path, digest: u64) {
        self.saved = file_id(path).map(|f| (digest, f));
    }

    /// Writes `snapshot()` durably (`save`), unless the file already holds content of `digest`.
    pub fn save(&mut self, path: &Path, digest: u64, snapshot: impl FnOnce() -> Snapshot) -> std::io::Result<Saved> {
        if self.saved.is_some_and(|(d, f)| d == digest && file_id(path) == Some(f)) {
            return Ok(Saved::Unchanged);
        }
        self.saved = None;
        save(path, &snapshot())?;
        self.saved = file_id(path).map(|f| (digest, f));
        Ok(Saved::Written)
    }
}

/// Replaces `path` with `data` so that a crash at any point leaves the old file or the new one,
/// whole: a temporary file beside it, synced, renamed over it, the directory synced.
pub fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("apiban.snapshot");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The snapshot at `path`; `Ok(None)` when there is none yet (told by the error's kind, not
/// its text, which depends on the C library's locale).
pub fn load(path: &Path, max_entries: usize) -> Result<Option<Snapshot>, String> {
    match fs::read(path) {
        Ok(data) => decode(&data, max_entries).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read: {e}")),
    }
}

/// Removes the temporary files that a stop in the middle of `save` left beside `path`
/// (`.<name>.tmp.<pid>` of a process that is gone); they would pile up across restarts.
/// Returns how many were removed.
pub fn remove_stale_temps(path: &Path) -> usize {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return 0 };
    let prefix = format!(".{name}.tmp.");
    let Ok(list) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in list.flatten() {
        let file = e.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if crate::os::pid_alive(pid) && pid as u32 != std::process::id() {
            continue; // another running server's write in progress
        }
        if fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}


#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            last_id: 1_700_000_123,
            saved_at: 1_700_000_200,
            entries: vec![(Key::V4(0xC000_0201), 1_700_000_000), (Key::V6(0x2001_0db8 << 96 | 9), 1_700_000_100)],
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let p = std::env::temp_dir().join(format!("apiban-snap-{}", std::process::id()));
        save(&p, &sample()).unwrap();
        assert_eq!(load(&p, 10).unwrap(), Some(sample()));
        fs::remove_file(&p).unwrap();
    }

    #[test]
    fn an_unchanged_snapshot_is_not_written_again() {
        let dir = std::env::temp_dir().join(format!("apiban-snapw-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("apiban.snapshot");
        let stamp = |p: &Path| file_id(p).unwrap();
        let mut w = Writer::default();
        let snap = |saved_at| move || Snapshot { saved_at, ..sample() };
        assert_eq!(w.save(&p, 1, snap(1)).unwrap(), Saved::Written);
        let first = stamp(&p);
        // Same content, a later time: the file (inode, size, mtime) stays as it was.
        assert_eq!(w.save(&p, 1, snap(2)).unwrap(), Saved::Unchanged);
        assert_eq!(stamp(&p), first);
        assert_eq!(load(&p, 10).unwrap().unwrap().saved_at, 1);
        // Other content: written, durably (a new file renamed over the old one).
        assert_eq!(w.save(&p, 2, snap(3)).unwrap(), Saved::Written);
        assert_ne!(stamp(&p).1, first.1);
        assert_eq!(load(&p, 10).unwrap().unwrap().saved_at, 3);
        // The file removed or replaced behind our back: written again.
        fs::remove_file(&p).unwrap();
        assert_eq!(w.save(&p, 2, snap(4)).unwrap(), Saved::Written);
        fs::write(&p, b"not a snapshot").unwrap();
        assert_eq!(w.save(&p, 2, snap(5)).unwrap(), Saved::Written);
        assert_eq!(load(&p, 10).unwrap().unwrap().saved_at, 5);
        // A writer that read the file at start knows its content; one that failed forgets.
        let mut r = Writer::default();
        r.known(&p, 2);
        assert_eq!(r.save(&p, 2, snap(6)).unwrap(), Saved::Unchanged);
        let mut bad = Writer::default();
        let nowhere = dir.join("missing/apiban.snapshot");
        assert!(bad.save(&nowhere, 2, snap(7)).is_err());
        assert!(bad.save(&nowhere, 2, snap(7)).is_err(), "tried again, not skipped");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damage_is_refused() {
        let good = encode(&sample());
        assert!(decode(&good[..good.len() - 1], 10).unwrap_err().contains("truncated"));
        assert!(decode(&good[..10], 10).unwrap_err().contains("too short"));
        let mut flipped = good.clone();
        flipped[HEADER + 2] ^= 1;
        assert!(decode(&flipped, 10).unwrap_err().contains("checksum"));
        let mut other = good.clone();
        other[8] = 9;
        assert!(decode(&other, 10).unwrap_err().contains("version"));
        assert!(decode(b"APIBANSX and more bytes than the header needs to be long", 10).is_err());
        assert!(decode(&good, 0).unwrap_err().contains("max_entries"));
        let mut huge = good.clone();
        huge[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&huge, usize::MAX / 4).is_err());
    }

    #[test]
    fn a_missing_file_is_none_and_an_unreadable_one_an_error() {
        assert_eq!(load(Path::new("/nonexistent/apiban.snapshot"), 10), Ok(None));
        // A directory where the file should be: not "none yet", an error that says why.
        assert!(load(&std::env::temp_dir(), 10).unwrap_err().contains("cannot read"));
    }

    #[test]
    fn stale_temporary_files_are_removed_at_start() {
        let dir = std::env::temp_dir().join(format!("apiban-tmps-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let snap = dir.join("apiban.snapshot");
        // A pid that cannot exist (above pid_max), one of this process, an unrelated file.
        for f in [".apiban.snapshot.tmp.2147483000", &format!(".apiban.snapshot.tmp.{}", std::process::id()), ".other.tmp.1", "apiban.snapshot"] {
            fs::write(dir.join(f), b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(&snap), 2);
        let mut left: Vec<String> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [".other.tmp.1", "apiban.snapshot"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_start_check_names_a_missing_or_unwritable_directory() {
        let dir = std::env::temp_dir().join(format!("apiban-snapdir-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let owner = match crate::os::effective_user() {
            (Some(n), _) => format!("{n} -g {n}"),
            (None, uid) => format!("{uid}"),
        };
        assert_eq!(check_dir(&dir.join("apiban.snapshot")), Ok(()));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "the probe file is left behind");
        let e = check_dir(&dir.join("missing/apiban.snapshot")).unwrap_err();
        assert!(e.contains(&format!("directory {}/missing does not exist", dir.display())), "{e}");
        assert!(e.contains(&format!("install -d -o {owner} -m 0750 {}/missing", dir.display())), "{e}");
        fs::write(dir.join("file"), b"").unwrap();
        let e = check_dir(&dir.join("file/apiban.snapshot")).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
        // A directory nobody may write in (root writes anyway: only the message is checked then).
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.join("ro");
        fs::create_dir(&ro).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let e = check_dir(&ro.join("apiban.snapshot")).unwrap_err();
            assert!(e.contains("cannot write in directory") && e.contains("Permission denied"), "{e}");
        }
        // SAFETY: geteuid has no preconditions.
        assert_eq!(crate::os::effective_user().1, unsafe { libc::geteuid() });
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mutated_snapshots_are_refused_or_decode_to_what_they_encode() {
        let good = encode(&sample());
        let mut m = crate::mutate::Mutator::new(0x5a9);
        for _ in 0..100_000 {
            let input = m.mutate(&good);
            if let Ok(s) = decode(&input, 1000) {
                assert_eq!(encode(&s), input);
            }
        }
    }
}
