//! Primitive field encodings: how each field type is laid out on the wire.
//!
//! | type      | layout                                              |
//! |-----------|-----------------------------------------------------|
//! | `u8` … `u64` | big-endian, fixed width                          |
//! | `bool`    | one byte, `0` or `1`; anything else is malformed    |
//! | `str`     | `u16` byte length, then that many bytes of UTF-8    |
//! | `bytes`   | `u32` byte length, then the bytes                   |
//! | `list<T>` | `u16` element count, then the elements              |
//! | `opt<T>`  | one byte `0` (absent) or `1` followed by a `T`      |
//!
//! Decoding never allocates more than the frame already holds: a length or count is checked
//! against the bytes that remain before anything is reserved.

use bytes::{BufMut, Bytes, BytesMut};

use crate::Error;

/// A cursor over one frame body. Bodies are handed out as [`Bytes`] slices of the frame, so a
/// message body is never copied on decode.
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, Error> {
        if self.remaining() < n {
            return Err(Error::Truncated { field });
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Error> {
        if self.remaining() < N {
            return Err(Error::Truncated { field });
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }
}

/// A type with a wire encoding. `field` names the field in errors.
pub trait Wire: Sized {
    fn put(&self, buf: &mut BytesMut);
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, Error>;
    /// Encoded size in bytes, used to reserve once per frame.
    fn size(&self) -> usize;
}

macro_rules! wire_int {
    ($($t:ty => $put:ident),*) => {$(
        impl Wire for $t {
            fn put(&self, buf: &mut BytesMut) {
                buf.$put(*self);
            }
            fn get(r: &mut Reader, field: &'static str) -> Result<Self, Error> {
                Ok(<$t>::from_be_bytes(r.array(field)?))
            }
            fn size(&self) -> usize {
                std::mem::size_of::<$t>()
            }
        }
    )*};
}
wire_int!(u8 => put_u8, u16 => put_u16, u32 => put_u32, u64 => put_u64);

impl Wire for bool {
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u8(u8::from(*self));
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, Error> {
        match u8::get(r, field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(Error::InvalidValue {
                field,
                value: value.into(),
            }),
        }
    }
    fn size(&self) -> usize {
        1
    }
}

impl Wire for String {
    fn put(&self, buf: &mut BytesMut) {
        // Strings longer than u16::MAX cannot be framed; constructors of frames keep them short
        // and the encoder truncates at a character boundary rather than emit a lying length.
        let s = truncate_utf8(self, u16::MAX as usize);
        buf.put_u16(s.len() as u16);
        buf.put_slice(s.as_bytes());
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, Error> {
        let len = u16::get(r, field)? as usize;
        let raw = r.take(len, field)?;
        String::from_utf8(raw.to_vec()).map_err(|_| Error::InvalidUtf8 { field })
    }
    fn size(&self) -> usize {
        // Must agree with `put` byte for byte: `encode` writes this into the length prefix.
        2 + truncate_utf8(self, u16::MAX as usize).len()
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Wire for Bytes {
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u32(self.len() as u32);
        buf.put_slice(self);
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, Error> {
        let len = u32::get(r, field)? as usize;
        r.take(len, field)
    }
    fn size(&self) -> usize {
        4 + self.len()
    }
}

/// The most memory a list reserves up front, before any of its elements has decoded.
const PREALLOC_BYTES: usize = 16 * 1024;

impl<T: Wire> Wire for Vec<T> {
    fn put(&self, buf: &mut BytesMut) {
        let n = self.len().min(u16::MAX as usize);
        buf.put_u16(n as u16);
        for item in &self[..n] {
            item.put(buf);
        }
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, Error> {
        let count = u16::get(r, field)? as usize;
        // Every element takes at least one byte, so a count above what remains is a lie; refuse
        // it before reserving memory for it.
        if count > r.remaining() {
            return Err(Error::Truncated { field });
        }
        // A count is bounded by the bytes that remain, not by the size of `T` in memory, which
        // can be a hundred times larger; grow past this only as elements actually decode.
        let mut out = Vec::with_capacity(count.min(PREALLOC_BYTES / size_of::<T>().max(1)));
        for _ in 0..count {
            out.push(T::get(r, field)?);
        }
        Ok(out)
    }
    fn size(&self) -> usize {
        2 + self
            .iter()
            .take(u16::MAX as usize)
            .map(Wire::size)
            .sum::<usize>()
    }
}

impl<T: Wire> Wire for Option<T> {
    fn put(&self, buf: &mut BytesMut) {
        match self {
            None => buf.put_u8(0),
            Some(v) => {
                buf.put_u8(1);
                v.put(buf);
            }
        }
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, Error> {
        match u8::get(r, field)? {
            0 => Ok(None),
            1 => Ok(Some(T::get(r, field)?)),
            value => Err(Error::InvalidValue {
                field,
                value: value.into(),
            }),
        }
    }
    fn size(&self) -> usize {
        1 + self.as_ref().map_or(0, Wire::size)
    }
}

/// A field appended at the very end of a frame body that may be **left out**: encoded as its
/// value when present and as nothing when absent; a body that ends before it decodes as
/// absent. It lets a frame grow without changing one byte of what an older peer sends or
/// receives when the field is not needed (see PROTOCOL.md section 3). Only the last field of
/// a frame body may be a `Tail`; a field appended after it would make it required again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail<T>(pub Option<T>);

impl<T> Default for Tail<T> {
    fn default() -> Self {
        Tail(None)
    }
}

impl<T> Tail<T> {
    pub fn some(value: T) -> Self {
        Tail(Some(value))
    }

    pub fn as_ref(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<T: Wire> Wire for Tail<T> {
    fn put(&self, buf: &mut BytesMut) {
        if let Some(v) = &self.0 {
            v.put(buf);
        }
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, Error> {
        if r.remaining() == 0 {
            return Ok(Tail(None));
        }
        T::get(r, field).map(|v| Tail(Some(v)))
    }
    fn size(&self) -> usize {
        self.0.as_ref().map_or(0, Wire::size)
    }
}

/// Declares a `u8`-coded enum with its wire encoding; an unknown code is a typed error.
macro_rules! wire_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $code:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name { $($(#[$vmeta])* $variant = $code),* }

        impl $name {
            /// Every variant, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn from_code(code: u8) -> Option<Self> {
                match code { $($code => Some($name::$variant),)* _ => None }
            }
        }

        impl $crate::wire::Wire for $name {
            fn put(&self, buf: &mut bytes::BytesMut) {
                bytes::BufMut::put_u8(buf, *self as u8);
            }
            fn get(r: &mut $crate::wire::Reader, field: &'static str) -> Result<Self, $crate::Error> {
                let code = <u8 as $crate::wire::Wire>::get(r, field)?;
                Self::from_code(code).ok_or($crate::Error::InvalidValue { field, value: code.into() })
            }
            fn size(&self) -> usize { 1 }
        }
    };
}
pub(crate) use wire_enum;

/// Declares a struct whose wire encoding is its fields in order.
macro_rules! wire_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name { $($(#[$fmeta])* pub $field: $ty),* }

        impl $crate::wire::Wire for $name {
            #[allow(unused_variables)]
            fn put(&self, buf: &mut bytes::BytesMut) {
                $($crate::wire::Wire::put(&self.$field, buf);)*
            }
            #[allow(unused_variables)]
            fn get(r: &mut $crate::wire::Reader, field: &'static str) -> Result<Self, $crate::Error> {
                Ok(Self { $($field: $crate::wire::Wire::get(r, concat!(stringify!($name), ".", stringify!($field)))?),* })
            }
            fn size(&self) -> usize {
                0 $(+ $crate::wire::Wire::size(&self.$field))*
            }
        }
    };
}
pub(crate) use wire_struct;

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Wire>(v: &T) -> Vec<u8> {
        let mut buf = BytesMut::new();
        v.put(&mut buf);
        assert_eq!(
            buf.len(),
            v.size(),
            "size() must match put() for {:?}",
            &buf[..]
        );
        buf.to_vec()
    }

    fn get<T: Wire>(raw: &[u8]) -> Result<T, Error> {
        T::get(&mut Reader::new(Bytes::copy_from_slice(raw)), "f")
    }

    #[test]
    fn primitives_have_the_documented_layout() {
        assert_eq!(bytes_of(&1u16), [0, 1]);
        assert_eq!(bytes_of(&300u64), [0, 0, 0, 0, 0, 0, 1, 0x2c]);
        assert_eq!(bytes_of(&true), [1]);
        assert_eq!(bytes_of(&String::from("hi")), [0, 2, b'h', b'i']);
        assert_eq!(
            bytes_of(&Bytes::from_static(&[0xab, 0xcd])),
            [0, 0, 0, 2, 0xab, 0xcd]
        );
        assert_eq!(bytes_of(&vec![7u64]), [0, 1, 0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(bytes_of(&None::<u64>), [0]);
        assert_eq!(bytes_of(&Some(5u64)), [1, 0, 0, 0, 0, 0, 0, 0, 5]);
    }

    #[test]
    fn a_tail_is_nothing_when_absent_and_absent_when_the_body_ends() {
        assert_eq!(bytes_of(&Tail::<u64>(None)), [] as [u8; 0]);
        assert_eq!(bytes_of(&Tail::some(7u16)), [0, 7]);
        assert_eq!(get::<Tail<u16>>(&[]), Ok(Tail(None)));
        assert_eq!(get::<Tail<u16>>(&[0, 7]), Ok(Tail::some(7)));
        // Present but cut short is still an error.
        assert!(get::<Tail<u16>>(&[0]).is_err());
    }

    #[test]
    fn bool_and_option_tags_other_than_0_and_1_are_invalid() {
        assert_eq!(
            get::<bool>(&[2]),
            Err(Error::InvalidValue {
                field: "f",
                value: 2
            })
        );
        assert_eq!(
            get::<Option<u8>>(&[7, 0]),
            Err(Error::InvalidValue {
                field: "f",
                value: 7
            })
        );
    }

    #[test]
    fn lengths_past_the_end_are_truncated_errors() {
        assert_eq!(
            get::<String>(&[0, 3, b'a']),
            Err(Error::Truncated { field: "f" })
        );
        assert_eq!(
            get::<Bytes>(&[0xff, 0xff, 0xff, 0xff]),
            Err(Error::Truncated { field: "f" })
        );
        assert_eq!(get::<u32>(&[1, 2, 3]), Err(Error::Truncated { field: "f" }));
    }

    #[test]
    fn list_count_above_remaining_bytes_is_refused_before_allocating() {
        assert_eq!(
            get::<Vec<u64>>(&[0xff, 0xff, 0, 0]),
            Err(Error::Truncated { field: "f" })
        );
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        assert_eq!(
            get::<String>(&[0, 1, 0x8f]),
            Err(Error::InvalidUtf8 { field: "f" })
        );
    }

    /// `size()` once counted 65,535 bytes for any longer string, while `put()` truncated at a
    /// character boundary below that: the frame's length prefix then overstated its body and
    /// the peer lost frame alignment.
    #[test]
    fn oversized_string_size_matches_its_truncated_encoding() {
        let s = "é".repeat(40_000); // 80,000 bytes; byte 65,535 is mid-character
        assert!(!s.is_char_boundary(u16::MAX as usize));
        let raw = bytes_of(&s);
        assert_eq!(raw.len(), 2 + 65_534);
        let back = get::<String>(&raw).unwrap();
        assert!(s.starts_with(&back));
    }
}
