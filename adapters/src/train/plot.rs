//! A PNG of the run: training loss per step and validation loss per epoch (top panel), loss scale
//! per step on a log axis with skipped steps marked (bottom panel), each panel with a title that
//! says which colour is which, tick labels on both axes and the caption "step" under the x axis.
//!
//! The PNG encoder is written here (RGB, filter 0, stored deflate blocks, CRC-32 and Adler-32):
//! the workspace has no image crate, and `plotters`' bitmap backend would pull `image` and its
//! codecs (and, for text, a font rasterizer) into every build on shared 2-core machines for one
//! picture. The text is drawn from a 5x7 bitmap font embedded in `font.rs`. Files are
//! uncompressed (about 1 MB for 800x500), which is fine for a per-run artifact.

use super::font;
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

    /// Draws `s` with its top-left corner at `(x, y)`, each font pixel a `scale` x `scale` square.
    pub fn text(&mut self, (x, y): (i64, i64), s: &str, scale: i64, c: [u8; 3]) {
        for (px, py) in font::pixels(s, (x, y), scale) {
            self.set(px, py, c);
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

/// A plot box `(left, top, width, height)`: the pixels inside the frame.
type Rect = (i64, i64, i64, i64);

const WIDTH: usize = 800;
const HEIGHT: usize = 500;
/// The loss panel. The left margin holds right-aligned y labels of up to 9 characters (54 px).
const TOP: Rect = (64, 24, 716, 244);
/// The loss-scale panel.
const BOTTOM: Rect = (64, 318, 716, 150);
const INK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [228, 228, 228];
const BLUE: [u8; 3] = [31, 119, 180];
const ORANGE: [u8; 3] = [255, 127, 14];
const GREEN: [u8; 3] = [44, 160, 44];
const RED: [u8; 3] = [214, 39, 40];
/// At most this many labelled powers of two on the scale axis: 150 px leave 25 px between them.
const MAX_SCALE_TICKS: i64 = 6;
/// Steps between labelled exponents, smallest first.
const EXPONENT_STEPS: [i64; 12] = [1, 2, 4, 5, 10, 20, 50, 100, 200, 500, 1000, 2000];

/// Pixel column of the fraction `f` (0 = left edge, 1 = right edge) of the box.
fn x_at(bx: Rect, f: f64) -> i64 {
    bx.0 + (f * (bx.2 - 1) as f64).round() as i64
}

/// Pixel row of the fraction `f` (0 = bottom edge, 1 = top edge) of the box.
fn y_at(bx: Rect, f: f64) -> i64 {
    bx.1 + bx.3 - 1 - (f * (bx.3 - 1) as f64).round() as i64
}

/// Where `v` falls in `r` as a fraction; the middle for an empty range (a flat curve).
fn frac(v: f64, r: (f64, f64)) -> f64 {
    if r.1 > r.0 { (v - r.0) / (r.1 - r.0) } else { 0.5 }
}

/// Draws `points` (x, y) into the box scaled to the given ranges; non-finite y values are skipped.
fn polyline(c: &mut Canvas, pts: &[(f64, f64)], bx: Rect, xr: (f64, f64), yr: (f64, f64), col: [u8; 3]) {
    let map = |(x, y): (f64, f64)| (x_at(bx, frac(x, xr)), y_at(bx, frac(y, yr)));
    let finite: Vec<(i64, i64)> = pts.iter().filter(|p| p.1.is_finite()).map(|&p| map(p)).collect();
    for w in finite.windows(2) {
        c.line(w[0], w[1], col);
    }
    // A lone point (one step, one epoch) as a 3x3 dot: a single pixel is lost on a grid line.
    if let [p] = finite.as_slice() {
        for (dx, dy) in (-1..=1).flat_map(|dx| (-1..=1).map(move |dy| (dx, dy))) {
            c.set(p.0 + dx, p.1 + dy, col);
        }
    }
}

fn frame(c: &mut Canvas, (l, t, w, h): Rect) {
    let k = INK;
    c.line((l - 1, t - 1), (l + w, t - 1), k);
    c.line((l - 1, t + h), (l + w, t + h), k);
    c.line((l - 1, t - 1), (l - 1, t + h), k);
    c.line((l + w, t - 1), (l + w, t + h), k);
}

/// The smallest and largest finite value; `(inf, -inf)` when there is none.
fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.filter(|x| x.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)))
}

/// A compact tick label with `sig` significant digits: fixed notation for magnitudes from 0.01 to
/// 99 999 (`0.0523`, `1.5`, `1235`), scientific outside (`1.2e-3`, `3.4e38`), trailing zeros
/// dropped. Non-finite values read "n/a": a label must never say NaN.
pub fn fmt_value(v: f64, sig: usize) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let sig = sig.clamp(1, 17);
    if (0.01..1e5).contains(&v.abs()) {
        let decimals = (sig as i32 - 1 - v.abs().log10().floor() as i32).max(0) as usize;
        trim_zeros(&format!("{v:.decimals$}")).to_string()
    } else {
        let s = format!("{:.*e}", sig - 1, v);
        match s.split_once('e') {
            Some((mantissa, exp)) => format!("{}e{exp}", trim_zeros(mantissa)),
            None => s,
        }
    }
}

/// `1.500` -> `1.5`, `2.000` -> `2`; integers keep their zeros.
fn trim_zeros(s: &str) -> &str {
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { s }
}

/// Labels for `vals` with the fewest significant digits (3 to 6) that tell neighbours apart, so a
/// narrow range does not print the same number three times.
fn distinct_labels(vals: &[f64]) -> Vec<String> {
    let at = |sig| vals.iter().map(|&v| fmt_value(v, sig)).collect::<Vec<_>>();
    (3..=6).map(at).find(|l| l.windows(2).all(|w| w[0] != w[1])).unwrap_or_else(|| at(6))
}

/// Loss-axis ticks as (fraction of the axis, label): bottom, middle and top of the range, or the
/// one value of a flat curve (drawn in the middle), or none when no loss is finite.
fn loss_ticks((lo, hi): (f64, f64)) -> Vec<(f64, String)> {
    if !(lo.is_finite() && hi.is_finite()) {
        return Vec::new();
    }
    if hi <= lo {
        return vec![(0.5, fmt_value(lo, 3))];
    }
    // Halves first: `lo + hi` overflows near f64::MAX.
    let labels = distinct_labels(&[lo, lo / 2.0 + hi / 2.0, hi]);
    [0.0, 0.5, 1.0].into_iter().zip(labels).collect()
}

/// Step-axis ticks: 0, the middle step and the last one (fewer when they coincide).
fn step_ticks(xmax: f64) -> Vec<(f64, String)> {
    let last = xmax.max(1.0) as u64;
    let mut steps = vec![0, last / 2, last];
    steps.dedup();
    steps.into_iter().map(|s| (frac(s as f64, (0.0, xmax.max(1.0))), s.to_string())).collect()
}

/// Scale-axis ticks over a log2 range: integer exponents on a multiple of the smallest step that
/// leaves at most [`MAX_SCALE_TICKS`] of them, labelled `2^16`.
fn scale_ticks((lo, hi): (f64, f64)) -> Vec<(f64, String)> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return Vec::new();
    }
    let (a, b) = (lo.ceil() as i64, hi.floor() as i64);
    if a > b {
        return Vec::new();
    }
    // Multiples of k in [a, b].
    let count = |k: i64| b.div_euclid(k) - (a - 1).div_euclid(k);
    let k = EXPONENT_STEPS.into_iter().find(|&k| count(k) <= MAX_SCALE_TICKS).unwrap_or(b - a + 1);
    (a..=b).filter(|e| e.rem_euclid(k) == 0).map(|e| (frac(e as f64, (lo, hi)), format!("2^{e}"))).collect()
}

/// A canvas being drawn, with every string written on it (for tests: what a reader would see).
struct Plot {
    c: Canvas,
    texts: Vec<String>,
}

impl Plot {
    fn text(&mut self, pos: (i64, i64), s: &str, col: [u8; 3]) {
        self.c.text(pos, s, 1, col);
        self.texts.push(s.to_string());
    }

    /// A title in coloured parts, left-aligned over the box.
    fn title(&mut self, bx: Rect, parts: &[(&str, [u8; 3])]) {
        let mut x = bx.0 - 1;
        for (s, col) in parts {
            self.c.text((x, bx.1 - 16), s, 1, *col);
            x += s.chars().count() as i64 * font::ADVANCE;
        }
        self.texts.push(parts.iter().map(|p| p.0).collect());
    }

    /// Grid lines, tick marks and right-aligned labels on the left axis.
    fn y_axis(&mut self, bx: Rect, ticks: &[(f64, String)]) {
        for (f, label) in ticks {
            let y = y_at(bx, *f);
            self.c.line((bx.0, y), (bx.0 + bx.2 - 1, y), GRID);
            self.c.line((bx.0 - 5, y), (bx.0 - 2, y), INK);
            let x = bx.0 - 7 - font::text_width(label, 1);
            self.text((x, y - font::HEIGHT / 2), label, INK);
        }
    }

    /// Grid lines, tick marks and centred labels on the bottom axis, and the caption "step".
    fn x_axis(&mut self, bx: Rect, ticks: &[(f64, String)]) {
        let below = bx.1 + bx.3;
        for (f, label) in ticks {
            let x = x_at(bx, *f);
            self.c.line((x, bx.1), (x, below - 1), GRID);
            self.c.line((x, below + 1), (x, below + 4), INK);
            let w = font::text_width(label, 1);
            let lx = (x - w / 2).clamp(0, WIDTH as i64 - w);
            self.text((lx, below + 7), label, INK);
        }
        let caption = "step";
        self.text((bx.0 + bx.2 / 2 - font::text_width(caption, 1) / 2, below + 18), caption, INK);
    }

    /// Says so in the middle of a panel that has nothing to draw.
    fn empty(&mut self, bx: Rect) {
        let s = "no finite values";
        self.text((bx.0 + bx.2 / 2 - font::text_width(s, 1) / 2, bx.1 + bx.3 / 2 - font::HEIGHT / 2), s, INK);
    }
}

/// Renders the curves: blue training loss, orange validation loss (top); green log2 loss scale
/// with red ticks under skipped steps (bottom); with titles, tick labels and axis captions.
pub fn render(curve: &[StepPoint], val: &[(u64, f64)]) -> Canvas {
    render_labeled(curve, val).c
}

fn render_labeled(curve: &[StepPoint], val: &[(u64, f64)]) -> Plot {
    let mut p = Plot { c: Canvas::new(WIDTH, HEIGHT), texts: Vec::new() };
    let last_val = val.last().map_or(0.0, |v| v.0 as f64);
    let xmax = curve.last().map_or(1.0, |p| p.step as f64).max(last_val).max(1.0);
    let xr = (0.0, xmax);
    let losses: Vec<(f64, f64)> = curve.iter().map(|p| (p.step as f64, p.loss)).collect();
    let vals: Vec<(f64, f64)> = val.iter().map(|&(s, v)| (s as f64, v)).collect();
    let yr = range(losses.iter().chain(&vals).map(|p| p.1));
    // log2 of a scale below 1e-30 (or zero, or negative) is drawn at 1e-30; NaN.max(x) is x.
    let scales: Vec<(f64, f64)> = curve.iter().map(|p| (p.step as f64, p.scale.max(1e-30).log2())).collect();
    let sr = range(scales.iter().map(|p| p.1));
    // Half an octave of air above and below, so a constant scale sits between two labels' rows.
    let sr = (sr.0 - 0.5, sr.1 + 0.5);

    p.title(
        TOP,
        &[("loss: ", INK), ("training (blue) per step", BLUE), (", ", INK), ("validation (orange) per epoch", ORANGE)],
    );
    p.title(BOTTOM, &[("loss scale (log2, green)", GREEN), ("; ", INK), ("red ticks: skipped steps", RED)]);
    // Axes before curves and frames, so grid lines stay behind both.
    p.y_axis(TOP, &loss_ticks(yr));
    p.y_axis(BOTTOM, &scale_ticks(sr));
    let steps = step_ticks(xmax);
    p.x_axis(TOP, &steps);
    p.x_axis(BOTTOM, &steps);
    frame(&mut p.c, TOP);
    frame(&mut p.c, BOTTOM);
    if !yr.0.is_finite() {
        p.empty(TOP);
    }
    if !sr.0.is_finite() {
        p.empty(BOTTOM);
    }

    polyline(&mut p.c, &losses, TOP, xr, yr, BLUE);
    polyline(&mut p.c, &vals, TOP, xr, yr, ORANGE);
    polyline(&mut p.c, &scales, BOTTOM, xr, sr, GREEN);
    let floor = BOTTOM.1 + BOTTOM.3 - 1;
    for s in curve.iter().filter(|s| s.skipped) {
        let x = x_at(BOTTOM, frac(s.step as f64, xr));
        p.c.line((x, floor - 5), (x, floor), RED);
    }
    p
}

/// Writes the plot to `path`.
pub fn write(path: &Path, curve: &[StepPoint], val: &[(u64, f64)]) -> std::io::Result<()> {
    std::fs::write(path, render(curve, val).to_png())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(step: u64, loss: f64, scale: f64, skipped: bool) -> StepPoint {
        StepPoint { step, loss, scale, skipped }
    }

    /// 50 steps of a falling loss at scale 2^16, step 3 skipped.
    fn run() -> Vec<StepPoint> {
        (0..50).map(|i| point(i, 1.0 / (1.0 + i as f64), 65536.0, i == 3)).collect()
    }

    fn is_ink(c: &Canvas, x: i64, y: i64) -> bool {
        let i = (y as usize * c.w + x as usize) * 3;
        c.px[i..i + 3] == INK
    }

    /// Whether any pixel in `x0..x1`, `y0..y1` is dark (every channel below 100).
    fn any_dark(c: &Canvas, (x0, x1): (i64, i64), (y0, y1): (i64, i64)) -> bool {
        (y0..y1).any(|y| {
            (x0..x1).any(|x| {
                let i = (y as usize * c.w + x as usize) * 3;
                c.px[i..i + 3].iter().all(|&b| b < 100)
            })
        })
    }

    /// How many pixels of colour `col` the rows of `bx` (frame included) hold.
    fn count_in(c: &Canvas, bx: Rect, col: [u8; 3]) -> usize {
        c.px[(bx.1 - 1) as usize * c.w * 3..(bx.1 + bx.3 + 1) as usize * c.w * 3]
            .chunks(3)
            .filter(|p| *p == col)
            .count()
    }

    /// Checks that the glyph drawn with its top-left at `(x, y)` is exactly `art` at `scale`, with
    /// a blank column on each side.
    fn assert_glyph(c: &Canvas, (x, y): (i64, i64), scale: i64, art: [&str; 7]) {
        for (r, row) in art.iter().enumerate() {
            for (col, ch) in row.chars().enumerate() {
                for (dx, dy) in (0..scale).flat_map(|dx| (0..scale).map(move |dy| (dx, dy))) {
                    let (px, py) = (x + col as i64 * scale + dx, y + r as i64 * scale + dy);
                    assert_eq!(is_ink(c, px, py), ch == '#', "pixel ({px}, {py}), row {r} col {col}");
                }
            }
            for py in y + r as i64 * scale..y + (r as i64 + 1) * scale {
                assert!(!is_ink(c, x - 1, py) && !is_ink(c, x + 5 * scale, py), "ink beside the glyph at row {py}");
            }
        }
    }

    const ONE: [&str; 7] = ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."];
    const L: [&str; 7] = ["#....", "#....", "#....", "#....", "#....", "#....", "#####"];

    #[test]
    fn crc_matches_reference_and_png_is_well_formed() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        let pts = run();
        let png = render(&pts, &[(25, 0.2), (50, 0.1)]).to_png();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 800);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 500);
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        // Some pixels are not white: the curves were drawn.
        let c = render(&pts, &[]);
        assert!(c.px.iter().any(|&b| b != 255 && b != 0));
    }

    #[test]
    fn text_draws_the_glyph_bitmaps_pixel_for_pixel() {
        let mut c = Canvas::new(60, 30);
        c.text((3, 4), "1L", 1, INK);
        assert_glyph(&c, (3, 4), 1, ONE);
        assert_glyph(&c, (3 + font::ADVANCE, 4), 1, L);
        let mut c = Canvas::new(60, 30);
        c.text((20, 8), "L1", 2, INK);
        assert_glyph(&c, (20, 8), 2, L);
        assert_glyph(&c, (20 + 2 * font::ADVANCE, 8), 2, ONE);
        // Text off the canvas is clipped, not a panic.
        c.text((-7, 25), "1L1", 2, INK);
        c.text((55, -3), "1", 1, INK);
    }

    #[test]
    fn render_draws_titles_tick_labels_and_captions() {
        let p = render_labeled(&run(), &[(25, 0.2), (50, 0.1)]);
        for want in [
            "loss: training (blue) per step, validation (orange) per epoch",
            "loss scale (log2, green); red ticks: skipped steps",
            "0.02",
            "0.51",
            "1",
            "2^16",
            "0",
            "25",
            "50",
            "step",
        ] {
            assert!(p.texts.iter().any(|t| t == want), "{want:?} not drawn; drawn: {:?}", p.texts);
        }
        assert_eq!(p.texts.iter().filter(|t| *t == "step").count(), 2);

        // The top label "1" (loss max) sits right-aligned 7 px left of the box, centred on the top
        // row: it is exactly the glyph.
        let (l, t) = (TOP.0, TOP.1);
        assert_glyph(&p.c, (l - 7 - 5, t - 3), 1, ONE);
        // The y-label margin has dark pixels where a frame-only picture is white.
        let mut bare = Canvas::new(WIDTH, HEIGHT);
        frame(&mut bare, TOP);
        frame(&mut bare, BOTTOM);
        for y in [t - 3, t + TOP.3 / 2 - 3, t + TOP.3 - 4, BOTTOM.1 + BOTTOM.3 / 2 - 3] {
            assert!(any_dark(&p.c, (0, l - 6), (y, y + 7)), "no label left of the box at row {y}");
            assert!(!any_dark(&bare, (0, l - 6), (y, y + 7)));
        }
        let margin = |c: &Canvas| c.px[..(t as usize - 2) * c.w * 3].to_vec();
        assert_ne!(margin(&p.c), margin(&bare), "no title above the top panel");
        // "2^16" is the only scale label, in the middle of the bottom panel's left margin.
        let mid = y_at(BOTTOM, 0.5);
        let mut want = Canvas::new(WIDTH, HEIGHT);
        want.text((BOTTOM.0 - 7 - font::text_width("2^16", 1), mid - 3), "2^16", 1, INK);
        for y in mid - 3..mid + 4 {
            for x in 0..BOTTOM.0 - 6 {
                assert_eq!(is_ink(&p.c, x, y), is_ink(&want, x, y), "pixel ({x}, {y}) of \"2^16\"");
            }
        }
    }

    #[test]
    fn values_format_compactly() {
        assert_eq!(fmt_value(0.052345, 3), "0.0523");
        assert_eq!(fmt_value(0.0012, 3), "1.2e-3");
        assert_eq!(fmt_value(1e-30, 3), "1e-30");
        assert_eq!(fmt_value(3.4e38, 3), "3.4e38");
        assert_eq!(fmt_value(-2.5e-7, 3), "-2.5e-7");
        assert_eq!(fmt_value(1.5, 3), "1.5");
        assert_eq!(fmt_value(2.0, 3), "2");
        assert_eq!(fmt_value(-0.5, 3), "-0.5");
        assert_eq!(fmt_value(1234.56, 3), "1235");
        assert_eq!(fmt_value(99_999.0, 3), "99999");
        assert_eq!(fmt_value(123_456.0, 3), "1.23e5");
        assert_eq!(fmt_value(0.0, 3), "0");
        assert_eq!(fmt_value(-0.0, 3), "0");
        assert_eq!(fmt_value(f64::NAN, 3), "n/a");
        assert_eq!(fmt_value(f64::INFINITY, 3), "n/a");
        assert_eq!(fmt_value(f64::MAX, 3), "1.8e308");
        assert_eq!(fmt_value(f64::MIN_POSITIVE, 3), "2.23e-308");
        // A narrow range gets the digits that tell its ticks apart.
        assert_eq!(distinct_labels(&[1.0, 1.002, 1.004]), ["1", "1.002", "1.004"]);
        assert_eq!(distinct_labels(&[0.02, 0.51, 1.0]), ["0.02", "0.51", "1"]);
    }

    #[test]
    fn ticks_cover_the_ranges() {
        let labels = |t: Vec<(f64, String)>| t.into_iter().map(|p| p.1).collect::<Vec<_>>();
        assert_eq!(scale_ticks((15.5, 16.5)), [(0.5, "2^16".to_string())]);
        assert_eq!(labels(scale_ticks((13.5, 24.5))), ["2^14", "2^16", "2^18", "2^20", "2^22", "2^24"]);
        // From the 1e-30 floor to 1e38: 227 octaves, labelled every 50.
        let wide = (1e-30f64.log2() - 0.5, 1e38f64.log2() + 0.5);
        assert_eq!(labels(scale_ticks(wide)), ["2^-100", "2^-50", "2^0", "2^50", "2^100"]);
        assert_eq!(labels(scale_ticks((-1.5, 1024.5))), ["2^0", "2^200", "2^400", "2^600", "2^800", "2^1000"]);
        assert!(scale_ticks((f64::INFINITY, f64::NEG_INFINITY)).is_empty());
        let at = scale_ticks((15.5, 17.5));
        assert_eq!(at, [(0.25, "2^16".to_string()), (0.75, "2^17".to_string())]);

        assert_eq!(step_ticks(50.0), [(0.0, "0".into()), (0.5, "25".into()), (1.0, "50".to_string())]);
        assert_eq!(labels(step_ticks(1.0)), ["0", "1"]);
        assert_eq!(labels(step_ticks(7.0)), ["0", "3", "7"]);

        assert_eq!(loss_ticks((0.5, 0.5)), [(0.5, "0.5".to_string())]);
        assert!(loss_ticks((f64::INFINITY, f64::NEG_INFINITY)).is_empty());
        assert_eq!(labels(loss_ticks((1e-30, 1e38))), ["1e-30", "5e37", "1e38"]);
        assert_eq!(labels(loss_ticks((-f64::MAX, f64::MAX))), ["-1.8e308", "0", "1.8e308"]);
    }

    #[test]
    fn edge_cases_render_without_panics_or_nan_text() {
        let nan = f64::NAN;
        type Case = (&'static str, Vec<StepPoint>, Vec<(u64, f64)>);
        let cases: Vec<Case> = vec![
            ("empty", vec![], vec![]),
            ("one point", vec![point(0, 0.3, 1024.0, false)], vec![]),
            ("only validation", vec![], vec![(4, 0.2)]),
            ("all NaN", (0..10).map(|i| point(i, nan, 65536.0, true)).collect(), vec![(5, nan)]),
            ("infinite losses", (0..10).map(|i| point(i, f64::INFINITY, 2.0, false)).collect(), vec![]),
            ("constant", (0..10).map(|i| point(i, 0.25, 8.0, false)).collect(), vec![(9, 0.25)]),
            (
                "huge and tiny",
                (0..10)
                    .map(|i| point(i, if i % 2 == 0 { 1e-30 } else { 1e38 }, 10f64.powi(i as i32 * 7 - 30), false))
                    .collect(),
                vec![],
            ),
            (
                "odd scales",
                vec![point(0, 1.0, 0.0, true), point(1, 2.0, nan, true), point(2, 3.0, f64::INFINITY, true)],
                vec![],
            ),
            ("huge steps", vec![point(u64::MAX - 1, 1.0, 1.0, false), point(u64::MAX, 2.0, 2.0, false)], vec![]),
        ];
        for (name, curve, val) in cases {
            let p = render_labeled(&curve, &val);
            assert_eq!(p.c.to_png().len(), 1_200_658, "{name}");
            for t in &p.texts {
                let low = t.to_lowercase();
                assert!(!low.contains("nan") && !low.contains("inf"), "{name}: label {t:?}");
            }
            assert!(p.texts.iter().any(|t| t == "step"), "{name}");
        }

        let none = render_labeled(&[], &[]);
        assert_eq!(none.texts.iter().filter(|t| *t == "no finite values").count(), 2);
        let all_nan: Vec<StepPoint> = (0..10).map(|i| point(i, nan, 65536.0, false)).collect();
        let p = render_labeled(&all_nan, &[]);
        // The title is blue in part; the loss panel's rows (frame included) are not.
        assert_eq!(count_in(&p.c, TOP, BLUE), 0, "a NaN loss drew a blue pixel");
        assert!(count_in(&render(&run(), &[]), TOP, BLUE) > 200);
        // One step: a 3x3 dot in each panel.
        let one = render(&[point(0, 0.3, 1024.0, false)], &[]);
        assert_eq!((count_in(&one, TOP, BLUE), count_in(&one, BOTTOM, GREEN)), (9, 9));
        assert!(p.texts.iter().any(|t| t == "2^16"));
        let flat = render_labeled(&(0..10).map(|i| point(i, 0.25, 8.0, false)).collect::<Vec<_>>(), &[]);
        assert!(flat.texts.iter().any(|t| t == "0.25") && flat.texts.iter().any(|t| t == "2^3"));
    }
}
