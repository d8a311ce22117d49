//! Byte layouts of the BLOB columns: packed little-endian f64s, bit-exact for NaN and ±Inf.
//!
//! A stored step (`steps.data`) is a sequence of entries `series_id: u32, width: u32,
//! values: [f64; width]`, one per series present in that step.

pub fn put_f64s(out: &mut Vec<u8>, values: &[f64]) {
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

pub fn get_f64s(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn f64_blob(v: f64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

pub fn blob_f64(bytes: &[u8]) -> Option<f64> {
    Some(f64::from_le_bytes(bytes.try_into().ok()?))
}

/// Appends one series entry to a step blob.
pub fn put_entry(out: &mut Vec<u8>, series_id: u32, values: &[f64]) {
    out.extend_from_slice(&series_id.to_le_bytes());
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    put_f64s(out, values);
}

/// The entries of a step blob, as (series id, raw little-endian values). Stops at the first
/// malformed entry rather than panicking on a damaged row.
pub fn entries(mut bytes: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    std::iter::from_fn(move || {
        let id = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
        let width = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
        let values = bytes.get(8..8 + width * 8)?;
        bytes = &bytes[8 + width * 8..];
        Some((id, values))
    })
}

/// The values of one series in a step blob, if that step has it.
pub fn find_entry(bytes: &[u8], series_id: u32) -> Option<Vec<f64>> {
    entries(bytes)
        .find(|(id, _)| *id == series_id)
        .map(|(_, v)| get_f64s(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_blobs_hold_several_series_and_find_each() {
        let mut blob = Vec::new();
        put_entry(&mut blob, 3, &[1.0]);
        put_entry(&mut blob, 7, &[f64::NAN, f64::INFINITY, -2.5]);
        let seven = find_entry(&blob, 7).unwrap();
        assert!(seven[0].is_nan());
        assert_eq!(&seven[1..], &[f64::INFINITY, -2.5]);
        assert_eq!(find_entry(&blob, 3).unwrap(), vec![1.0]);
        assert!(find_entry(&blob, 4).is_none());
        assert!(find_entry(&blob[..10], 7).is_none());
    }
}
