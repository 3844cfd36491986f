//! Deterministic PNG images for the image generation endpoints: RGB, one
//! colour per prompt with a diagonal stripe, stored (uncompressed) deflate
//! blocks, so the byte size follows the dimensions (a 512×512 image is
//! about 770 KB: large enough to leave a reply frame for the blob store).

/// A `width`×`height` PNG whose colours are derived from `seed`.
pub fn png(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let (w, h) = (width.clamp(1, 4096), height.clamp(1, 4096));
    let colour = [(seed >> 16) as u8, (seed >> 8) as u8, seed as u8];
    let stripe = [!colour[0], !colour[1], !colour[2]];
    let mut raw = Vec::with_capacity((w as usize * 3 + 1) * h as usize);
    for y in 0..h {
        raw.push(0); // filter: none
        for x in 0..w {
            let px = if (x + y) % 16 < 2 { stripe } else { colour };
            raw.extend_from_slice(&px);
        }
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    chunk(&mut out, b"IEND", &[]);
    out
}

/// `WIDTHxHEIGHT`, else 32×32 (`auto`, absent or unreadable).
pub fn dimensions(size: Option<&str>) -> (u32, u32) {
    size.and_then(|s| s.split_once('x'))
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .unwrap_or((32, 32))
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_signature_are_pngs() {
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
        let p = png(2, 2, 7);
        assert!(p.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(p.ends_with(&[0xae, 0x42, 0x60, 0x82]));
        assert_eq!(&p[16..24], &[0, 0, 0, 2, 0, 0, 0, 2]);
        assert_eq!(png(2, 2, 7), p, "deterministic");
        assert_ne!(png(2, 2, 8), p);
        assert!(png(512, 512, 1).len() > 512 * 512 * 3);
        assert_eq!(dimensions(Some("64x48")), (64, 48));
        assert_eq!(dimensions(Some("auto")), (32, 32));
    }
}
