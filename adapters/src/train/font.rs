//! A 5x7 bitmap font for the text of the loss plot (printable ASCII, one glyph per character).
//!
//! Embedded rather than loaded for the same reason the PNG encoder is hand-written (see
//! [`super::plot`]): a font rasterizer and a TTF file would be more code and bytes than the whole
//! plot, for tick labels and two titles. Each glyph is 7 rows, top first; in each row bit 4 is the
//! leftmost pixel and bit 0 the rightmost. Lower-case letters are 5 rows high (rows 2 to 6);
//! `g`, `p`, `q` and `y` are drawn [`DESCENT`] rows lower with their tails below the line, because
//! squeezed into 7 rows they read as `9` and `P` ("Per steP").

/// Glyph width in font pixels.
pub const WIDTH: i64 = 5;
/// Glyph height in font pixels.
pub const HEIGHT: i64 = 7;
/// Horizontal distance from one glyph to the next: one blank column between glyphs.
pub const ADVANCE: i64 = WIDTH + 1;

/// How far the descending letters are drawn below the others, in font pixels: their bitmaps start
/// at the lower-case letters' top row (2) and end 2 rows below the line.
pub const DESCENT: i64 = 2;

/// Glyphs for `' '..='~'` (0x20..=0x7E), in ASCII order.
const GLYPHS: [[u8; 7]; 95] = [
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // ' '
    [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00100], // !
    [0b01010, 0b01010, 0b01010, 0b00000, 0b00000, 0b00000, 0b00000], // "
    [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010], // #
    [0b00100, 0b01111, 0b10100, 0b01110, 0b00101, 0b11110, 0b00100], // $
    [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011], // %
    [0b01100, 0b10010, 0b10100, 0b01000, 0b10101, 0b10010, 0b01101], // &
    [0b01100, 0b00100, 0b01000, 0b00000, 0b00000, 0b00000, 0b00000], // '
    [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010], // (
    [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000], // )
    [0b00000, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0b00000], // *
    [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000], // +
    [0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000], // ,
    [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000], // -
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100], // .
    [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000], // /
    [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110], // 0
    [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110], // 1
    [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111], // 2
    [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110], // 3
    [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010], // 4
    [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110], // 5
    [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110], // 6
    [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000], // 7
    [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110], // 8
    [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100], // 9
    [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000], // :
    [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b00100, 0b01000], // ;
    [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010], // <
    [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000], // =
    [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000], // >
    [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100], // ?
    [0b01110, 0b10001, 0b00001, 0b01101, 0b10101, 0b10101, 0b01110], // @
    [0b01110, 0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001], // A
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110], // B
    [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110], // C
    [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100], // D
    [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111], // E
    [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000], // F
    [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111], // G
    [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001], // H
    [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110], // I
    [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100], // J
    [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001], // K
    [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111], // L
    [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001], // M
    [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001], // N
    [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110], // O
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000], // P
    [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101], // Q
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001], // R
    [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110], // S
    [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100], // T
    [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110], // U
    [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100], // V
    [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010], // W
    [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001], // X
    [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100], // Y
    [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111], // Z
    [0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110], // [
    [0b00000, 0b10000, 0b01000, 0b00100, 0b00010, 0b00001, 0b00000], // \
    [0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110], // ]
    [0b00100, 0b01010, 0b10001, 0b00000, 0b00000, 0b00000, 0b00000], // ^
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111], // _
    [0b01000, 0b00100, 0b00010, 0b00000, 0b00000, 0b00000, 0b00000], // `
    [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111], // a
    [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110], // b
    [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110], // c
    [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111], // d
    [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110], // e
    [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000], // f
    [0b01111, 0b10001, 0b10001, 0b10011, 0b01101, 0b00001, 0b01110], // g (descends)
    [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001], // h
    [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110], // i
    [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b10010, 0b01100], // j
    [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010], // k
    [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110], // l
    [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001], // m
    [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001], // n
    [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110], // o
    [0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000], // p (descends)
    [0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0b00001, 0b00001], // q (descends)
    [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000], // r
    [0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110], // s
    [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110], // t
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101], // u
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100], // v
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010], // w
    [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001], // x
    [0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0b00001, 0b01110], // y (descends)
    [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111], // z
    [0b00010, 0b00100, 0b00100, 0b01000, 0b00100, 0b00100, 0b00010], // {
    [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100], // |
    [0b01000, 0b00100, 0b00100, 0b00010, 0b00100, 0b00100, 0b01000], // }
    [0b00000, 0b00000, 0b01000, 0b10101, 0b00010, 0b00000, 0b00000], // ~
];

/// The rows of `ch`'s glyph; characters outside printable ASCII draw as `?` so that a stray
/// character shows up as such instead of vanishing.
pub fn glyph(ch: char) -> [u8; 7] {
    let i = match ch {
        ' '..='~' => ch as usize - ' ' as usize,
        _ => '?' as usize - ' ' as usize,
    };
    GLYPHS[i]
}

/// Rows `ch` is drawn below the top of its cell: [`DESCENT`] for `g`, `p`, `q`, `y`, else 0.
pub fn descent(ch: char) -> i64 {
    if matches!(ch, 'g' | 'p' | 'q' | 'y') { DESCENT } else { 0 }
}

/// Width in canvas pixels of `s` drawn at `scale` (no trailing blank column).
pub fn text_width(s: &str, scale: i64) -> i64 {
    let n = s.chars().count() as i64;
    if n == 0 { 0 } else { (n * ADVANCE - 1) * scale }
}

/// The inked pixels of `s` with its top-left corner at `(x, y)`, each font pixel a
/// `scale` x `scale` square; descending letters reach `(HEIGHT + DESCENT) * scale` rows down.
pub fn pixels(s: &str, (x, y): (i64, i64), scale: i64) -> impl Iterator<Item = (i64, i64)> + '_ {
    let scale = scale.max(1);
    s.chars().enumerate().flat_map(move |(i, ch)| {
        let rows = glyph(ch);
        let gx = x + i as i64 * ADVANCE * scale;
        let gy = y + descent(ch) * scale;
        (0..HEIGHT * scale).flat_map(move |dy| {
            let row = rows[(dy / scale) as usize];
            (0..WIDTH * scale)
                .filter(move |dx| row & (1 << (WIDTH - 1 - dx / scale)) != 0)
                .map(move |dx| (gx + dx, gy + dy))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_fit_five_columns_and_unknown_characters_draw_as_question_marks() {
        for (i, g) in GLYPHS.iter().enumerate() {
            assert!(g.iter().all(|&r| r < 32), "glyph {:?} is wider than 5", (b' ' + i as u8) as char);
        }
        assert_eq!(glyph('\u{e9}'), glyph('?'));
        assert_eq!(glyph('\n'), glyph('?'));
        assert_eq!(glyph(' '), [0; 7]);
        // Every printable character other than the space inks something.
        assert!((b'!'..=b'~').all(|b| glyph(b as char).iter().any(|&r| r != 0)));
    }

    #[test]
    fn pixels_follow_the_bitmap_at_scale_one_and_two() {
        let l: Vec<(i64, i64)> = pixels("L", (10, 20), 1).collect();
        let mut want: Vec<(i64, i64)> = (0..7).map(|r| (10, 20 + r)).collect();
        want.extend((1..5).map(|c| (10 + c, 26)));
        let (mut got, mut want) = (l, want);
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        // At 2x each font pixel is a 2x2 block: 11 pixels of "L" become 44.
        let two: Vec<(i64, i64)> = pixels("L", (0, 0), 2).collect();
        assert_eq!(two.len(), 44);
        assert!(two.contains(&(1, 13)) && two.contains(&(9, 12)) && !two.contains(&(2, 0)));
        // The second glyph starts one blank column after the first.
        let pair: Vec<(i64, i64)> = pixels("LL", (0, 0), 1).collect();
        assert!(pair.contains(&(6, 0)) && !pair.iter().any(|p| p.0 == 5));
        assert_eq!(text_width("LL", 1), 11);
        assert_eq!(text_width("LL", 2), 22);
        assert_eq!(text_width("", 2), 0);
        // "p" shares the top row of "n" and its stem reaches 2 rows below the line.
        let np: Vec<(i64, i64)> = pixels("np", (0, 0), 1).collect();
        let rows = |x0: i64| {
            let ys = np.iter().filter(|p| p.0 >= x0 && p.0 < x0 + WIDTH).map(|p| p.1);
            (ys.clone().min(), ys.max())
        };
        assert_eq!(rows(0), (Some(2), Some(6)));
        assert_eq!(rows(ADVANCE), (Some(2), Some(8)));
        assert!(np.contains(&(ADVANCE, 8)) && !np.contains(&(ADVANCE + 1, 8)));
    }
}
