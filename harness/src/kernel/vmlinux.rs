//! bzImage inspection: release string from the setup header, extraction of the
//! compressed `vmlinux` payload, and PVH entry-point detection.

use std::io::Read;

/// Compression formats a bzImage payload may use (the ones we can undo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Xz,
    Gzip,
}

const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b, 0x08];
const ELF_MAGIC: &[u8] = b"\x7fELF";

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point note qemu looks for.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// True if `data` starts like a bzImage (boot sector signature + "HdrS").
pub fn is_bzimage(data: &[u8]) -> bool {
    data.len() > 0x270 && data[0x1FE..0x200] == [0x55, 0xAA] && &data[0x202..0x206] == b"HdrS"
}

pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(ELF_MAGIC)
}

fn le16(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(off..off + 2)?.try_into().ok()?))
}

fn le32(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off + 4)?.try_into().ok()?))
}

/// The kernel release (`uname -r`) from the setup header's `kernel_version`
/// field (offset 0x20E, a pointer relative to 0x200).
pub fn bzimage_release(data: &[u8]) -> Option<String> {
    if !is_bzimage(data) {
        return None;
    }
    let ptr = le16(data, 0x20E)? as usize;
    if ptr == 0 {
        return None;
    }
    let start = ptr + 0x200;
    let s = data.get(start..(start + 256).min(data.len()))?;
    first_token(s)
}

fn first_token(s: &[u8]) -> Option<String> {
    let end = s
        .iter()
        .position(|&c| c == 0 || c == b' ' || c == b'\n')
        .unwrap_or(s.len());
    let tok = std::str::from_utf8(&s[..end]).ok()?;
    (!tok.is_empty() && tok.as_bytes()[0].is_ascii_digit()).then(|| tok.to_string())
}

/// The release from a vmlinux's banner (`Linux version 6.1.0-50-amd64 (...)`).
pub fn vmlinux_release(data: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    let mut from = 0;
    while let Some(pos) = find(&data[from..], NEEDLE) {
        let start = from + pos + NEEDLE.len();
        if let Some(tok) = first_token(&data[start..(start + 128).min(data.len())]) {
            return Some(tok);
        }
        from = start;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// All offsets where a known compression magic occurs, in file order.
pub fn scan_magics(data: &[u8]) -> Vec<(usize, Compression)> {
    let mut out = Vec::new();
    for (i, w) in data.windows(6).enumerate() {
        if w.starts_with(ZSTD_MAGIC) {
            out.push((i, Compression::Zstd));
        } else if w == XZ_MAGIC {
            out.push((i, Compression::Xz));
        } else if w.starts_with(GZIP_MAGIC) {
            out.push((i, Compression::Gzip));
        }
    }
    out
}

fn detect(data: &[u8]) -> Option<Compression> {
    if data.starts_with(ZSTD_MAGIC) {
        Some(Compression::Zstd)
    } else if data.starts_with(XZ_MAGIC) {
        Some(Compression::Xz)
    } else if data.starts_with(GZIP_MAGIC) {
        Some(Compression::Gzip)
    } else {
        None
    }
}

/// Decompress one stream starting at the beginning of `data`; anything after
/// the end of the stream is ignored.
pub fn decompress(data: &[u8], kind: Compression) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 4);
    match kind {
        Compression::Zstd => {
            zstd::stream::read::Decoder::with_buffer(data)?
                .single_frame()
                .read_to_end(&mut out)?;
        }
        Compression::Xz => xz_one_stream(data, &mut out)?,
        Compression::Gzip => {
            flate2::bufread::GzDecoder::new(data).read_to_end(&mut out)?;
        }
    }
    Ok(out)
}

/// Decode a single xz stream, stopping at its end (xz2's readers treat
/// bytes after the stream as a corrupt second stream).
fn xz_one_stream(data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    use xz2::stream::{Action, Status, Stream};
    let mut stream = Stream::new_stream_decoder(u64::MAX, 0).map_err(std::io::Error::other)?;
    loop {
        if out.capacity() - out.len() < (1 << 20) {
            out.reserve(8 << 20);
        }
        let consumed = stream.total_in() as usize;
        let before_out = stream.total_out();
        let status = stream
            .process_vec(&data[consumed..], out, Action::Run)
            .map_err(std::io::Error::other)?;
        if status == Status::StreamEnd {
            return Ok(());
        }
        if stream.total_in() as usize >= data.len() && stream.total_out() == before_out {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "truncated xz stream",
            ));
        }
    }
}

/// Extract the ELF `vmlinux` from a bzImage. Uses the setup header's
/// payload_offset when present, else scans for compression magics and takes
/// the first candidate that decompresses to an ELF.
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>, String> {
    let mut candidates: Vec<(usize, Compression)> = Vec::new();
    if is_bzimage(bz) {
        let setup_sects = match bz[0x1F1] {
            0 => 4,
            n => n as usize,
        };
        let pm_start = (setup_sects + 1) * 512;
        if let (Some(off), Some(_len)) = (le32(bz, 0x248), le32(bz, 0x24C)) {
            let at = pm_start + off as usize;
            if let Some(kind) = bz.get(at..).and_then(detect) {
                candidates.push((at, kind));
            }
        }
    }
    candidates.extend(scan_magics(bz));
    let mut errors = Vec::new();
    let mut tried = std::collections::HashSet::new();
    for (at, kind) in candidates {
        if !tried.insert(at) {
            continue;
        }
        match decompress(&bz[at..], kind) {
            Ok(out) if is_elf(&out) => return Ok(out),
            Ok(_) => errors.push(format!("{kind:?} stream at {at:#x} is not an ELF")),
            Err(e) => errors.push(format!("{kind:?} at {at:#x}: {e}")),
        }
        if errors.len() > 16 {
            break;
        }
    }
    if errors.is_empty() {
        Err("no zstd/xz/gzip payload found in the image".into())
    } else {
        Err(format!(
            "no payload decompressed to an ELF ({})",
            errors.join("; ")
        ))
    }
}

/// True if the ELF carries a Xen `PHYS32_ENTRY` note (PVH boot entry), which
/// lets qemu boot it directly with `-kernel`.
pub fn has_pvh_note(elf: &[u8]) -> bool {
    let Ok(parsed) = goblin::elf::Elf::parse(elf) else {
        return false;
    };
    let is_pvh = |n: &goblin::elf::note::Note| {
        n.n_type == XEN_ELFNOTE_PHYS32_ENTRY && n.name.trim_end_matches('\0') == "Xen"
    };
    if let Some(iter) = parsed.iter_note_headers(elf) {
        for note in iter.flatten() {
            if is_pvh(&note) {
                return true;
            }
        }
    }
    if let Some(iter) = parsed.iter_note_sections(elf, None) {
        for note in iter.flatten() {
            if is_pvh(&note) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn magic_scan_finds_all_formats() {
        let mut d = vec![0u8; 64];
        d[3..7].copy_from_slice(ZSTD_MAGIC);
        d[20..26].copy_from_slice(XZ_MAGIC);
        d[40..43].copy_from_slice(GZIP_MAGIC);
        let found = scan_magics(&d);
        assert_eq!(
            found,
            vec![
                (3, Compression::Zstd),
                (20, Compression::Xz),
                (40, Compression::Gzip)
            ]
        );
    }

    fn fake_elf() -> Vec<u8> {
        let mut v = b"\x7fELF\x02\x01\x01".to_vec();
        v.extend(std::iter::repeat_n(0xAB, 5000));
        v
    }

    #[test]
    fn extracts_each_format_with_trailing_garbage() {
        let elf = fake_elf();
        let zst = zstd::encode_all(&elf[..], 3).unwrap();
        let mut xz = Vec::new();
        xz2::write::XzEncoder::new(&mut xz, 6)
            .write_all(&elf)
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&elf).unwrap();
        let gz = gz.finish().unwrap();
        for payload in [zst, xz, gz] {
            let mut img = vec![0x11u8; 700];
            img.extend(&payload);
            img.extend([0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]);
            let out = extract_vmlinux(&img).unwrap();
            assert_eq!(out, elf);
        }
    }

    #[test]
    fn release_strings() {
        let mut bz = vec![0u8; 0x1000];
        bz[0x1FE] = 0x55;
        bz[0x1FF] = 0xAA;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x20E..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let s = b"6.1.0-50-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        bz[0x500..0x500 + s.len()].copy_from_slice(s);
        assert_eq!(bzimage_release(&bz).as_deref(), Some("6.1.0-50-amd64"));

        let v = b"xxLinux version %s\0Linux version 6.12.95+deb12-amd64 (gcc) #1";
        assert_eq!(vmlinux_release(v).as_deref(), Some("6.12.95+deb12-amd64"));
    }
}
