//! bench/cost.png: ns/packet by case (rows) and tool (bars). Bitmap backend, text through
//! ab_glyph from a TTF read at run time, so nothing depends on fontconfig or freetype.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::{
    prelude::*,
    style::{
        FontStyle, register_font,
        text_anchor::{HPos, Pos, VPos},
    },
};

use super::cost::CostTable;

const FONTS: &[&str] =
    &["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"];
const COLORS: [RGBColor; 5] = [
    RGBColor(200, 40, 40),   // portguard drop
    RGBColor(240, 150, 40),  // portguard count
    RGBColor(230, 120, 180), // portguard untracked
    RGBColor(40, 90, 200),   // xdp-filter
    RGBColor(140, 140, 140), // floor
];
/// Rows per case: one per tool and a gap.
const ROW: f64 = 6.0;

pub fn draw(t: &CostTable, out: &Path) -> Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .context("no DejaVuSans.ttf (apt-get install fonts-dejavu-core)")?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    // plotters keeps registered fonts for the life of the process.
    register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| anyhow!("{path} is not a usable font"))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let max = t.cells.iter().flatten().map(|c| c.ns).filter(|v| v.is_finite()).fold(1.0, f64::max);
    let n = t.cases.len() as f64;
    let height = 120 + (t.cases.len() as u32) * 56;
    let root = BitMapBackend::new(out, (1100, height)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e:?}", out.display());
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("In-kernel cost per packet (BPF_PROG_TEST_RUN, median)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(230)
        .build_cartesian_2d(0.0..max * 1.4, 0.0..n * ROW)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("ns / packet")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    for (ti, name) in t.tools.iter().enumerate() {
        let color = COLORS[ti % COLORS.len()];
        let bars = t.cells.iter().enumerate().map(move |(ci, row)| {
            // Case 0 at the top.
            let top = (n - ci as f64) * ROW - 0.5 - ti as f64;
            Rectangle::new([(0.0, top - 1.0), (row[ti].ns, top)], color.filled())
        });
        chart
            .draw_series(bars)
            .map_err(e)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    // Case names in the left margin, drawn on the whole image (the chart area would clip them).
    let style = TextStyle::from(("sans-serif", 14)).pos(Pos::new(HPos::Right, VPos::Center));
    for (ci, case) in t.cases.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(0.0, (n - ci as f64) * ROW - 3.0));
        root.draw(&Text::new(case.name.clone(), (x - 8, y), style.clone())).map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}
