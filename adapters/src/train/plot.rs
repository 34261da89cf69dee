//! A PNG of the run: training loss per step and validation loss per epoch (top panel), loss scale
//! per step on a log axis with skipped steps marked (bottom panel).
//!
//! The PNG encoder is written here (RGB, filter 0, stored deflate blocks, CRC-32 and Adler-32):
//! the workspace has no image crate, and `plotters`' bitmap backend would pull `image` and its
//! codecs into every build on shared 2-core machines for one picture without text. Files are
//! uncompressed (about 1 MB for 800x500), which is fine for a per-run artifact.

use super::trainer::StepPoint;
use std::path::Path;

/// An RGB canvas.
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(w: usize, h: usize) -> Self {
        Canvas { w, h, px: vec![255; w * h * 3] }
    }

    /// Sets one pixel (ignored outside).
    pub fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A straight line (Bresenham).
    pub fn line(&mut self, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.set(x0, y0, c);
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }

    /// The canvas as PNG bytes.
    pub fn to_png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity((self.w * 3 + 1) * self.h);
        for row in self.px.chunks(self.w * 3) {
            raw.push(0); // filter type: none
            raw.extend_from_slice(row);
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, filter 0, no interlace
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", &zlib_stored(&raw));
        chunk(&mut png, b"IEND", &[]);
        png
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (IEEE, as PNG chunks use).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// A zlib stream of stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = data.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = b.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(b);
    }
    if blocks.is_empty() {
        out.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// Draws `points` (x, y) into the box `(left, top, width, height)` scaled to the given ranges.
fn polyline(
    c: &mut Canvas,
    pts: &[(f64, f64)],
    bx: (i64, i64, i64, i64),
    xr: (f64, f64),
    yr: (f64, f64),
    col: [u8; 3],
) {
    let map = |(x, y): (f64, f64)| {
        let fx = if xr.1 > xr.0 { (x - xr.0) / (xr.1 - xr.0) } else { 0.5 };
        let fy = if yr.1 > yr.0 { (y - yr.0) / (yr.1 - yr.0) } else { 0.5 };
        (bx.0 + (fx * (bx.2 - 1) as f64).round() as i64, bx.1 + bx.3 - 1 - (fy * (bx.3 - 1) as f64).round() as i64)
    };
    let finite: Vec<(i64, i64)> = pts.iter().filter(|p| p.1.is_finite()).map(|&p| map(p)).collect();
    for w in finite.windows(2) {
        c.line(w[0], w[1], col);
    }
    if let [p] = finite.as_slice() {
        c.set(p.0, p.1, col);
    }
}

fn frame(c: &mut Canvas, (l, t, w, h): (i64, i64, i64, i64)) {
    let k = [0, 0, 0];
    c.line((l - 1, t - 1), (l + w, t - 1), k);
    c.line((l - 1, t + h), (l + w, t + h), k);
    c.line((l - 1, t - 1), (l - 1, t + h), k);
    c.line((l + w, t - 1), (l + w, t + h), k);
}

fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.filter(|x| x.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)))
}

/// Renders the curves: blue training loss, orange validation loss (top); green log2 loss scale
/// with red ticks under skipped steps (bottom).
pub fn render(curve: &[StepPoint], val: &[(u64, f64)]) -> Canvas {
    let (w, h) = (800usize, 500usize);
    let mut c = Canvas::new(w, h);
    let top = (40, 20, w as i64 - 60, 260);
    let bottom = (40, 310, w as i64 - 60, 170);
    frame(&mut c, top);
    frame(&mut c, bottom);
    let last_val = val.last().map_or(0.0, |v| v.0 as f64);
    let xmax = curve.last().map_or(1.0, |p| p.step as f64).max(last_val).max(1.0);
    let losses: Vec<(f64, f64)> = curve.iter().map(|p| (p.step as f64, p.loss)).collect();
    let vals: Vec<(f64, f64)> = val.iter().map(|&(s, v)| (s as f64, v)).collect();
    let yr = range(losses.iter().chain(&vals).map(|p| p.1));
    polyline(&mut c, &losses, top, (0.0, xmax), yr, [31, 119, 180]);
    polyline(&mut c, &vals, top, (0.0, xmax), yr, [255, 127, 14]);
    let scales: Vec<(f64, f64)> = curve.iter().map(|p| (p.step as f64, p.scale.max(1e-30).log2())).collect();
    let sr = range(scales.iter().map(|p| p.1));
    let sr = (sr.0 - 0.5, sr.1 + 0.5);
    polyline(&mut c, &scales, bottom, (0.0, xmax), sr, [44, 160, 44]);
    for p in curve.iter().filter(|p| p.skipped) {
        let x = bottom.0 + ((p.step as f64 / xmax) * (bottom.2 - 1) as f64).round() as i64;
        c.line((x, bottom.1 + bottom.3 - 6), (x, bottom.1 + bottom.3 - 1), [214, 39, 40]);
    }
    c
}

/// Writes the plot to `path`.
pub fn write(path: &Path, curve: &[StepPoint], val: &[(u64, f64)]) -> std::io::Result<()> {
    std::fs::write(path, render(curve, val).to_png())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_reference_and_png_is_well_formed() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        let pts: Vec<StepPoint> = (0..50)
            .map(|i| StepPoint { step: i, loss: 1.0 / (1.0 + i as f64), scale: 65536.0, skipped: i == 3 })
            .collect();
        let png = render(&pts, &[(25, 0.2), (50, 0.1)]).to_png();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 800);
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        // Some pixels are not white: the curves were drawn.
        let c = render(&pts, &[]);
        assert!(c.px.iter().any(|&b| b != 255 && b != 0));
    }
}
