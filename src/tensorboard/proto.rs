//! The protobuf messages inside an event file's records, decoded by hand for the few fields
//! an import needs: `Event` (wall time, step, summary), `Summary.Value` (tag, simple value,
//! tensor, plugin name) and `TensorProto` (dtype, shape, contents). Every other field is
//! skipped by its wire type, so newer writers' additions pass unread. Nothing here knows
//! about keel's series: a value is a scalar or a named kind of something else.

use anyhow::{Context, bail};

/// A field's payload, by wire type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Reads a base-128 varint off the front of `buf`.
pub fn varint(buf: &mut &[u8]) -> anyhow::Result<u64> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        // The tenth byte holds bit 63 only.
        if i == 9 && byte > 1 {
            bail!("a varint overflows 64 bits");
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Ok(value);
        }
    }
    bail!("a varint is cut short")
}

/// The fields of one message, in the order written.
pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields(buf)
}

pub struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        if self.0.len() < n {
            bail!("a field is cut short");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn field(&mut self) -> anyhow::Result<(u64, Wire<'a>)> {
        let key = varint(&mut self.0)?;
        let wire = match key & 7 {
            0 => Wire::Varint(varint(&mut self.0)?),
            1 => Wire::Fixed64(u64::from_le_bytes(self.take(8)?.try_into()?)),
            2 => {
                let len = usize::try_from(varint(&mut self.0)?)?;
                Wire::Bytes(self.take(len)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(self.take(4)?.try_into()?)),
            other => bail!("wire type {other} (field {}) is not supported", key >> 3),
        };
        Ok((key >> 3, wire))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = anyhow::Result<(u64, Wire<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            // One error, then the end: what follows a bad field cannot be framed.
            self.0 = &[];
        }
        Some(field)
    }
}

/// One `Event`, with the values of its summary (none for the file-version event, a graph, a
/// session log).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub values: Vec<Value>,
}

/// One `Summary.Value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub tag: String,
    pub data: Data,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// A `simple_value`, or a rank-0 float or double tensor.
    Scalar(f64),
    /// Anything else, named after TensorBoard's plugin for it (`histograms`, `images`, …).
    Other(String),
}

impl Event {
    pub fn decode(buf: &[u8]) -> anyhow::Result<Event> {
        let mut event = Event {
            wall_time: 0.0,
            step: 0,
            values: Vec::new(),
        };
        for field in fields(buf) {
            match field? {
                (1, Wire::Fixed64(bits)) => event.wall_time = f64::from_bits(bits),
                // int64 travels as its two's complement in a u64.
                (2, Wire::Varint(v)) => event.step = v as i64,
                (5, Wire::Bytes(summary)) => {
                    for field in fields(summary) {
                        if let (1, Wire::Bytes(value)) = field? {
                            let value = Value::decode(value).context("a summary value")?;
                            event.values.push(value);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(event)
    }
}

impl Value {
    fn decode(buf: &[u8]) -> anyhow::Result<Value> {
        let (mut tag, mut data, mut tensor, mut plugin) = (String::new(), None, None, None);
        for field in fields(buf) {
            match field? {
                (1, Wire::Bytes(b)) => tag = String::from_utf8_lossy(b).into_owned(),
                (2, Wire::Fixed32(bits)) => data = Some(Data::Scalar(f32::from_bits(bits).into())),
                (3 | 5, Wire::Bytes(_)) => data = Some(Data::Other("histograms".into())),
                (4, Wire::Bytes(_)) => data = Some(Data::Other("images".into())),
                (6, Wire::Bytes(_)) => data = Some(Data::Other("audio".into())),
                (8, Wire::Bytes(b)) => tensor = Some(b),
                (9, Wire::Bytes(b)) => plugin = plugin_name(b)?,
                _ => {}
            }
        }
        let other = || Data::Other(plugin.clone().unwrap_or_else(|| "tensor".into()));
        if let Some(t) = tensor {
            data = Some(
                tensor_scalar(t)
                    .context("a tensor")?
                    .map_or_else(other, Data::Scalar),
            );
        }
        let data = data.unwrap_or_else(other);
        Ok(Value { tag, data })
    }
}

/// `SummaryMetadata.plugin_data.plugin_name`, when set.
fn plugin_name(metadata: &[u8]) -> anyhow::Result<Option<String>> {
    for field in fields(metadata) {
        if let (1, Wire::Bytes(plugin_data)) = field? {
            for field in fields(plugin_data) {
                if let (1, Wire::Bytes(name)) = field? {
                    return Ok(Some(String::from_utf8_lossy(name).into_owned()));
                }
            }
        }
    }
    Ok(None)
}

const DT_FLOAT: u64 = 1;
const DT_DOUBLE: u64 = 2;

/// The value of a rank-0 `DT_FLOAT` or `DT_DOUBLE` tensor; `None` for any other tensor.
fn tensor_scalar(buf: &[u8]) -> anyhow::Result<Option<f64>> {
    let (mut dtype, mut rank, mut content) = (0, 0, None);
    let mut values = Vec::new();
    for field in fields(buf) {
        match field? {
            (1, Wire::Varint(v)) => dtype = v,
            (2, Wire::Bytes(shape)) => rank = shape_rank(shape)?,
            (4, Wire::Bytes(raw)) => content = Some(raw),
            // float_val and double_val, packed or one per field.
            (5, Wire::Fixed32(bits)) => values.push(f64::from(f32::from_bits(bits))),
            (6, Wire::Fixed64(bits)) => values.push(f64::from_bits(bits)),
            (5, Wire::Bytes(packed)) => {
                values.extend(unpack::<4>(packed)?.map(|b| f64::from(f32::from_le_bytes(b))))
            }
            (6, Wire::Bytes(packed)) => {
                values.extend(unpack::<8>(packed)?.map(f64::from_le_bytes));
            }
            _ => {}
        }
    }
    if rank != 0 {
        return Ok(None);
    }
    let value = match (dtype, content) {
        (DT_FLOAT, Some(raw)) => raw
            .try_into()
            .ok()
            .map(|b| f64::from(f32::from_le_bytes(b))),
        (DT_DOUBLE, Some(raw)) => raw.try_into().ok().map(f64::from_le_bytes),
        (DT_FLOAT | DT_DOUBLE, None) => values.first().copied(),
        _ => None,
    };
    Ok(value)
}

/// The number of dimensions of a `TensorShapeProto` (`usize::MAX` for an unknown rank).
fn shape_rank(buf: &[u8]) -> anyhow::Result<usize> {
    let mut rank = 0;
    for field in fields(buf) {
        match field? {
            (2, Wire::Bytes(_)) => rank += 1,
            (3, Wire::Varint(1)) => return Ok(usize::MAX),
            _ => {}
        }
    }
    Ok(rank)
}

fn unpack<const N: usize>(packed: &[u8]) -> anyhow::Result<impl Iterator<Item = [u8; N]> + '_> {
    if !packed.len().is_multiple_of(N) {
        bail!(
            "a packed field of {} bytes is not a whole number of values",
            packed.len()
        );
    }
    Ok(packed
        .chunks_exact(N)
        .map(|c| c.try_into().expect("N bytes")))
}

/// Protobuf encoding of hand-built messages, for tests.
#[cfg(test)]
pub mod encode {
    pub fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn key(field: u64, wire: u64) -> Vec<u8> {
        varint(field << 3 | wire)
    }

    pub fn uint(field: u64, v: u64) -> Vec<u8> {
        [key(field, 0), varint(v)].concat()
    }

    pub fn fixed64(field: u64, bits: u64) -> Vec<u8> {
        [key(field, 1), bits.to_le_bytes().to_vec()].concat()
    }

    pub fn fixed32(field: u64, bits: u32) -> Vec<u8> {
        [key(field, 5), bits.to_le_bytes().to_vec()].concat()
    }

    pub fn bytes(field: u64, payload: &[u8]) -> Vec<u8> {
        [
            key(field, 2),
            varint(payload.len() as u64),
            payload.to_vec(),
        ]
        .concat()
    }

    /// An `Event` at `step` whose summary holds `values` (encoded `Summary.Value`s).
    pub fn event(wall_time: f64, step: u64, values: &[Vec<u8>]) -> Vec<u8> {
        let summary: Vec<u8> = values.iter().flat_map(|v| bytes(1, v)).collect();
        [
            fixed64(1, wall_time.to_bits()),
            uint(2, step),
            bytes(5, &summary),
        ]
        .concat()
    }

    /// A `Summary.Value` with a `simple_value`.
    pub fn simple(tag: &str, v: f32) -> Vec<u8> {
        [bytes(1, tag.as_bytes()), fixed32(2, v.to_bits())].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::encode::*;
    use super::*;

    fn read(bytes: &[u8]) -> anyhow::Result<u64> {
        let mut buf = bytes;
        let v = super::varint(&mut buf)?;
        assert!(buf.is_empty(), "{bytes:?} left {buf:?}");
        Ok(v)
    }

    #[test]
    fn varints_decode_from_one_to_ten_bytes() {
        assert_eq!(read(&[0]).unwrap(), 0);
        assert_eq!(read(&[1]).unwrap(), 1);
        assert_eq!(read(&[0x7f]).unwrap(), 127);
        // The protobuf documentation's example: 150 is 96 01.
        assert_eq!(read(&[0x96, 0x01]).unwrap(), 150);
        assert_eq!(read(&[0xac, 0x02]).unwrap(), 300);
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read(&max).unwrap(), u64::MAX);
        // An int64 step of -1 is ten bytes of two's complement.
        assert_eq!(read(&max).unwrap() as i64, -1);
        for v in [0, 1, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX] {
            assert_eq!(read(&super::encode::varint(v)).unwrap(), v);
        }
    }

    #[test]
    fn cut_short_or_overlong_varints_are_errors() {
        assert!(read(&[]).is_err());
        assert!(read(&[0x80]).is_err());
        assert!(read(&[0x96]).is_err());
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(read(&over).is_err());
    }

    #[test]
    fn a_hand_built_event_decodes_to_its_values_past_unknown_fields_of_every_wire_type() {
        let scalars_plugin = bytes(9, &bytes(1, &bytes(1, b"scalars")));
        let float_tensor = bytes(
            8,
            &[uint(1, DT_FLOAT), bytes(5, &0.5f32.to_le_bytes())].concat(),
        );
        let double_tensor = bytes(
            8,
            &[uint(1, DT_DOUBLE), fixed64(6, 0.1f64.to_bits())].concat(),
        );
        let raw_tensor = bytes(
            8,
            &[uint(1, DT_DOUBLE), bytes(4, &2.5f64.to_le_bytes())].concat(),
        );
        let vector = bytes(
            8,
            &[uint(1, DT_FLOAT), bytes(2, &bytes(2, &uint(1, 3)))].concat(),
        );
        let unknown = [
            uint(15, 7),
            fixed64(16, 1),
            bytes(17, b"??"),
            fixed32(18, 9),
        ]
        .concat();
        let values = [
            [simple("loss", 3.25), unknown.clone()].concat(),
            [bytes(1, b"acc"), scalars_plugin.clone(), float_tensor].concat(),
            [bytes(1, b"tput"), double_tensor, scalars_plugin].concat(),
            [bytes(1, b"raw"), raw_tensor].concat(),
            [bytes(1, b"h"), bytes(5, &fixed64(1, 0))].concat(),
            [
                bytes(1, b"v"),
                bytes(9, &bytes(1, &bytes(1, b"pr_curves"))),
                vector,
            ]
            .concat(),
        ];
        let mut buf = event(1_764_300_000.25, 1200, &values);
        buf.extend(&unknown);
        buf.extend(bytes(3, b"brain.Event:2"));

        let e = Event::decode(&buf).unwrap();
        assert_eq!(e.wall_time, 1_764_300_000.25);
        assert_eq!(e.step, 1200);
        let got: Vec<(&str, &Data)> = e.values.iter().map(|v| (v.tag.as_str(), &v.data)).collect();
        assert_eq!(
            got,
            [
                ("loss", &Data::Scalar(3.25)),
                ("acc", &Data::Scalar(0.5)),
                ("tput", &Data::Scalar(0.1)),
                ("raw", &Data::Scalar(2.5)),
                ("h", &Data::Other("histograms".into())),
                ("v", &Data::Other("pr_curves".into())),
            ]
        );
    }

    #[test]
    fn an_event_without_a_summary_has_no_values_and_step_zero() {
        let e = Event::decode(&[fixed64(1, 2.0f64.to_bits()), bytes(3, b"brain.Event:2")].concat());
        assert_eq!(
            e.unwrap(),
            Event {
                wall_time: 2.0,
                step: 0,
                values: vec![]
            }
        );
    }

    #[test]
    fn a_field_cut_short_or_of_a_group_wire_type_is_an_error() {
        let e = event(1.0, 3, &[simple("loss", 1.0)]);
        assert!(Event::decode(&e[..e.len() - 2]).is_err());
        assert!(Event::decode(&[uint(2, 1), vec![0x1b]].concat()).is_err());
    }
}
