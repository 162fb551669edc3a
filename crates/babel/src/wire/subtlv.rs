//! Sub-TLVs (RFC 8966 §4.4): the view, the iterator and the code points
//! this implementation knows (padding, RTT timestamps, RFC 9079 source
//! prefix).

use super::{enum_with_unknown, Error};

enum_with_unknown! {
    /// Sub-TLV type. Types 128 and above are mandatory: a TLV carrying one
    /// this implementation does not know is ignored entirely.
    pub enum SubTlvType(u8) {
        /// A single byte of padding, without length.
        Pad1 = 0,
        /// `n` bytes of padding.
        PadN = 1,
        /// Diversity (babeld channel list); understood and skipped.
        Diversity = 2,
        /// RTT extension timestamps: 4 bytes in a Hello, 8 in an IHU.
        Timestamp = 3,
        /// RFC 9079 source prefix (mandatory).
        SourcePrefix = 128,
    }
}

impl SubTlvType {
    /// Whether the type is in the mandatory range (≥ 128).
    pub fn is_mandatory(self) -> bool {
        u8::from(self) >= 128
    }
}

/// A zero-copy view of one sub-TLV: type, and (except for Pad1) a length
/// and a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubTlvBuf<'a> {
    ty: SubTlvType,
    body: &'a [u8],
    total: usize,
}

impl<'a> SubTlvBuf<'a> {
    /// Checks the sub-TLV at the start of `bytes` and returns a view of it.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, Error> {
        let Some(&ty) = bytes.first() else {
            return Err(Error::Truncated("sub-tlv type"));
        };
        let ty = SubTlvType::from(ty);
        if ty == SubTlvType::Pad1 {
            return Ok(Self {
                ty,
                body: &[],
                total: 1,
            });
        }
        let Some(&len) = bytes.get(1) else {
            return Err(Error::Truncated("sub-tlv length"));
        };
        let end = 2 + usize::from(len);
        let Some(body) = bytes.get(2..end) else {
            return Err(Error::Truncated("sub-tlv body"));
        };
        Ok(Self {
            ty,
            body,
            total: end,
        })
    }

    /// The sub-TLV type.
    pub fn sub_tlv_type(&self) -> SubTlvType {
        self.ty
    }

    /// The body (empty for Pad1).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Bytes taken on the wire, header included.
    pub fn total_len(&self) -> usize {
        self.total
    }
}

/// Iterator over the sub-TLVs that follow a TLV's fixed fields; stops after
/// the first error.
#[derive(Debug, Clone)]
pub struct SubTlvs<'a> {
    rest: &'a [u8],
}

impl<'a> SubTlvs<'a> {
    /// Iterates over the sub-TLVs in `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }
}

impl<'a> Iterator for SubTlvs<'a> {
    type Item = Result<SubTlvBuf<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match SubTlvBuf::new_checked(self.rest) {
            Ok(sub) => {
                self.rest = &self.rest[sub.total..];
                Some(Ok(sub))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// A sub-TLV to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubTlv<'a> {
    /// One byte of padding.
    Pad1,
    /// A PadN of this many zero bytes.
    PadN(u8),
    /// A raw sub-TLV of any type with this body.
    Raw(SubTlvType, &'a [u8]),
}

impl SubTlv<'_> {
    /// Bytes this sub-TLV takes on the wire.
    pub fn buffer_len(&self) -> usize {
        match self {
            Self::Pad1 => 1,
            Self::PadN(n) => 2 + usize::from(*n),
            Self::Raw(_, body) => 2 + body.len(),
        }
    }

    /// Writes the sub-TLV at the start of `buf`; returns its length.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`Self::buffer_len`] or a raw body is
    /// longer than 255 bytes.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        match self {
            Self::Pad1 => buf[0] = 0,
            Self::PadN(n) => {
                buf[0] = 1;
                buf[1] = *n;
                buf[2..2 + usize::from(*n)].fill(0);
            }
            Self::Raw(ty, body) => {
                buf[0] = (*ty).into();
                buf[1] = u8::try_from(body.len()).expect("sub-tlv body over 255 bytes");
                buf[2..2 + body.len()].copy_from_slice(body);
            }
        }
        self.buffer_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_with_pad1() {
        let bytes = [0, 1, 2, 0, 0, 3, 4, 1, 2, 3, 4, 128, 0];
        let subs: Vec<_> = SubTlvs::new(&bytes).collect::<Result<_, _>>().unwrap();
        let types: Vec<_> = subs.iter().map(|s| s.sub_tlv_type()).collect();
        assert_eq!(
            types,
            [
                SubTlvType::Pad1,
                SubTlvType::PadN,
                SubTlvType::Timestamp,
                SubTlvType::SourcePrefix
            ]
        );
        assert_eq!(subs[2].body(), &[1, 2, 3, 4]);
        assert!(subs[3].sub_tlv_type().is_mandatory());
    }

    #[test]
    fn stops_after_truncation() {
        let bytes = [3, 4, 1, 2];
        let mut it = SubTlvs::new(&bytes);
        assert_eq!(it.next(), Some(Err(Error::Truncated("sub-tlv body"))));
        assert_eq!(it.next(), None);
        assert_eq!(
            SubTlvs::new(&[5]).next(),
            Some(Err(Error::Truncated("sub-tlv length")))
        );
    }

    #[test]
    fn emit_round_trips() {
        let mut buf = [0xaa; 16];
        let n = SubTlv::PadN(2).emit(&mut buf);
        let n2 = SubTlv::Raw(SubTlvType::Timestamp, &[9, 9, 9, 9]).emit(&mut buf[n..]);
        assert_eq!(&buf[..n + n2], &[1, 2, 0, 0, 3, 4, 9, 9, 9, 9]);
    }
}
