//! A SHA-2 hasher whose state can be saved and restored, so an upload that continues on
//! another replica (or after a restart) keeps hashing where it stopped without reading back the
//! bytes it already stored — which an S3 multipart upload cannot do before it is completed.
//!
//! The compression functions are `sha2`'s own (`compress256`/`compress512`, with its SIMD and
//! SHA-NI paths); this file only keeps the chaining value, the unprocessed tail of the last block
//! and the length, and applies the standard FIPS 180-4 padding at the end. Unit tests check it
//! against `sha2::Sha256`/`Sha512` on every length around the block boundaries.

use sha2::digest::generic_array::GenericArray;

use super::digest::{Algorithm, Digest};

const H256: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
const H512: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Chain {
    Sha256([u32; 8]),
    Sha512([u64; 8]),
}

/// A streaming SHA-256/512 whose state round-trips through [`ResumableDigester::save`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumableDigester {
    chain: Chain,
    /// Bytes not yet compressed: always shorter than one block.
    pending: Vec<u8>,
    /// Total bytes fed.
    len: u64,
}

/// The saved form: plain data, serializable as JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedDigester {
    pub algorithm: String,
    /// The chaining value, big-endian hex.
    pub chain: String,
    /// Unprocessed bytes, hex.
    pub pending: String,
    pub len: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid saved digest state: {0}")]
pub struct SavedStateError(&'static str);

impl ResumableDigester {
    pub fn new(algorithm: Algorithm) -> Self {
        let chain = match algorithm {
            Algorithm::Sha256 => Chain::Sha256(H256),
            Algorithm::Sha512 => Chain::Sha512(H512),
        };
        ResumableDigester {
            chain,
            pending: Vec::new(),
            len: 0,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.chain {
            Chain::Sha256(_) => Algorithm::Sha256,
            Chain::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn block_len(&self) -> usize {
        match self.chain {
            Chain::Sha256(_) => 64,
            Chain::Sha512(_) => 128,
        }
    }

    /// Compresses whole blocks. They are copied into a small aligned batch first: one call of
    /// `sha2`'s compression function per batch is faster than one per block (its SHA-NI path
    /// loads and stores the state once per call).
    fn compress(&mut self, blocks: &[u8]) {
        use sha2::digest::consts::{U64, U128};
        const BATCH: usize = 16;
        match &mut self.chain {
            Chain::Sha256(h) => {
                let mut batch = [GenericArray::<u8, U64>::default(); BATCH];
                for group in blocks.chunks(64 * BATCH) {
                    let n = group.len() / 64;
                    for (dst, src) in batch.iter_mut().zip(group.chunks_exact(64)) {
                        dst.copy_from_slice(src);
                    }
                    sha2::compress256(h, &batch[..n]);
                }
            }
            Chain::Sha512(h) => {
                let mut batch = [GenericArray::<u8, U128>::default(); BATCH];
                for group in blocks.chunks(128 * BATCH) {
                    let n = group.len() / 128;
                    for (dst, src) in batch.iter_mut().zip(group.chunks_exact(128)) {
                        dst.copy_from_slice(src);
                    }
                    sha2::compress512(h, &batch[..n]);
                }
            }
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        let block = self.block_len();
        if !self.pending.is_empty() {
            let take = (block - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < block {
                return;
            }
            let full = std::mem::take(&mut self.pending);
            self.compress(&full);
        }
        let whole = data.len() - data.len() % block;
        self.compress(&data[..whole]);
        self.pending.extend_from_slice(&data[whole..]);
    }

    pub fn finish(mut self) -> Digest {
        let block = self.block_len();
        let length_bytes = if block == 64 { 8 } else { 16 };
        let bits = u128::from(self.len) * 8;
        let mut tail = std::mem::take(&mut self.pending);
        tail.push(0x80);
        while tail.len() % block != block - length_bytes {
            tail.push(0);
        }
        if length_bytes == 8 {
            tail.extend_from_slice(&(bits as u64).to_be_bytes());
        } else {
            tail.extend_from_slice(&bits.to_be_bytes());
        }
        self.compress(&tail);
        let (algorithm, out) = match self.chain {
            Chain::Sha256(h) => (
                Algorithm::Sha256,
                h.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<u8>>(),
            ),
            Chain::Sha512(h) => (
                Algorithm::Sha512,
                h.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<u8>>(),
            ),
        };
        Digest::from_parts(algorithm, &hex::encode(out))
            .unwrap_or_else(|_| unreachable!("a SHA-2 output is always a valid digest"))
    }

    pub fn save(&self) -> SavedDigester {
        let chain = match &self.chain {
            Chain::Sha256(h) => {
                hex::encode(h.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<_>>())
            }
            Chain::Sha512(h) => {
                hex::encode(h.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<_>>())
            }
        };
        SavedDigester {
            algorithm: self.algorithm().as_str().to_owned(),
            chain,
            pending: hex::encode(&self.pending),
            len: self.len,
        }
    }

    pub fn restore(s: &SavedDigester) -> Result<Self, SavedStateError> {
        let algorithm =
            Algorithm::parse(&s.algorithm).map_err(|_| SavedStateError("unknown algorithm"))?;
        let chain = hex::decode(&s.chain).map_err(|_| SavedStateError("chain is not hex"))?;
        let pending = hex::decode(&s.pending).map_err(|_| SavedStateError("pending is not hex"))?;
        let chain = match algorithm {
            Algorithm::Sha256 if chain.len() == 32 => {
                let mut h = [0u32; 8];
                for (w, b) in h.iter_mut().zip(chain.chunks_exact(4)) {
                    *w = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                }
                Chain::Sha256(h)
            }
            Algorithm::Sha512 if chain.len() == 64 => {
                let mut h = [0u64; 8];
                for (w, b) in h.iter_mut().zip(chain.chunks_exact(8)) {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    *w = u64::from_be_bytes(a);
                }
                Chain::Sha512(h)
            }
            _ => return Err(SavedStateError("chain has the wrong length")),
        };
        let d = ResumableDigester {
            chain,
            pending,
            len: s.len,
        };
        if d.pending.len() >= d.block_len()
            || (d.len % d.block_len() as u64) as usize != d.pending.len()
        {
            return Err(SavedStateError("pending bytes do not match the length"));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn matches_sha2_at_every_length_around_blocks() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            for n in (0..300).chain([1000, 4096, 65_537]) {
                let d = data(n);
                let mut r = ResumableDigester::new(alg);
                r.update(&d);
                assert_eq!(r.finish(), alg.digest_of(&d), "{alg} n={n}");
            }
        }
    }

    #[test]
    fn saved_state_resumes_after_any_split() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let d = data(777);
            for cut in [0, 1, 63, 64, 65, 127, 128, 129, 500, 777] {
                let mut a = ResumableDigester::new(alg);
                a.update(&d[..cut]);
                let json = serde_json::to_string(&a.save()).unwrap();
                let saved: SavedDigester = serde_json::from_str(&json).unwrap();
                let mut b = ResumableDigester::restore(&saved).unwrap();
                assert_eq!(a, b);
                // Feed the rest in odd pieces.
                for piece in d[cut..].chunks(37) {
                    b.update(piece);
                }
                assert_eq!(b.finish(), alg.digest_of(&d), "{alg} cut={cut}");
            }
        }
    }

    #[test]
    fn rejects_inconsistent_state() {
        let mut a = ResumableDigester::new(Algorithm::Sha256);
        a.update(b"abc");
        let mut s = a.save();
        s.len = 4;
        assert!(ResumableDigester::restore(&s).is_err());
        let mut s = a.save();
        s.chain.pop();
        assert!(ResumableDigester::restore(&s).is_err());
        let mut s = a.save();
        s.algorithm = "md5".into();
        assert!(ResumableDigester::restore(&s).is_err());
    }
}
