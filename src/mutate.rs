//! A tiny deterministic mutator for the parsers' robustness tests: the bounded fuzz run that
//! every `cargo test` makes (the coverage-guided runs are in fuzz/, with cargo-fuzz).

pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Mutator {
        Mutator(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A few random edits of `seed`: flips, overwrites, insertions, deletions, truncation,
    /// duplication of a slice, or fully random bytes.
    pub fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let len = v.len();
            match self.below(7) {
                0 if len > 0 => {
                    let i = self.below(len);
                    v[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    v[i] = b"{}[]\",:0123456789.abcdefnoux \\\x00\xff"[self.below(31)];
                }
                2 => {
                    let i = self.below(len + 1);
                    let b = self.next() as u8;
                    v.insert(i, b);
                }
                3 if len > 0 => {
                    let i = self.below(len);
                    v.remove(i);
                }
                4 => v.truncate(self.below(len + 1)),
                5 if len > 1 => {
                    let a = self.below(len);
                    let b = a + self.below(len - a);
                    let chunk = v[a..b].to_vec();
                    let at = self.below(len);
                    v.splice(at..at, chunk);
                }
                _ => {
                    let n = self.below(64);
                    v = (0..n).map(|_| self.next() as u8).collect();
                }
            }
        }
        v
    }
}
