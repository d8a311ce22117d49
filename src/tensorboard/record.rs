//! TFRecord framing, the container of TensorBoard's event files: each record is a
//! little-endian `u64` length, the masked CRC-32C of those 8 bytes, the data, and the masked
//! CRC-32C of the data. Both checksums are verified; a record that fails one is an error, but
//! a record cut short at the end of the file is where a writer is still writing, so reading
//! stops before it and the caller resumes from that offset later.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, bail};

/// CRC-32C (Castagnoli) of `data`: reflected polynomial 0x82F63B78, initial value and final
/// xor all ones (iSCSI, ext4, TFRecord).
pub fn crc32c(data: &[u8]) -> u32 {
    let crc = data.iter().fold(!0u32, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    });
    !crc
}

/// The byte-at-a-time table of [`crc32c`], built at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// TFRecord's masked CRC: rotated and offset, so that a CRC of data holding CRCs stays
/// well distributed.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// How far a scan got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// The offset just past the last whole record: where the next scan starts.
    pub end: u64,
    /// Whether bytes of an unfinished record follow `end`.
    pub partial: bool,
}

impl Scan {
    fn at(end: u64, partial: bool) -> Scan {
        Scan { end, partial }
    }
}

/// Reads the records of the file at `path` from byte `start` on, handing each one's data to
/// `each`. A damaged record is an error naming the file and the record's offset.
pub fn scan_file(
    path: &Path,
    start: u64,
    each: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<Scan> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file.seek(SeekFrom::Start(start))
        .with_context(|| format!("reading {}", path.display()))?;
    scan(BufReader::with_capacity(1 << 16, file), start, each)
        .with_context(|| format!("reading {}", path.display()))
}

/// [`scan_file`] over any reader positioned at offset `start` of its stream.
pub fn scan(
    mut r: impl Read,
    start: u64,
    mut each: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<Scan> {
    let mut at = start;
    let mut data = Vec::new();
    loop {
        let mut header = [0u8; 12];
        let got = read_full(&mut r, &mut header)?;
        if got < header.len() {
            // The end, or a header still being written.
            return Ok(Scan::at(at, got > 0));
        }
        let (len, crc) = header.split_at(8);
        if masked_crc32c(len) != u32::from_le_bytes(crc.try_into()?) {
            bail!("the record at byte {at} has a wrong length checksum: the file is damaged");
        }
        let len = u64::from_le_bytes(len.try_into()?);
        let whole = (len.checked_add(4).and_then(|n| usize::try_from(n).ok()))
            .with_context(|| format!("the record at byte {at} claims {len} bytes"))?;
        data.resize(whole, 0);
        if read_full(&mut r, &mut data)? < whole {
            return Ok(Scan::at(at, true));
        }
        let (body, crc) = data.split_at(whole - 4);
        if masked_crc32c(body) != u32::from_le_bytes(crc.try_into()?) {
            bail!("the record at byte {at} has a wrong data checksum: the file is damaged");
        }
        each(body).with_context(|| format!("decoding the record at byte {at}"))?;
        at += 12 + len + 4;
    }
}

/// Fills `buf` as far as the stream allows; the bytes read (fewer only at its end).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One record framed as TFRecord: what a writer appends for `data`.
#[cfg(test)]
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = len.to_vec();
    out.extend(masked_crc32c(&len).to_le_bytes());
    out.extend(data);
    out.extend(masked_crc32c(data).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(bytes: &[u8], start: u64) -> anyhow::Result<(Vec<Vec<u8>>, Scan)> {
        let mut out = Vec::new();
        let scan = scan(&bytes[start as usize..], start, |d| {
            out.push(d.to_vec());
            Ok(())
        })?;
        Ok((out, scan))
    }

    #[test]
    fn crc32c_of_the_check_string_is_the_published_value() {
        // The check value of CRC-32C in the catalogue of parametrised CRCs (and RFC 3720's).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720, B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn the_masked_crc_rotates_right_by_15_and_adds_tfrecords_constant() {
        // ((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xa282ead8, modulo 2³², by hand.
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
        // Record headers of an event file PyTorch's SummaryWriter wrote: the file-version
        // event (72 bytes) and a scalar (24 bytes).
        assert_eq!(masked_crc32c(&72u64.to_le_bytes()), 0x9D48_92FE);
        assert_eq!(masked_crc32c(&24u64.to_le_bytes()), 0x224B_7FA3);
    }

    #[test]
    fn records_are_read_back_in_order_with_their_end_offset() {
        let mut file = frame(b"first");
        file.extend(frame(b""));
        file.extend(frame(b"third record"));
        let (got, scan) = records(&file, 0).unwrap();
        assert_eq!(got, [b"first".to_vec(), vec![], b"third record".to_vec()]);
        assert_eq!(scan, Scan::at(file.len() as u64, false));
    }

    #[test]
    fn a_truncated_last_record_stops_the_scan_and_the_next_one_resumes_there() {
        let one = frame(b"one");
        let two = frame(b"two, still being written");
        let mut file = one.clone();
        // Every cut inside the second record: its header, its data, its checksum.
        for cut in 1..two.len() {
            let mut partial = file.clone();
            partial.extend(&two[..cut]);
            let (got, scan) = records(&partial, 0).unwrap();
            assert_eq!(got, [b"one".to_vec()], "cut at {cut}");
            assert_eq!(scan, Scan::at(one.len() as u64, true), "cut at {cut}");
        }
        file.extend(&two);
        let (got, scan) = records(&file, one.len() as u64).unwrap();
        assert_eq!(got, [b"two, still being written".to_vec()]);
        assert_eq!(scan, Scan::at(file.len() as u64, false));
    }

    #[test]
    fn a_record_with_a_wrong_checksum_is_an_error_naming_its_offset() {
        let mut file = frame(b"good");
        let at = file.len();
        file.extend(frame(b"flipped"));
        file[at + 12] ^= 1;
        let e = records(&file, 0).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("the record at byte {at} has a wrong data checksum: the file is damaged")
        );

        let mut file = frame(b"good");
        file[0] = 5;
        let e = records(&file, 0).unwrap_err().to_string();
        assert!(e.contains("byte 0 has a wrong length checksum"), "{e}");
    }

    #[test]
    fn a_damaged_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.out.tfevents.1.host");
        let mut bytes = frame(b"x");
        bytes[13] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let e = scan_file(&path, 0, |_| Ok(())).unwrap_err();
        let chain = format!("{e:#}");
        assert!(chain.contains("events.out.tfevents.1.host"), "{chain}");
        assert!(chain.contains("byte 0"), "{chain}");
    }
}
